"""Replay scenarios of ``audit-export-nightly`` (registered in ``record_histories.SCENARIOS``).

Record only these (the other runbooks' saved histories stay untouched)::

    .venv/bin/python -m tests.replay.audit_export_scenarios [WORKFLOW_ID ...]

With workflow ids, only those scenarios are recorded (each is self-contained).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError

from opsflow.shared import audit_export_nightly as ae
from opsflow.shared import ids
from opsflow.shared.audit_export_nightly import (
    AuditExportInput,
    AuditExportScheduledInput,
    AuditExportScheduledResult,
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

SHA = "0" * 64
SCHEDULE_ACTOR = f"system:{ae.SCHEDULE_ID}"


@dataclass
class AuditExportWorld:
    """In-memory export_runs; the first upload attempt fails once, like a flaky S3."""

    rows: dict[tuple[str, int], ExportRecord] = field(default_factory=dict)
    failing_test: str | None = None
    flaky: set[str] = field(default_factory=set)
    # Dates whose plan step waits for the event (a run held "running"), and plans begun.
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    planning: set[str] = field(default_factory=set)

    def activities(self) -> list[Callable[..., Any]]:
        """Return the ``audit_export.*`` activities."""

        @activity.defn(name="audit_export.plan")
        async def plan(req: PlanRequest) -> Plan:
            d = req.date or "2026-11-20"
            self.planning.add(d)
            if d in self.hold:
                await self.hold[d].wait()
            done = [r for r in self.rows.values() if r.export_date == d and r.status == "succeeded"]
            if done and not req.force:
                return Plan(d, True, done[-1])
            version = len([r for r in self.rows.values() if r.export_date == d]) + 1
            rec = ExportRecord(
                d, version, bool(done), "running", "audit", ae.object_key(d, version)
            )
            self.rows[(d, version)] = rec
            return Plan(d, False, rec)

        @activity.defn(name="audit_export.dbt_check")
        async def dbt_check() -> CompiledModels:
            if self.failing_test:
                raise ApplicationError(
                    f"dbt test failed: {self.failing_test} (2 failing rows)",
                    type="DbtTestFailed",
                    non_retryable=True,
                )
            return CompiledModels(
                [CompiledModel(m, "select 1") for m in ae.MODELS], "1.10.23", "sha256:replay"
            )

        @activity.defn(name="audit_export.export")
        async def export(req: ExportRequest) -> ExportOutcome:
            if req.record.object_key not in self.flaky:
                self.flaky.add(req.record.object_key)
                raise RuntimeError("S3 503 SlowDown")
            return ExportOutcome(
                req.record.object_key,
                "k1",
                "2026-11-20T01:00:00+00:00",
                [EntryFacts(f"{m}.csv", m, 3, 30, SHA) for m in ae.MODELS],
                90,
                SHA,
                120,
                SHA,
            )

        @activity.defn(name="audit_export.finish")
        async def finish(req: FinishRequest) -> ExportRecord:
            rec = self.rows[(req.record.export_date, req.record.version)]
            rec.status = "succeeded"
            rec.row_counts = {e.model: e.rows for e in req.outcome.entries}
            return rec

        @activity.defn(name="audit_export.fail")
        async def fail(req: FailRequest) -> None:
            self.rows[(req.record.export_date, req.record.version)].status = "failed"

        @activity.defn(name="audit_export.distribute")
        async def distribute(req: DistributeRequest) -> str:
            return "sent"

        return [plan, dbt_check, export, finish, fail, distribute]


WORLD = AuditExportWorld()


async def _run(ctx: Any, wid: str, inp: AuditExportInput, fails: bool = False) -> Any:
    from tests.replay.record_histories import settle, start

    handle: WorkflowHandle[Any, Any] = await start(
        ctx, ae.RUNBOOK, inp, actor=SCHEDULE_ACTOR, workflow_id=wid
    )
    await settle(handle, fails=fails)
    return handle


async def export_ok(ctx: Any) -> Any:
    """A package written after one flaky upload attempt; recorded, audited, mailed."""
    return await _run(ctx, "audit-export:replay-export", AuditExportInput(date="2026-11-20"))


async def export_noop(ctx: Any) -> Any:
    """The same date again: nothing changes."""
    return await _run(ctx, "audit-export:replay-noop", AuditExportInput(date="2026-11-20"))


async def export_dbt_failure(ctx: Any) -> Any:
    """An error-severity dbt test fails: no retry, the attempt is marked failed."""
    WORLD.failing_test = "unique_audit_case_snapshot_id"
    try:
        return await _run(
            ctx, "audit-export:replay-dbt-failure", AuditExportInput(date="2026-11-19"), True
        )
    finally:
        WORLD.failing_test = None


async def _start_scheduled(ctx: Any, wid: str, due: datetime) -> WorkflowHandle[Any, Any]:
    # As the audit-export-nightly schedule starts it: the starter, the schedule's memo and
    # search attributes, and the due time the schedule sets (TemporalScheduledStartTime).
    handle: WorkflowHandle[Any, Any] = await ctx.client.start_workflow(
        ae.SCHEDULED_WORKFLOW,
        AuditExportScheduledInput(time_zone="America/New_York"),
        id=wid,
        task_queue=ctx.task_queue,
        result_type=AuditExportScheduledResult,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_RUNBOOK), ae.RUNBOOK),
                SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_ACTOR), SCHEDULE_ACTOR),
                SearchAttributePair(
                    SearchAttributeKey.for_keyword(ids.SA_TENANT), ids.SYSTEM_TENANT
                ),
                SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_STATE), "scheduled"),
                SearchAttributePair(
                    SearchAttributeKey.for_datetime("TemporalScheduledStartTime"), due
                ),
            ]
        ),
        memo={ids.MEMO_ACTOR: SCHEDULE_ACTOR, ids.MEMO_RUNBOOK: ae.RUNBOOK},
        static_summary=f"{ae.RUNBOOK} (schedule {ae.SCHEDULE_ID})",
    )
    return handle


async def scheduled_started(ctx: Any) -> Any:
    """The schedule's starter exports the night it was due as ``audit-export:2026-11-18``."""
    from tests.replay.record_histories import settle

    # No flaky first upload here: the child's history is not the one saved.
    WORLD.flaky.add(ae.object_key("2026-11-18", 1))
    # 02:00 EST on the 18th.
    handle = await _start_scheduled(
        ctx, "audit-export-scheduled:replay-started", datetime(2026, 11, 18, 7, 0, tzinfo=UTC)
    )
    await settle(handle)
    result = await handle.result()
    if (result.workflow_id, result.status) != ("audit-export:2026-11-18", "exported"):
        raise RuntimeError(f"unexpected starter result {result}")
    return handle


