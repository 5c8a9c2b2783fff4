"""audit-export-nightly under the time-skipping server, activities mocked by name."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from opsflow.shared import audit_export_nightly as ae
from opsflow.shared.audit_export_nightly import (
    AuditExportInput,
    CompiledModel,
    CompiledModels,
    DistributeRequest,
    EntryFacts,
    ExportOutcome,
    ExportRecord,
    ExportRequest,
    FailRequest,
    FinishRequest,
    Plan,
    PlanRequest,
)
from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.workflows.audit_export_nightly import (
    SCHEDULED_START,
    AuditExportNightly,
    AuditExportScheduled,
)

SHA = "a" * 64


@dataclass
class FakeExport:
    """In-memory export_runs, bucket and mailbox, with switchable faults."""

    rows: dict[tuple[str, int], ExportRecord] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    mails: list[DistributeRequest] = field(default_factory=list)
    audits: list[AuditEventIn] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    upload_failures: int = 0
    export_attempts: int = 0
    dbt_attempts: int = 0
    dbt_failing_test: str | None = None

    def activities(self) -> list[Callable[..., Any]]:
        @activity.defn(name="audit_export.plan")
        async def plan(req: PlanRequest) -> Plan:
            d = req.date or "2026-11-21"
            done = [r for r in self.rows.values() if r.export_date == d and r.status == "succeeded"]
            if done and not req.force:
                return Plan(d, True, max(done, key=lambda r: r.version))
            version = len([r for r in self.rows.values() if r.export_date == d]) + 1
            rec = ExportRecord(
                export_date=d,
                version=version,
                forced=bool(done),
                status="running",
                bucket="audit",
                object_key=ae.object_key(d, version),
                workflow_id=req.workflow_id,
                run_id=req.run_id,
            )
            self.rows[(d, version)] = rec
            return Plan(d, False, rec)

        @activity.defn(name="audit_export.dbt_check")
        async def dbt_check() -> CompiledModels:
            self.dbt_attempts += 1
            if self.dbt_failing_test:
                raise ApplicationError(
                    f"dbt test failed: {self.dbt_failing_test} (3 failing rows)",
                    type="DbtTestFailed",
                    non_retryable=True,
                )
            return CompiledModels(
                models=[CompiledModel(m, f"select 1 as {m}") for m in ae.MODELS],
                dbt_version="1.10.test",
                models_revision="sha256:test",
            )

        @activity.defn(name="audit_export.export")
        async def export(req: ExportRequest) -> ExportOutcome:
            self.export_attempts += 1
            activity.heartbeat({"rows": 10})
            if self.upload_failures > 0:
                self.upload_failures -= 1
                raise RuntimeError("S3 503 SlowDown")
            self.objects[req.record.object_key] = b"package"
            return ExportOutcome(
                object_key=req.record.object_key,
                key_id="k1",
                snapshot_at="2026-11-21T02:00:01+00:00",
                entries=[EntryFacts(f"{m}.csv", m, 5, 100, SHA) for m in ae.MODELS],
                plaintext_bytes=300,
                plaintext_sha256=SHA,
                ciphertext_bytes=350,
                ciphertext_sha256=SHA,
            )

        @activity.defn(name="audit_export.finish")
        async def finish(req: FinishRequest) -> ExportRecord:
            rec = self.rows[(req.record.export_date, req.record.version)]
            rec.status = "succeeded"
            rec.key_id = req.outcome.key_id
            rec.row_counts = {e.model: e.rows for e in req.outcome.entries}
            rec.ciphertext_sha256 = req.outcome.ciphertext_sha256
            return rec

        @activity.defn(name="audit_export.fail")
        async def fail(req: FailRequest) -> None:
            self.rows[(req.record.export_date, req.record.version)].status = "failed"

        @activity.defn(name="audit_export.distribute")
        async def distribute(req: DistributeRequest) -> str:
            self.mails.append(req)
            return "sent"

        @activity.defn(name="platform.record_run")
        async def record_run(r: RunRecord) -> None:
            self.runs.append(r)

        @activity.defn(name="platform.audit")
        async def audit(e: AuditEventIn) -> None:
            self.audits.append(e)

        return [plan, dbt_check, export, finish, fail, distribute, record_run, audit]


async def _run(
    env: WorkflowEnvironment, fake: FakeExport, inp: AuditExportInput, actor: str = "system:x"
) -> Any:
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        env.client, task_queue=tq, workflows=[AuditExportNightly], activities=fake.activities()
    ):
        return await env.client.execute_workflow(
            AuditExportNightly.run,
            inp,
            id=f"audit-export:test-{uuid.uuid4()}",
            task_queue=tq,
            memo={"actor": actor},
        )


async def test_export_records_audits_and_mails(ts_env: WorkflowEnvironment) -> None:
    fake = FakeExport()
    result = await _run(ts_env, fake, AuditExportInput(date="2026-11-21"), "system:audit-export")
    assert not result.noop and result.version == 1 and not result.forced
    assert result.row_counts == {m: 5 for m in ae.MODELS}
    assert list(fake.objects) == ["2026/11/21/audit-export-2026-11-21.zip.ofae"]
    assert [(a.action, a.outcome, a.actor) for a in fake.audits] == [
        ("export", "success", "system:audit-export")
    ]
    assert fake.audits[0].details["ciphertext_sha256"] == SHA
    assert len(fake.mails) == 1
    assert fake.mails[0].idempotency_key == "audit-export:2026-11-21:v1"
    assert [r.status for r in fake.runs] == ["running", "completed"]


async def test_flaky_upload_is_retried_into_one_package(ts_env: WorkflowEnvironment) -> None:
    fake = FakeExport(upload_failures=2)
    result = await _run(ts_env, fake, AuditExportInput(date="2026-11-21"))
    assert fake.export_attempts == 3
    assert result.ciphertext_sha256 == SHA
    assert len(fake.objects) == 1 and len(fake.mails) == 1


async def test_dbt_test_failure_stops_the_export_without_retry(
    ts_env: WorkflowEnvironment,
) -> None:
    fake = FakeExport(dbt_failing_test="unique_audit_case_snapshot_id")
    with pytest.raises(WorkflowFailureError) as err:
        await _run(ts_env, fake, AuditExportInput(date="2026-11-21"))
    assert fake.dbt_attempts == 1
    assert fake.export_attempts == 0 and not fake.objects and not fake.mails
    # WorkflowFailure <- ActivityError <- ApplicationError
    cause = getattr(err.value.cause, "cause", None)
    assert isinstance(cause, ApplicationError)
    assert "unique_audit_case_snapshot_id" in cause.message
    assert fake.rows[("2026-11-21", 1)].status == "failed"
    assert [(a.action, a.outcome) for a in fake.audits] == [("export", "failure")]
    assert "unique_audit_case_snapshot_id" in fake.audits[0].details["failure"]
    assert fake.runs[-1].status == "failed"


async def test_rerun_of_a_succeeded_date_changes_nothing(ts_env: WorkflowEnvironment) -> None:
    fake = FakeExport()
    await _run(ts_env, fake, AuditExportInput(date="2026-11-21"))
    again = await _run(ts_env, fake, AuditExportInput(date="2026-11-21"))
    assert again.noop and again.version == 1
    assert len(fake.rows) == 1 and len(fake.objects) == 1 and len(fake.mails) == 1
    assert fake.export_attempts == 1 and len(fake.audits) == 1


async def test_force_writes_a_new_version_recorded_as_forced(
    ts_env: WorkflowEnvironment,
) -> None:
    fake = FakeExport()
    await _run(ts_env, fake, AuditExportInput(date="2026-11-21"))
    forced = await _run(ts_env, fake, AuditExportInput(date="2026-11-21", force=True))
    assert not forced.noop and forced.version == 2 and forced.forced
    assert sorted(fake.objects) == [
        "2026/11/21/audit-export-2026-11-21-v2.zip.ofae",
        "2026/11/21/audit-export-2026-11-21.zip.ofae",
    ]
    assert [m.idempotency_key for m in fake.mails] == [
        "audit-export:2026-11-21:v1",
        "audit-export:2026-11-21:v2",
    ]
    assert fake.audits[-1].details["forced"] is True


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-13-01", "not a calendar date"),
        ("21/11/2026", "should match pattern"),
    ],
)
def test_malformed_dates_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TypeAdapter(AuditExportInput).validate_python({"date": value})


def test_future_dates_are_refused_in_the_configured_zone_not_by_the_payload() -> None:
    from datetime import UTC, datetime

    # 23:30 UTC on the 21st is already the 22nd in Tokyo: the 22nd is today there, the 23rd
    # is not; in UTC the 22nd is still the future.
    late = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    ae.refuse_future("2026-11-22", "Asia/Tokyo", late)
    with pytest.raises(ValueError, match=r"2026-11-23 is in the future \(today is 2026-11-22"):
        ae.refuse_future("2026-11-23", "Asia/Tokyo", late)
    with pytest.raises(ValueError, match="in UTC"):
        ae.refuse_future("2026-11-22", "UTC", late)
    ae.refuse_future(None, "UTC", late)  # no date: today, never the future
    # The payload itself decodes a future date (a worker east of the API must decode it).
    assert TypeAdapter(AuditExportInput).validate_python({"date": "2999-01-01"}).date == (
        "2999-01-01"
    )


def test_date_helpers() -> None:
    assert ae.date_from_workflow_id("audit-export:2026-11-21") == "2026-11-21"
    assert ae.date_from_workflow_id("audit-export-nightly-2026-11-21T01:00:00Z") is None
    assert ae.object_key("2026-01-02", 1) == "2026/01/02/audit-export-2026-01-02.zip.ofae"
    from datetime import UTC, datetime

    late = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    assert ae.today_in("Europe/Berlin", late) == "2026-11-22"
    assert ae.today_in("America/New_York", late) == "2026-11-21"


# ---------------------------------------------------------------------------------------------
# audit-export-scheduled: what the schedule starts, so the night's run is audit-export:<date>.

SCHEDULE_ACTOR = f"system:{ae.SCHEDULE_ID}"


def test_export_date_of_a_scheduled_time_is_local() -> None:
    # What the starter computes from TemporalScheduledStartTime and the configured zone.
    # 07:00Z on the spring-forward day is 03:00 EDT: the 8th in New York.
    assert ae.today_in("America/New_York", datetime(2026, 3, 8, 7, 0, tzinfo=UTC)) == "2026-03-08"
    # Just after local midnight (00:01 EST) is the 8th; one minute before midnight is still
    # the 7th there, though UTC already says the 8th.
    assert ae.today_in("America/New_York", datetime(2026, 3, 8, 5, 1, tzinfo=UTC)) == "2026-03-08"
    assert ae.today_in("America/New_York", datetime(2026, 3, 8, 4, 59, tzinfo=UTC)) == "2026-03-07"
    # Just after local midnight in Berlin is the next day, though UTC says the day before.
    assert ae.today_in("Europe/Berlin", datetime(2026, 11, 21, 23, 1, tzinfo=UTC)) == "2026-11-22"


async def _start_scheduled(
    env: WorkflowEnvironment, tq: str, zone: str, due: datetime
) -> WorkflowHandle[Any, ae.AuditExportScheduledResult]:
    # What the schedule does: the starter, the schedule's actor, the due time as
    # TemporalScheduledStartTime (the time-skipping server has no schedules of its own).
    # Always a fixed due time: this server's clock jumps ahead (to leftover timers of failed
    # runs), so a date from workflow.now() could be "in the future" for the real clock.
    await _register_scheduled_start(env)
    attrs = TypedSearchAttributes([SearchAttributePair(SCHEDULED_START, due)])
    return await env.client.start_workflow(
        AuditExportScheduled.run,
        ae.AuditExportScheduledInput(time_zone=zone),
        id=f"audit-export-nightly-test-{uuid.uuid4()}",
        task_queue=tq,
        memo={"actor": SCHEDULE_ACTOR, "runbook": ae.RUNBOOK},
        search_attributes=attrs,
    )


async def _register_scheduled_start(env: WorkflowEnvironment) -> None:
    # The test server does not know the attribute the real schedules set: register it once.
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    SCHEDULED_START.name: IndexedValueType.INDEXED_VALUE_TYPE_DATETIME
                },
            )
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise


def _worker(env: WorkflowEnvironment, tq: str, acts: list[Any]) -> Worker:
    return Worker(
        env.client,
        task_queue=tq,
        workflows=[AuditExportNightly, AuditExportScheduled],
        activities=acts,
    )


async def _terminate_if_running(env: WorkflowEnvironment, wid: str) -> None:
    # The child ids are real dates on a session-wide server: leave none running behind.
    handle = env.client.get_workflow_handle(wid)
    try:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test cleanup")
    except RPCError:
        pass


async def test_scheduled_starter_runs_the_date_it_was_due_as_audit_export_date(
    ts_env: WorkflowEnvironment,
) -> None:
    fake = FakeExport()
    tq = f"tq-{uuid.uuid4()}"
    # Due 23:30 EDT on the 8th (03:30Z on the 9th, hours after the spring-forward): the
    # export is of the 8th, neither UTC's date nor the date the test runs.
    due = datetime(2026, 3, 9, 3, 30, tzinfo=UTC)
    async with _worker(ts_env, tq, fake.activities()):
        await _terminate_if_running(ts_env, "audit-export:2026-03-08")
        handle = await _start_scheduled(ts_env, tq, "America/New_York", due)
        result = await handle.result()
        assert result == ae.AuditExportScheduledResult(
            "2026-03-08", "audit-export:2026-03-08", True, "exported"
        )
        child = await ts_env.client.get_workflow_handle("audit-export:2026-03-08").describe()
        assert child.workflow_type == "audit-export-nightly"
        assert child.status == WorkflowExecutionStatus.COMPLETED
        assert child.parent_id == handle.id
        memo = await child.memo()
        assert memo == {"actor": SCHEDULE_ACTOR, "runbook": ae.RUNBOOK}
    assert list(fake.objects) == ["2026/03/08/audit-export-2026-03-08.zip.ofae"]
    # The child records itself (the starter has no runs row) and audits as the schedule.
    assert [(r.workflow_id, r.actor, r.status) for r in fake.runs] == [
        ("audit-export:2026-03-08", SCHEDULE_ACTOR, "running"),
        ("audit-export:2026-03-08", SCHEDULE_ACTOR, "completed"),
    ]
    assert fake.runs[0].input == {"date": "2026-03-08", "force": False}
    assert [a.actor for a in fake.audits] == [SCHEDULE_ACTOR]


def _gate_plan(acts: list[Any]) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the plan activity (``acts[0]``) until ``gate`` is set; ``planning`` says it began."""
    real_plan = acts[0]
    gate, planning = asyncio.Event(), asyncio.Event()

    @activity.defn(name="audit_export.plan")
    async def gated_plan(req: PlanRequest) -> Plan:
        planning.set()
        await gate.wait()
        plan: Plan = await real_plan(req)
        return plan

    acts[0] = gated_plan
    return gate, planning


