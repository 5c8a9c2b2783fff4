"""Payloads shared by every runbook: progress, audit events, notifications, run records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """What a run is doing now; returned by every workflow's ``progress`` query."""

    step: str = "starting"
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class AuditEventIn:
    """One audit event to append to the hash-chained ``audit_events`` table."""

    actor: str
    action: str
    target: str
    outcome: str = "success"
    details: dict[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    run_id: str | None = None


@dataclass
class MailMessage:
    """One mail to send. ``idempotency_key`` becomes the Message-ID and the notifications key."""

    idempotency_key: str
    to: list[str]
    subject: str
    body: str
    kind: str = "notice"


@dataclass
class RunRecord:
    """A row of the ``runs`` read model, written when a run starts and when it ends."""

    workflow_id: str
    run_id: str
    runbook: str
    actor: str
    status: str
    tenant: str = "-"
    input: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    failure: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