async def scheduled_already_running(ctx: Any) -> Any:
    """A manual run of the night is running: the starter leaves it alone and ends."""
    from tests.replay.record_histories import settle, start

    day = "2026-11-17"
    WORLD.flaky.add(ae.object_key(day, 1))
    WORLD.hold[day] = asyncio.Event()
    manual = await start(
        ctx,
        ae.RUNBOOK,
        AuditExportInput(date=day),
        actor="token:carol(operator)",
        workflow_id=ae.workflow_id(day),
    )
    try:
        for _ in range(200):
            if day in WORLD.planning:
                break
            await asyncio.sleep(0.05)
        handle = await _start_scheduled(
            ctx,
            "audit-export-scheduled:replay-already-running",
            datetime(2026, 11, 17, 7, 0, tzinfo=UTC),
        )
        await settle(handle)
        result = await handle.result()
        if result.started or result.status != "already-running":
            raise RuntimeError(f"unexpected starter result {result}")
    finally:
        WORLD.hold.pop(day).set()
    await settle(manual)
    return handle


AUDIT_EXPORT_SCENARIOS: list[tuple[str, Callable[[Any], Awaitable[Any]]]] = [
    ("audit-export:replay-export", export_ok),
    ("audit-export:replay-noop", export_noop),
    ("audit-export:replay-dbt-failure", export_dbt_failure),
    ("audit-export-scheduled:replay-started", scheduled_started),
    ("audit-export-scheduled:replay-already-running", scheduled_already_running),
]


def audit_export_activities() -> list[Callable[..., Any]]:
    """Return the mocked activities the recorder's worker registers."""
    return WORLD.activities()


async def _record_mine(only: set[str]) -> None:
    from temporalio.testing import WorkflowEnvironment

    from opsflow import binaries
    from tests.replay.record_histories import (
        HISTORIES,
        SCENARIOS,
        SEARCH_ATTRIBUTE_KEYS,
        _record,
    )

    HISTORIES.mkdir(parents=True, exist_ok=True)
    mine = {wid for wid, _ in AUDIT_EXPORT_SCENARIOS}
    if only:
        if only - mine:
            raise SystemExit(f"not scenarios of this runbook: {sorted(only - mine)}")
        mine = only
    dev = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binaries.find("temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
    )
    try:
        await _record(dev, [s for s in SCENARIOS if s.workflow_id in mine])
    finally:
        await dev.shutdown()


def main() -> None:
    """Record this runbook's histories only; exit with ``os._exit`` (sdk-python issue 300)."""
    status = 0
    try:
        asyncio.run(_record_mine(set(sys.argv[1:])))
    except BaseException as exc:
        print(f"recording failed: {exc!r}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