async def test_fallback_firing_exports_only_a_night_without_a_run(
    ts_env: WorkflowEnvironment,
) -> None:
    # 2026-03-29 in Berlin has no 02:00 (02:00 -> 03:00 CEST): Temporal's calendar skips the
    # 02:00 firing, and the 03:00 one (01:00Z) must export the date. Fired again for the same
    # night - as it is every night that had its 02:00 run - it starts nothing.
    fake = FakeExport()
    tq = f"tq-{uuid.uuid4()}"
    wid = "audit-export:2026-03-29"
    three = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    async with _worker(ts_env, tq, fake.activities()):
        await _terminate_if_running(ts_env, wid)
        first = await (await _start_scheduled(ts_env, tq, "Europe/Berlin", three)).result()
        assert first == ae.AuditExportScheduledResult("2026-03-29", wid, True, "exported")
        again = await (await _start_scheduled(ts_env, tq, "Europe/Berlin", three)).result()
        assert again == ae.AuditExportScheduledResult("2026-03-29", wid, False, "already-ran")
    assert list(fake.objects) == ["2026/03/29/audit-export-2026-03-29.zip.ofae"]
    assert [r.status for r in fake.runs] == ["running", "completed"]  # one run of the date
    assert len(fake.mails) == 1


async def test_scheduled_starter_leaves_a_running_manual_run_of_the_date_alone(
    ts_env: WorkflowEnvironment,
) -> None:
    fake = FakeExport()
    acts = fake.activities()
    gate, planning = _gate_plan(acts)
    tq = f"tq-{uuid.uuid4()}"
    wid = "audit-export:2026-03-10"
    async with _worker(ts_env, tq, acts):
        await _terminate_if_running(ts_env, wid)
        manual = await ts_env.client.start_workflow(
            AuditExportNightly.run,
            AuditExportInput(date="2026-03-10"),
            id=wid,
            task_queue=tq,
            memo={"actor": "token:carol(operator)"},
        )
        await asyncio.wait_for(planning.wait(), 10)
        starter = await _start_scheduled(
            ts_env, tq, "America/New_York", datetime(2026, 3, 10, 6, 0, tzinfo=UTC)
        )
        result = await starter.result()
        assert result == ae.AuditExportScheduledResult("2026-03-10", wid, False, "already-running")
        # The manual run is untouched, and still the only run of the date.
        desc = await manual.describe()
        assert (
            desc.status == WorkflowExecutionStatus.RUNNING and desc.run_id == manual.result_run_id
        )
        gate.set()
        done = await manual.result()
    assert done.export_date == "2026-03-10" and not done.noop
    assert {r.actor for r in fake.runs} == {"token:carol(operator)"}


