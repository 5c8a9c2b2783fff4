"""audit-export-nightly under the time-skipping server, activities mocked by name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
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
from opsflow.workflows.audit_export_nightly import AuditExportNightly

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

    def activities(self) -> list[object]:
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
    cause = err.value.cause.cause  # WorkflowFailure <- ActivityError <- ApplicationError
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
        ("2999-01-01", "in the future"),
    ],
)
def test_malformed_or_future_dates_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TypeAdapter(AuditExportInput).validate_python({"date": value})


def test_date_helpers() -> None:
    assert ae.date_from_workflow_id("audit-export:2026-11-21") == "2026-11-21"
    assert ae.date_from_workflow_id("audit-export-nightly-2026-11-21T01:00:00Z") is None
    assert ae.object_key("2026-01-02", 1) == "2026/01/02/audit-export-2026-01-02.zip.ofae"
    from datetime import UTC, datetime

    late = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    assert ae.today_in("Europe/Berlin", late) == "2026-11-22"
    assert ae.today_in("America/New_York", late) == "2026-11-21"
