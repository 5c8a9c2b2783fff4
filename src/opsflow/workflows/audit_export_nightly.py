"""``audit-export-nightly``: the nightly audit package of cases and assignments.

Seed 000, "Audit Export Processes -> Scheduled Nightly Export": at 02:00 local time the dbt
models ``audit_case_snapshot`` and ``audit_assignment_snapshot`` are exported from one database
snapshot, zipped, encrypted (AES-256-GCM), uploaded to ``s3://<audit bucket>/YYYY/MM/DD/``,
recorded in ``export_runs`` and ``audit_events`` (``action=export``), and the compliance list
gets a download link that expires in 7 days. A date that already succeeded is not exported
again unless ``force`` asks for a new version.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from opsflow.shared import ids
    from opsflow.shared.audit_export_nightly import (
        EXECUTION_TIMEOUT,
        RUNBOOK,
        SCHEDULE_ID,
        SCHEDULED_WORKFLOW,
        AuditExportInput,
        AuditExportResult,
        AuditExportScheduledInput,
        AuditExportScheduledResult,
        CompiledModels,
        DistributeRequest,
        ExportOutcome,
        ExportRecord,
        ExportRequest,
        FailRequest,
        FinishRequest,
        Plan,
        PlanRequest,
        local_hour,
        today_in,
        workflow_id,
    )
    from opsflow.shared.common import Progress
    from opsflow.workflows._common import (
        BOOKKEEPING_RETRY,
        RUNBOOK_KEY,
        RunbookWorkflow,
        actor,
        set_state,
    )

SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
STEP_TIMEOUT = timedelta(minutes=2)
DBT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=5,
    non_retryable_error_types=["DbtTestFailed"],
)
# A flaky database or S3 costs a fresh attempt (a new snapshot); a crashed worker is noticed by
# the missing heartbeat and its upload aborted by the next attempt.
EXPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10),
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=6,
    non_retryable_error_types=["KeyringError"],
)
MAIL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=20,
)


@workflow.defn(name="audit-export-nightly")
class AuditExportNightly(RunbookWorkflow):
    """One run per export date, workflow id ``audit-export:YYYY-MM-DD`` (API and schedule)."""

    runbook = "audit-export-nightly"

    def __init__(self) -> None:
        super().__init__()
        self._exporting = False

    @workflow.signal(name="export_progress")
    def export_progress(self, figures: dict[str, Any]) -> None:
        """Rows and bytes of the running export (sent by the export activity)."""
        if not self._exporting:
            return
        rows = int(figures.get("rows", 0))
        uploaded = int(figures.get("uploaded_bytes", 0))
        model = str(figures.get("model", ""))
        self._progress = Progress(
            step="exporting",
            done=rows,
            total=0,
            message=f"{rows} rows ({model}), {uploaded} bytes uploaded",
        )

    def _reference_time(self) -> datetime:
        # Runs the schedule started directly (before audit-export-scheduled) carried their due
        # time; runs started by AuditExportScheduled or the API are given their date.
        due = workflow.info().typed_search_attributes.get(SCHEDULED_START)
        return due if due is not None else workflow.now()

    @workflow.run
    async def run(self, inp: AuditExportInput) -> AuditExportResult:
        """Plan, test + compile, export, record, audit and mail (or nothing, if done)."""
        info = workflow.info()
        who = actor()
        await self.record_run("running", inp)
        self.step("planning", inp.date or "today")
        plan: Plan = await workflow.execute_activity(
            "audit_export.plan",
            PlanRequest(
                date=inp.date,
                force=inp.force,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                actor=who,
                reference_time=self._reference_time().isoformat(),
            ),
            result_type=Plan,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
                non_retryable_error_types=["DateInFuture"],
            ),
            summary=f"plan export of {inp.date or 'today'} (force={inp.force})",
        )
        rec = plan.record
        if plan.noop:
            self.step("done", f"{plan.export_date} already exported (v{rec.version}); no change")
            set_state("noop")
            result = self._result(plan.export_date, rec, noop=True)
            await self.record_run("completed", inp, result=result, figures={"noop": True})
            return result

        set_state("exporting")
        try:
            result = await self._export(plan, who)
        except (Exception, asyncio.CancelledError) as exc:
            failure = _describe(exc)
            await workflow.execute_activity(
                "audit_export.fail",
                FailRequest(record=rec, failure=failure, actor=who),
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=BOOKKEEPING_RETRY,
                summary="mark the export failed",
            )
            await self.audit(
                "export",
                f"s3://{rec.bucket}/{rec.object_key}",
                outcome="failure",
                export_date=plan.export_date,
                version=rec.version,
                failure=failure,
            )
            set_state("failed")
            await self.record_run(
                "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed",
                inp,
                failure=failure,
            )
            raise
        await self.record_run(
            "completed",
            inp,
            result=result,
            figures={"rows": sum(result.row_counts.values()), "bytes": result.ciphertext_bytes},
        )
        return result

    async def _export(self, plan: Plan, who: str) -> AuditExportResult:
        info = workflow.info()
        rec = plan.record
        self.step("dbt", "dbt test + compile of the audit models")
        models: CompiledModels = await workflow.execute_activity(
            "audit_export.dbt_check",
            result_type=CompiledModels,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=DBT_RETRY,
            summary="dbt test, then compile audit_case_snapshot + audit_assignment_snapshot",
        )
        self.step("exporting", f"s3://{rec.bucket}/{rec.object_key}")
        self._exporting = True
        outcome: ExportOutcome = await workflow.execute_activity(
            "audit_export.export",
            ExportRequest(record=rec, models=models),
            result_type=ExportOutcome,
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=EXPORT_RETRY,
            summary=f"snapshot -> zip -> AES-256-GCM -> s3://{rec.bucket}/{rec.object_key}",
        )
        self._exporting = False
        self.step("recording", "export_runs + audit event")
        final: ExportRecord = await workflow.execute_activity(
            "audit_export.finish",
            FinishRequest(
                record=rec,
                outcome=outcome,
                actor=who,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
            ),
            result_type=ExportRecord,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
                non_retryable_error_types=["Superseded"],
            ),
            summary="export_runs: succeeded",
        )
        await self.audit(
            "export",
            f"s3://{rec.bucket}/{rec.object_key}",
            export_date=plan.export_date,
            version=rec.version,
            forced=rec.forced,
            key_id=outcome.key_id,
            snapshot_at=outcome.snapshot_at,
            row_counts={e.model: e.rows for e in outcome.entries},
            ciphertext_sha256=outcome.ciphertext_sha256,
            plaintext_sha256=outcome.plaintext_sha256,
        )
        self.step("mailing", "distribution mail to compliance")
        mail_status: str = await workflow.execute_activity(
            "audit_export.distribute",
            DistributeRequest(
                record=final,
                outcome=outcome,
                idempotency_key=f"audit-export:{plan.export_date}:v{rec.version}",
            ),
            result_type=str,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=MAIL_RETRY,
            summary="mail compliance a 7-day link",
        )
        set_state("exported")
        rows = sum(final.row_counts.values())
        self.step("done", f"{rows} rows, {outcome.ciphertext_bytes} bytes; mail {mail_status}")
        result = self._result(plan.export_date, final, noop=False)
        result.mail_status = mail_status
        return result

    @staticmethod
    def _result(export_date: str, rec: ExportRecord, *, noop: bool) -> AuditExportResult:
        return AuditExportResult(
            export_date=export_date,
            noop=noop,
            version=rec.version,
            forced=rec.forced,
            bucket=rec.bucket,
            object_key=rec.object_key,
            key_id=rec.key_id,
            snapshot_at=rec.snapshot_at,
            row_counts=dict(rec.row_counts),
            plaintext_sha256=rec.plaintext_sha256,
            ciphertext_sha256=rec.ciphertext_sha256,
            ciphertext_bytes=rec.ciphertext_bytes,
        )


def _describe(exc: BaseException) -> str:
    # The activity's own message (e.g. the failing dbt test) is the useful part.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return f"{cause.type or 'ApplicationError'}: {cause.message}"
        cause = cause.__cause__
    return str(exc) or type(exc).__name__


@workflow.defn(name=SCHEDULED_WORKFLOW)
class AuditExportScheduled(RunbookWorkflow):
    """What the ``audit-export-nightly`` schedule starts: the night's ``audit-export:<date>`` run.

    A schedule can only name its runs ``<schedule id>-<time>``, but every run of a date must be
    ``audit-export:YYYY-MM-DD`` (a manual run of the same date is then the same run). This
    starter computes the date the night was due, starts the export under that id as a child
    that outlives it, and waits for its end. It keeps no ``runs`` row: the export writes its own.
    """

    runbook = RUNBOOK

    @workflow.run
    async def run(self, inp: AuditExportScheduledInput) -> AuditExportScheduledResult:
        """Start ``audit-export:<date>`` (or find it running) and report how it ended."""
        # A catch-up run started hours late still exports the night it was due.
        due = workflow.info().typed_search_attributes.get(SCHEDULED_START) or workflow.now()
        try:
            export_date = today_in(inp.time_zone, due)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ApplicationError(
                f"unknown time zone {inp.time_zone!r}", type="BadTimeZone", non_retryable=True
            ) from exc
        child_id = workflow_id(export_date)
        who = actor()
        # The 03:00 firing is the fallback for a night without 02:00 (spring forward): it
        # starts the date only if the date has no run at all, so every other night it ends
        # here at once (the 02:00 run of the date is found, however it ended).
        fallback = local_hour(inp.time_zone, due) == inp.fallback_hour
        self.step(
            "starting",
            f"{child_id} (due {due.isoformat()} in {inp.time_zone})"
            + (" - fallback: only if the date has no run" if fallback else ""),
        )
        try:
            handle = await workflow.start_child_workflow(
                AuditExportNightly.run,
                AuditExportInput(date=export_date),
                id=child_id,
                task_queue=workflow.info().task_queue,
                execution_timeout=EXECUTION_TIMEOUT,
                # The export finishes even when this starter is terminated or cancelled.
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                cancellation_type=workflow.ChildWorkflowCancellationType.ABANDON,
                # A date whose run ended may run again: its plan step makes a succeeded date a
                # no-op, and retries a failed one.
                id_reuse_policy=(
                    WorkflowIDReusePolicy.REJECT_DUPLICATE
                    if fallback
                    else WorkflowIDReusePolicy.ALLOW_DUPLICATE
                ),
                memo={ids.MEMO_ACTOR: who, ids.MEMO_RUNBOOK: RUNBOOK},
                search_attributes=_child_search_attributes(who),
                static_summary=f"audit export of {export_date} (schedule {SCHEDULE_ID})",
            )
        except WorkflowAlreadyStartedError:
            if fallback:
                self.step("done", f"{child_id} already has a run; nothing to catch up")
                set_state("already-ran")
                return AuditExportScheduledResult(export_date, child_id, False, "already-ran")
            # A manual run of the same date is under way: it is tonight's export.
            self.step("done", f"{child_id} is already running; left alone")
            set_state("already-running")
            return AuditExportScheduledResult(export_date, child_id, False, "already-running")
        set_state("waiting")
        self.step("waiting", f"{child_id} started")
        try:
            result = await handle
        except ChildWorkflowError as exc:
            set_state("failed")
            self.step("done", f"{child_id} failed")
            raise ApplicationError(
                f"{child_id} failed: {_describe(exc)}", type="ExportFailed", non_retryable=True
            ) from exc
        status = "noop" if result.noop else "exported"
        set_state(status)
        self.step("done", f"{child_id}: {status}")
        return AuditExportScheduledResult(export_date, child_id, True, status)


def _child_search_attributes(who: str) -> TypedSearchAttributes | None:
    # The attributes a scheduled run always had; none where they are not registered (the
    # time-skipping test server), as in set_state().
    if workflow.info().typed_search_attributes.get(RUNBOOK_KEY) is None:
        return None
    return TypedSearchAttributes(
        [
            SearchAttributePair(RUNBOOK_KEY, RUNBOOK),
            SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_ACTOR), who),
            SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_TENANT), ids.SYSTEM_TENANT),
            SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_STATE), "scheduled"),
        ]
    )
