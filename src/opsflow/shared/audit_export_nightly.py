"""Payloads of the ``audit-export-nightly`` runbook (seed 000, Scheduled Nightly Export)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

RUNBOOK = "audit-export-nightly"
SCHEDULE_ID = "audit-export-nightly"
# The workflow the schedule starts: it names the night's run ``audit-export:YYYY-MM-DD``.
SCHEDULED_WORKFLOW = "audit-export-scheduled"
EXECUTION_TIMEOUT = timedelta(hours=12)
# Local hours the schedule fires: the export's, and the fallback for nights without it.
SCHEDULED_HOUR = 2
FALLBACK_HOUR = 3
MODELS = ("audit_case_snapshot", "audit_assignment_snapshot")
MANIFEST_NAME = "manifest.json"
# The download link of the distribution mail lives 7 days (SigV4's maximum).
LINK_EXPIRES_SECONDS = 7 * 24 * 3600

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WORKFLOW_ID_RE = re.compile(r"^audit-export:(\d{4}-\d{2}-\d{2})$")


def workflow_id(export_date: str) -> str:
    """One workflow id per export date: ``audit-export:2026-11-21``."""
    return f"audit-export:{export_date}"


def date_from_workflow_id(wid: str) -> str | None:
    """Return the date of an ``audit-export:YYYY-MM-DD`` workflow id, else None."""
    m = _WORKFLOW_ID_RE.match(wid)
    return m.group(1) if m else None


def today_in(zone: str, now: datetime | None = None) -> str:
    """Today's date (ISO) in time zone ``zone`` at ``now`` (default: the clock)."""
    moment = now if now is not None else datetime.now(UTC)
    return moment.astimezone(ZoneInfo(zone)).date().isoformat()


def local_hour(zone: str, moment: datetime) -> int:
    """Return the hour on the wall clock of time zone ``zone`` at ``moment``."""
    return moment.astimezone(ZoneInfo(zone)).hour


def object_key(export_date: str, version: int) -> str:
    """Deterministic object key of a package: a retry writes the same key, never a second one.

    ``YYYY/MM/DD/audit-export-YYYY-MM-DD.zip.ofae`` for the nightly package, ``...-v2...`` for
    a forced second version.
    """
    d = date.fromisoformat(export_date)
    suffix = "" if version == 1 else f"-v{version}"
    return f"{d:%Y/%m/%d}/audit-export-{export_date}{suffix}.zip.ofae"


def refuse_future(export_date: str | None, time_zone: str, now: datetime | None = None) -> None:
    """Refuse a date after today in ``time_zone`` (the API answers 422 with this message).

    Not part of the payload's own checks: a payload is decoded again by workers, in other
    processes and later, where "today" and the configured zone are not the caller's. The
    export's plan step repeats this check against the run's own reference time.

    Raises:
        ValueError: the date is in the future.

    """
    if export_date is None:
        return
    try:
        today = today_in(time_zone, now)
    except (ZoneInfoNotFoundError, ValueError):
        time_zone, today = "UTC", today_in("UTC", now)
    if export_date > today:
        raise ValueError(f"date {export_date} is in the future (today is {today} in {time_zone})")