async def test_the_export_outlives_its_cancelled_starter(
    own_ts_env: WorkflowEnvironment,
) -> None:
    # (Termination is not tested here: the time-skipping server ignores parent close
    # policies, so a terminated starter's child runs on whatever the policy says.)
    fake = FakeExport()
    acts = fake.activities()
    gate, planning = _gate_plan(acts)
    tq = f"tq-{uuid.uuid4()}"
    wid = "audit-export:2026-03-13"
    async with _worker(own_ts_env, tq, acts):
        await _terminate_if_running(own_ts_env, wid)
        starter = await _start_scheduled(
            own_ts_env, tq, "UTC", datetime(2026, 3, 13, 2, 0, tzinfo=UTC)
        )
        await asyncio.wait_for(planning.wait(), 10)
        await starter.cancel()
        with pytest.raises(WorkflowFailureError):
            await starter.result()
        child = own_ts_env.client.get_workflow_handle(wid)
        assert (await child.describe()).status == WorkflowExecutionStatus.RUNNING
        gate.set()
        done = await child.result()
    assert done["export_date"] == "2026-03-13" and done["noop"] is False
    assert [r.status for r in fake.runs] == ["running", "completed"]
    assert len(fake.objects) == 1


async def test_scheduled_starter_fails_when_the_export_fails(ts_env: WorkflowEnvironment) -> None:
    fake = FakeExport(dbt_failing_test="not_null_audit_case_snapshot_id")
    tq = f"tq-{uuid.uuid4()}"
    async with _worker(ts_env, tq, fake.activities()):
        await _terminate_if_running(ts_env, "audit-export:2026-03-11")
        handle = await _start_scheduled(ts_env, tq, "UTC", datetime(2026, 3, 11, 2, 0, tzinfo=UTC))
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ExportFailed"
    assert "audit-export:2026-03-11" in cause.message
    assert "not_null_audit_case_snapshot_id" in cause.message
    assert fake.rows[("2026-03-11", 1)].status == "failed"


def test_dbt_warm_up_waits_for_a_quiet_process() -> None:
    """The warm-up does not start while the worker's process is busy."""
    from opsflow.adapters.dbt import wait_until_quiet

    assert wait_until_quiet(max_share=0.5, window=0.1, give_up_after=2.0) is True
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(10_000))

    busy = threading.Thread(target=burn)
    busy.start()
    try:
        # A busy process is never quiet: the wait gives up after its limit and says so.
        assert wait_until_quiet(max_share=0.5, window=0.1, give_up_after=0.5) is False
    finally:
        stop.set()
        busy.join()
