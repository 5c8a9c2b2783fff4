"""The runbook registry: one declaration per runbook drives the API, CLI, worker and schedules.

Adding a runbook means adding its workflow, activities and one ``RunbookSpec`` here; the API
routes, the OpenAPI schema, the CLI's ``--param`` parsing, the schedules and the Web UI search
attributes all come from the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from opsflow.shared import audit_export_nightly as audit_export
from opsflow.shared import ids
from opsflow.shared.dev_role_elevation import DevRoleElevationInput, DevRoleElevationResult
from opsflow.shared.dev_role_elevation import DisableSignal as DevRoleDisable
from opsflow.shared.health_check import HealthCheckInput, HealthCheckResult
from opsflow.shared.roles import Role, roles
from opsflow.shared.sla_escalation import (
    EscalateSignal,
    NoteSignal,
    ReconcileInput,
    ReconcileResult,
    ResolvedSignal,
    SlaChangedSignal,
    SlaEscalationInput,
    SlaEscalationResult,
)
from opsflow.shared.triage_assignment import TriageAssignmentInput, TriageAssignmentResult
from opsflow.workflows.audit_export_nightly import AuditExportNightly, AuditExportScheduled
from opsflow.workflows.dev_role_elevation import DevRoleElevation
from opsflow.workflows.health_check import HealthCheck
from opsflow.workflows.sla_escalation import SlaEscalation
from opsflow.workflows.sla_reconciler import SlaReconciler
from opsflow.workflows.triage_assignment import TriageAssignment

if TYPE_CHECKING:
    from opsflow.config import Settings

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
    """A Temporal Schedule that starts the runbook unattended (overlap skip, catch-up).

    A schedule names its runs ``<id>-<scheduled time>``. A runbook whose runs must carry their
    business-key id sets ``workflow`` to a starter workflow that starts the run under that id;
    ``settings_input`` builds the starter's input from the settings (e.g. the time zone).
    ``fallback_crons`` fire the same action at other times (a starter that tells them apart
    by their scheduled time decides what they do, see ``audit-export-scheduled``).
    """

    id: str
    cron: str | None = None
    fallback_crons: tuple[str, ...] = ()
    interval: timedelta | None = None
    catchup_window: timedelta = timedelta(hours=1)
    description: str = ""
    make_input: Callable[[], Any] | None = None
    workflow: type[Any] | None = None
    settings_input: Callable[[Settings], Any] | None = None


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
    # Checks of a start's input that need the server's settings or clock (e.g. "not in the
    # future in the configured zone"); a ValueError is the caller's 422. Payload classes keep
    # only checks that hold wherever and whenever the payload is decoded.
    validate: Callable[[Any], None] | None = None
    # Short runbooks that validate their input in their first step: the API waits this long
    # for the outcome and answers a business refusal (opsflow.shared.errors) with its 4xx.
    await_result: timedelta | None = None


def _health_check_id(_inp: HealthCheckInput) -> str:
    # Manual checks within the same minute are one run: a double click checks once.
    from datetime import UTC, datetime

    return ids.health_check_workflow_id(datetime.now(UTC).strftime("manual-%Y-%m-%dT%H:%MZ"))


def _audit_export_validate(inp: audit_export.AuditExportInput) -> None:
    from opsflow.config import get_settings

    audit_export.refuse_future(inp.date, get_settings().schedule_timezone)


def _audit_export_id(inp: audit_export.AuditExportInput) -> str:
    # Without a date the run exports today in the configured zone: its id says which day.
    from opsflow.config import get_settings

    return audit_export.workflow_id(
        inp.date or audit_export.today_in(get_settings().schedule_timezone)
    )


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
        RunbookSpec(
            name="triage-assignment",
            title="Triage & assignment of a new request",
            description=(
                "Validates a new request's channel metadata (each correction audited "
                "action=update), assigns a department and assignee with a priority, an optional "
                "SLA override and response templates: in one transaction an assignments row, "
                "status assigned and a timeline entry. Then signal-with-starts the request's "
                "sla-escalation workflow. A refused input answers 4xx and changes nothing."
            ),
            trigger=("api",),
            workflow=TriageAssignment,
            input=TriageAssignmentInput,
            output=TriageAssignmentResult,
            workflow_id=lambda inp: ids.triage_workflow_id(inp.request_id),
            start=roles(Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN),
            queries={"progress": ActionSpec(READERS, description="Current step.")},
            summary=lambda inp: (
                f"triage request {inp.request_id} -> department {inp.department_id}, "
                f"assignee {inp.assignee_id}, {inp.priority}"
            ),
            execution_timeout=timedelta(minutes=10),
            await_result=timedelta(seconds=20),
        ),
        RunbookSpec(
            name="sla-escalation",
            title="SLA watch and escalation of one request",
            description=(
                "One durable workflow per open request with an SLA due time: joins the SLA "
                "watchlist 24 h before, changes the status once with a reason when the due "
                "time passes unresolved, and takes supervisors' escalations (mail + SMS to the "
                "department's supervisors, priority critical, expedited) and follow-up notes. "
                "Started by triage-assignment and by the sla-reconciler schedule."
            ),
            trigger=("event",),
            workflow=SlaEscalation,
            input=SlaEscalationInput,
            output=SlaEscalationResult,
            workflow_id=lambda inp: ids.sla_workflow_id(inp.request_id),
            start=roles(Role.SUPERVISOR, Role.ADMIN),
            signals={
                "escalate": ActionSpec(
                    roles(Role.SUPERVISOR),
                    arg=EscalateSignal,
                    description="Notify supervisors (mail + SMS), priority critical, expedite.",
                ),
                "add_note": ActionSpec(
                    roles(Role.OPERATOR, Role.SUPERVISOR),
                    arg=NoteSignal,
                    description="A follow-up note to the request timeline.",
                ),
                "request_resolved": ActionSpec(
                    roles(Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN),
                    arg=ResolvedSignal,
                    description="The request is resolved: end the workflow.",
                ),
                "sla_changed": ActionSpec(
                    roles(Role.SUPERVISOR, Role.ADMIN),
                    arg=SlaChangedSignal,
                    description="The due time moved: re-arm the timers.",
                ),
            },
            queries={
                "sla_state": ActionSpec(READERS, description="Due time, state, escalations."),
                "progress": ActionSpec(READERS, description="Current step."),
            },
            cancel=roles(Role.ADMIN, Role.SUPERADMIN),
            summary=lambda inp: f"SLA of request {inp.request_id}, due {inp.sla_due_at}",
        ),
        RunbookSpec(
            name="sla-reconciler",
            title="SLA reconciler",
            description=(
                "Makes sure every open request with an SLA due time has its sla-escalation "
                "workflow (starts missing ones, re-arms moved due times) and ends the workflows "
                "of requests resolved or closed outside opsflow."
            ),
            trigger=("schedule", "api"),
            workflow=SlaReconciler,
            input=ReconcileInput,
            output=ReconcileResult,
            workflow_id=lambda _inp: "sla-reconciler:manual",
            start=roles(Role.SUPERVISOR, Role.ADMIN, Role.SUPERADMIN),
            queries={"progress": ActionSpec(READERS, description="Current step.")},
            cancel=roles(Role.ADMIN, Role.SUPERADMIN),
            summary=lambda inp: f"SLA reconciliation (concurrency {inp.concurrency})",
            schedule=ScheduleSpec(
                id="sla-reconciler",
                interval=timedelta(minutes=5),
                catchup_window=timedelta(minutes=5),
                description="Every 5 minutes: SLA workflows match open requests.",
                make_input=ReconcileInput,
            ),
            execution_timeout=timedelta(minutes=15),
        ),
        RunbookSpec(
            name=audit_export.RUNBOOK,
            title="Nightly audit export (cases and assignments)",
            description=(
                "Runs the dbt project's tests, compiles audit_case_snapshot and "
                "audit_assignment_snapshot, streams both from one REPEATABLE READ snapshot with "
                "COPY into a zip (CSV per model + manifest.json), encrypts it (AES-256-GCM "
                "chunks, key id in the header), uploads it by S3 multipart with SSE AES256 to "
                "s3://<audit bucket>/YYYY/MM/DD/, records export_runs and an audit event "
                "action=export, and mails the compliance list a 7-day link. A date that "
                "already succeeded is not exported again unless force=true (a new version)."
            ),
            trigger=("schedule", "api"),
            workflow=AuditExportNightly,
            input=audit_export.AuditExportInput,
            output=audit_export.AuditExportResult,
            workflow_id=_audit_export_id,
            validate=_audit_export_validate,
            start=roles(Role.OPERATOR, Role.AUDITOR, Role.ADMIN, Role.SUPERADMIN),
            queries={
                "progress": ActionSpec(
                    READERS | roles(Role.COMPLIANCE),
                    description="Current step; rows and bytes while exporting.",
                )
            },
            cancel=roles(Role.ADMIN, Role.SUPERADMIN),
            summary=lambda inp: (
                f"audit export of {inp.date or 'today'}" + (" (force)" if inp.force else "")
            ),
            schedule=ScheduleSpec(
                id=audit_export.SCHEDULE_ID,
                cron=f"0 {audit_export.SCHEDULED_HOUR} * * *",
                # A spring-forward night has no 02:00 in many zones, and Temporal's calendar
                # skips it: at 03:00 the starter exports a date that has no run yet.
                fallback_crons=(f"0 {audit_export.FALLBACK_HOUR} * * *",),
                # A night missed while the cluster was down still runs once when it is back.
                catchup_window=timedelta(hours=20),
                description=(
                    "Every day at 02:00 in SCHEDULE_TIMEZONE (seed 000), through "
                    "audit-export-scheduled: the run of the night is audit-export:YYYY-MM-DD. "
                    "At 03:00 it exports the date only if it has no run yet (the "
                    "spring-forward night, when 02:00 does not exist)."
                ),
                workflow=AuditExportScheduled,
                settings_input=lambda s: audit_export.AuditExportScheduledInput(
                    time_zone=s.schedule_timezone
                ),
            ),
            execution_timeout=audit_export.EXECUTION_TIMEOUT,
        ),
    )
}

ALL_WORKFLOWS: list[type[Any]] = [spec.workflow for spec in RUNBOOKS.values()] + [
    spec.schedule.workflow
    for spec in RUNBOOKS.values()
    if spec.schedule is not None and spec.schedule.workflow is not None
]


def get_runbook(name: str) -> RunbookSpec | None:
    """Return the spec of a runbook by name, or None."""
    return RUNBOOKS.get(name)