@dataclass
class AuditExportInput:
    """Export the audit snapshot of one date (default today in the configured time zone)."""

    date: str | None = field(
        default=None,
        metadata={
            "pattern": r"^\d{4}-\d{2}-\d{2}$",
            "description": (
                "Export date YYYY-MM-DD (not in the future); default today in the "
                "configured time zone (SCHEDULE_TIMEZONE)."
            ),
            "examples": ["2026-11-21"],
        },
    )
    force: bool = field(
        default=False,
        metadata={
            "description": (
                "Write a new version even when the date already has a succeeded package "
                "(recorded as forced); without it a re-run changes nothing."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.date is None:
            return
        if not _DATE_RE.match(self.date):
            raise ValueError("date must be YYYY-MM-DD")
        try:
            date.fromisoformat(self.date)
        except ValueError:
            raise ValueError(f"{self.date} is not a calendar date") from None


@dataclass
class AuditExportScheduledInput:
    """What the schedule's starter needs: the zone whose calendar names the export date.

    The schedule fires at 02:00 and again at ``fallback_hour`` (03:00) local time; the
    03:00 firing exports only a date that has no run yet (the spring-forward night, which
    has no 02:00). Any other firing (02:00, a catch-up, a manual trigger) starts the date.
    """

    time_zone: str = "UTC"
    fallback_hour: int = FALLBACK_HOUR


@dataclass
class AuditExportScheduledResult:
    """What the schedule's starter did for one night.

    ``started`` is False when a run of that date was already running (a manual run): the
    starter left it alone, and ``status`` is ``already-running``; or, at the 03:00 fallback,
    when the date already had a run (``already-ran``, every night that had a 02:00).
    Otherwise ``status`` is how the started run ended: ``exported`` or ``noop`` (the date
    had already succeeded).
    """

    export_date: str
    workflow_id: str
    started: bool
    status: str


@dataclass
class PlanRequest:
    """Activity input: decide what this run does and claim its ``export_runs`` row."""

    date: str | None
    force: bool
    workflow_id: str
    run_id: str
    actor: str
    # When the run was due (schedule) or started (API), ISO UTC; "today" is taken from it.
    reference_time: str


@dataclass
class ExportRecord:
    """A package as recorded in ``export_runs``."""

    export_date: str
    version: int
    forced: bool
    status: str
    bucket: str
    object_key: str
    key_id: str | None = None
    snapshot_at: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    plaintext_bytes: int | None = None
    plaintext_sha256: str | None = None
    ciphertext_bytes: int | None = None
    ciphertext_sha256: str | None = None
    workflow_id: str = ""
    run_id: str = ""


@dataclass
class Plan:
    """What the run does: nothing (``noop``, the date already succeeded) or one package."""

    export_date: str
    noop: bool
    record: ExportRecord
    time_zone: str = "UTC"


@dataclass
class CompiledModel:
    """One dbt model compiled to SQL."""

    name: str
    sql: str


@dataclass
class CompiledModels:
    """The compiled models, once the project's dbt tests passed."""

    models: list[CompiledModel]
    dbt_version: str
    models_revision: str
    tests_passed: int = 0
    tests_warned: int = 0


@dataclass
class ExportRequest:
    """Activity input: snapshot, zip, encrypt and upload one package."""

    record: ExportRecord
    models: CompiledModels


@dataclass
class EntryFacts:
    """One file of the zip, as listed in ``manifest.json``."""

    name: str
    model: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class ExportOutcome:
    """Figures of the uploaded package."""

    object_key: str
    key_id: str
    snapshot_at: str
    entries: list[EntryFacts]
    plaintext_bytes: int
    plaintext_sha256: str
    ciphertext_bytes: int
    ciphertext_sha256: str
    reused: bool = False


@dataclass
class FinishRequest:
    """Activity input: mark the package succeeded and audit the export."""

    record: ExportRecord
    outcome: ExportOutcome
    actor: str
    workflow_id: str
    run_id: str


@dataclass
class FailRequest:
    """Activity input: mark the attempt failed (the package is retried on the next run)."""

    record: ExportRecord
    failure: str
    actor: str


@dataclass
class DistributeRequest:
    """Activity input: mail the compliance list a 7-day link, checksums and row counts."""

    record: ExportRecord
    outcome: ExportOutcome
    idempotency_key: str


@dataclass
class AuditExportResult:
    """How the run ended: the package written, or ``noop`` with the existing one."""

    export_date: str
    noop: bool
    version: int
    forced: bool
    bucket: str
    object_key: str
    key_id: str | None = None
    snapshot_at: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    plaintext_sha256: str | None = None
    ciphertext_sha256: str | None = None
    ciphertext_bytes: int | None = None
    mail_status: str | None = None
