"""The runbook registry: one declaration per runbook drives the API, CLI, worker and schedules.

Adding a runbook means adding its workflow, activities and one ``RunbookSpec`` here; the API
routes, the OpenAPI schema, the CLI's ``--param`` parsing, the schedules and the Web UI search
attributes all come from the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from opsflow.shared import ids
from opsflow.shared.dev_role_elevation import DevRoleElevationInput, DevRoleElevationResult
from opsflow.shared.dev_role_elevation import DisableSignal as DevRoleDisable
from opsflow.shared.health_check import HealthCheckInput, HealthCheckResult
from opsflow.shared.roles import Role, roles
from opsflow.workflows.dev_role_elevation import DevRoleElevation
from opsflow.workflows.health_check import HealthCheck

Trigger = Literal["api", "schedule", "event"]


@dataclass(frozen=True)
class ActionSpec:
    """Who may send one signal or update, or read one query, and its argument type.

    If ``arg`` is a dataclass with an ``actor`` field, the API fills it with the authenticated
    caller (whatever the client sent), so workflows can audit who acted.
    """

    roles: frozenset[Role]
    arg: type[Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class ScheduleSpec:
    """A Temporal Schedule that starts the runbook unattended (overlap skip, catch-up)."""

    id: str
    cron: str | None = None
    interval: timedelta | None = None
    catchup_window: timedelta = timedelta(hours=1)
    description: str = ""
    make_input: Callable[[], Any] | None = None


@dataclass(frozen=True)
class RunbookSpec:
    """Everything the platform knows about one runbook."""

    name: str
    title: str
    description: str
    trigger: tuple[Trigger, ...]
    workflow: type[Any]
    input: type[Any]
    output: type[Any]
    workflow_id: Callable[[Any], str]
    start: frozenset[Role]
    signals: dict[str, ActionSpec] = field(default_factory=dict)
    updates: dict[str, ActionSpec] = field(default_factory=dict)
    queries: dict[str, ActionSpec] = field(default_factory=dict)
    cancel: frozenset[Role] = frozenset()
    # What a start with the id of a running workflow does: "conflict" answers 409,
    # "existing" answers with the running workflow (a double submit starts one run).
    on_conflict: Literal["conflict", "existing"] = "existing"
    tenant: Callable[[Any], str] = field(default=lambda _inp: ids.SYSTEM_TENANT)
    summary: Callable[[Any], str] = field(default=lambda inp: repr(inp))
    schedule: ScheduleSpec | None = None
    execution_timeout: timedelta | None = None


def _health_check_id(_inp: HealthCheckInput) -> str:
    # Manual checks within the same minute are one run: a double click checks once.
    from datetime import UTC, datetime

    return ids.health_check_workflow_id(datetime.now(UTC).strftime("manual-%Y-%m-%dT%H:%MZ"))


READERS = roles(Role.OPERATOR, Role.SUPERVISOR, Role.AUDITOR, Role.ADMIN, Role.SUPERADMIN)

RUNBOOKS: dict[str, RunbookSpec] = {
    spec.name: spec
    for spec in (
        RunbookSpec(
            name="health-check",
            title="System health check",
            description=(
                "Checks the application health URL, both databases (connections against "
                "max_connections, long-running queries) and storage (bucket sizes, disk against "
                "quota), evaluates the seed's alert rules over the last hour, mails the on-call "
                "list once per alert raised and once when it clears, turns off expired "
                "developer-role grants, and records the result in health_check_runs."
            ),
            trigger=("schedule", "api"),
            workflow=HealthCheck,
            input=HealthCheckInput,
            output=HealthCheckResult,
            workflow_id=_health_check_id,
            start=roles(Role.OPERATOR, Role.ADMIN, Role.SUPERADMIN),
            queries={"progress": ActionSpec(READERS, description="Current step of the check.")},
            cancel=roles(Role.ADMIN, Role.SUPERADMIN),
            summary=lambda inp: f"health check (notify={inp.notify})",
            schedule=ScheduleSpec(
                id="health-check",
                interval=timedelta(minutes=5),
                catchup_window=timedelta(minutes=5),
                description="Every 5 minutes (seed 001, System Monitoring).",
                make_input=HealthCheckInput,
            ),
            execution_timeout=timedelta(minutes=10),
        ),
        RunbookSpec(
            name="dev-role-elevation",
            title="Developer role in production (emergency)",
            description=(
                "Grants the developer role in an environment for 1 to 72 hours. Sets the "
                "setting with expires_at, audits it, mails every admin, and waits on a durable "
                "timer. When the window ends (timer, disable, cancellation or failure) the "
                "setting is turned off, audited and announced, and the result lists what "
                "developers did during the window."
            ),
            trigger=("api",),
            workflow=DevRoleElevation,
            input=DevRoleElevationInput,
            output=DevRoleElevationResult,
            workflow_id=lambda inp: ids.dev_role_elevation_workflow_id(inp.environment),
            start=roles(Role.ADMIN, Role.SUPERADMIN),
            signals={
                "disable": ActionSpec(
                    roles(Role.ADMIN, Role.SUPERADMIN),
                    arg=DevRoleDisable,
                    description="End the window now; the grant is turned off and announced.",
                )
            },
            queries={
                "status": ActionSpec(
                    roles(Role.ADMIN, Role.SUPERADMIN, Role.AUDITOR),
                    description="Where the window stands.",
                ),
                "progress": ActionSpec(
                    roles(Role.ADMIN, Role.SUPERADMIN, Role.AUDITOR),
                    description="Current step.",
                ),
            },
            cancel=roles(Role.ADMIN, Role.SUPERADMIN),
            on_conflict="conflict",
            summary=lambda inp: (
                f"developer role in {inp.environment} for {inp.hours} h: {inp.reason[:80]}"
            ),
        ),
    )
}

ALL_WORKFLOWS: list[type[Any]] = [spec.workflow for spec in RUNBOOKS.values()]


def get_runbook(name: str) -> RunbookSpec | None:
    """Return the spec of a runbook by name, or None."""
    return RUNBOOKS.get(name)
