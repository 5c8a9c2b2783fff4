"""Response bodies of the API (pydantic), with examples for the OpenAPI page at ``/docs``.

Request bodies of runbook starts, signals and updates are not declared here: they are each
runbook's own dataclasses from the catalog, validated with ``TypeAdapter`` (see
``opsflow.api.runbook_io``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """An error: ``detail`` says what went wrong (a list of fields for 422)."""

    detail: Any = Field(examples=["invalid or revoked token"])
    message: str | None = None
    request_id: str | None = None


class ActionOut(BaseModel):
    """A signal, update or query of a runbook: who may use it and its argument."""

    roles: list[str]
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", serialization_alias="schema"
    )
    description: str = ""

    model_config = ConfigDict(populate_by_name=True)


class ScheduleOut(BaseModel):
    """The Temporal Schedule that starts a runbook unattended."""

    id: str
    cron: str | None = None
    interval_seconds: float | None = None
    description: str = ""


class RunbookOut(BaseModel):
    """One runbook of the catalog."""

    name: str
    title: str
    description: str
    trigger: list[str]
    start_roles: list[str]
    signals: dict[str, ActionOut]
    updates: dict[str, ActionOut]
    queries: dict[str, ActionOut]
    cancel_roles: list[str]
    on_conflict: str
    schedule: ScheduleOut | None
    input_schema: dict[str, Any]
    input_example: dict[str, Any]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "dev-role-elevation",
                    "title": "Developer role in production (emergency)",
                    "description": "Grants the developer role in an environment for 1 to 72 hours.",
                    "trigger": ["api"],
                    "start_roles": ["admin", "superadmin"],
                    "signals": {
                        "disable": {
                            "roles": ["admin", "superadmin"],
                            "schema": {},
                            "description": "",
                        }
                    },
                    "updates": {},
                    "queries": {"status": {"roles": ["auditor", "admin"], "schema": None}},
                    "cancel_roles": ["admin", "superadmin"],
                    "on_conflict": "conflict",
                    "schedule": None,
                    "input_schema": {"type": "object"},
                    "input_example": {"reason": "INC-2211: hot-fix", "hours": 24},
                }
            ]
        }
    )


class StartRunOut(BaseModel):
    """A started (201) or already running (200) run."""

    id: str = Field(description="The workflow id (from the runbook's business key).")
    run_id: str
    runbook: str
    status: str
    ui_url: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "dev-role-elevation:production",
                    "run_id": "0199b2f4-7c1e-7d8a-9f51-4f0c8a1e2b3c",
                    "runbook": "dev-role-elevation",
                    "status": "RUNNING",
                    "ui_url": "http://127.0.0.1:8233/namespaces/default/workflows/"
                    "dev-role-elevation%3Aproduction/0199b2f4-7c1e-7d8a-9f51-4f0c8a1e2b3c/history",
                }
            ]
        }
    )


class ProgressOut(BaseModel):
    """What a running workflow is doing (its ``progress`` query)."""

    step: str = ""
    done: int = 0
    total: int = 0
    message: str = ""


class RunOut(BaseModel):
    """A run as Temporal describes it."""

    id: str
    run_id: str
    runbook: str
    status: str = Field(
        description="RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, CONTINUED_AS_NEW, TIMED_OUT"
    )
    input: Any = None
    result: Any = None
    failure: str | None = None
    progress: ProgressOut | None = None
    started_at: datetime | None = None
    closed_at: datetime | None = None
    ui_url: str
    actor: str | None = None
    tenant: str | None = None


class RunListOut(BaseModel):
    """A page of the ``runs`` read model."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class SignalOut(BaseModel):
    """A signal was delivered."""

    id: str
    signal: str
    accepted: bool = True


class UpdateOut(BaseModel):
    """An update completed; ``result`` is what the workflow returned."""

    id: str
    update: str
    result: Any = None


class QueryOut(BaseModel):
    """A query's answer."""

    id: str
    query: str
    result: Any = None


class CancelOut(BaseModel):
    """Cancellation was requested (the workflow runs its clean-up and ends)."""

    id: str
    cancel_requested: bool = True


class AuditEventOut(BaseModel):
    """One row of the hash-chained audit log."""

    id: int
    occurred_at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]
    workflow_id: str | None = None
    run_id: str | None = None
    prev_hash: str
    hash: str


class AuditListOut(BaseModel):
    """A page of audit events, oldest first; pass ``next_after_id`` as ``after_id`` for more."""

    items: list[AuditEventOut]
    next_after_id: int | None = None


class HealthReportOut(BaseModel):
    """The latest health check and the alerts still open."""

    latest: dict[str, Any] | None
    open_alerts: list[dict[str, Any]]


class DependencyHealth(BaseModel):
    """One dependency's reachability."""

    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class HealthzOut(BaseModel):
    """Readiness: every dependency the API needs, with latency."""

    status: str = Field(examples=["ok"])
    checks: dict[str, DependencyHealth]
    down: list[str] = Field(default_factory=list)


class DevRoleStatusOut(BaseModel):
    """The seed's status shape of the developer role in production."""

    allowed: bool
    is_production: bool
    expires_at: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"allowed": False, "is_production": True, "expires_at": None}]
        }
    )
