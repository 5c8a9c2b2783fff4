"""Payloads of the ``dev-role-elevation`` runbook (seed 003, Developer Role Management)."""

from __future__ import annotations

from dataclasses import dataclass, field

SETTING_KEY = "dev_role_production"


@dataclass
class DevRoleElevationInput:
    """Grant the developer role in an environment for a bounded number of hours."""

    reason: str = field(
        metadata={
            "min_length": 3,
            "max_length": 500,
            "description": "Why the emergency grant is needed (goes to the audit log and mail).",
            "examples": ["INC-2211: hot-fix the connector sync in production"],
        }
    )
    hours: int = field(
        default=24,
        metadata={
            "ge": 1,
            "le": 72,
            "description": "Hours until the grant expires on its own (1 to 72).",
            "examples": [24],
        },
    )
    environment: str = field(
        default="production",
        metadata={
            "pattern": r"^[a-z][a-z0-9-]{0,31}$",
            "description": "Environment the grant applies to; one grant per environment.",
        },
    )


@dataclass
class GrantRequest:
    """Activity input: write the grant into ``app.settings``."""

    environment: str
    hours: int
    reason: str
    actor: str
    workflow_id: str
    run_id: str
    granted_at: str
    expires_at: str


@dataclass
class RevokeRequest:
    """Activity input: turn the grant off (only if it is still this run's grant)."""

    environment: str
    actor: str
    workflow_id: str
    ended_by: str
    ended_at: str


@dataclass
class RevokeOutcome:
    """Whether the revoke changed the setting (false when already off or replaced)."""

    changed: bool


@dataclass
class DeveloperAction:
    """One entry of ``app.activity_logs`` made by a developer during the window."""

    occurred_at: str
    user: str
    action: str
    target: str


@dataclass
class DeveloperActionsQuery:
    """Activity input: developer actions in a time window."""

    since: str
    until: str
    limit: int = 1000


@dataclass
class DeveloperActions:
    """Developer actions found in the window (``truncated`` when over the limit)."""

    actions: list[DeveloperAction] = field(default_factory=list)
    total: int = 0
    truncated: bool = False


@dataclass
class AdminNotice:
    """Activity input: mail every active admin of the operated application."""

    idempotency_key: str
    subject: str
    body: str


@dataclass
class DevRoleElevationResult:
    """How the window went and what developers did in it (the seed's misuse review)."""

    environment: str
    granted_by: str
    granted_at: str
    expires_at: str
    ended_at: str
    ended_by: str  # "timer" | "disable" | "cancel" | "failure"
    disabled_by: str | None = None
    developer_actions: list[DeveloperAction] = field(default_factory=list)
    developer_action_count: int = 0


@dataclass
class DisableSignal:
    """``disable`` signal: end the window early."""

    actor: str = "unknown"
    reason: str = ""


@dataclass
class DevRoleStatus:
    """The ``status`` query: where the window stands."""

    state: str
    environment: str
    granted_by: str = ""
    expires_at: str | None = None
    ended_by: str | None = None
