"""sla-escalation under the time-skipping server: the whole timeline, activities mocked by name."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.sla_escalation import (
    REVISION,
    BreachOutcome,
    BreachRequest,
    EscalateRequest,
    EscalateSignal,
    NoteRequest,
    NoteSignal,
    RequestFacts,
    ResolvedSignal,
    SlaChangedSignal,
    SlaEscalationInput,
    SlaEscalationResult,
    SlaState,
    SlaSync,
    SupervisorNotice,
)
from opsflow.workflows.sla_escalation import SlaEscalation


@dataclass
class FakeSla:
    """In-memory stand-in for the request, the read model and the notifications."""

    status: str = "assigned"
    syncs: list[SlaSync] = field(default_factory=list)
    breaches: list[BreachRequest] = field(default_factory=list)
    escalations: list[EscalateRequest] = field(default_factory=list)
    notes: list[NoteRequest] = field(default_factory=list)
    notices: list[SupervisorNotice] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    def activities(self) -> list[Any]:
        @activity.defn(name="sla.sync")
        async def sync(s: SlaSync) -> RequestFacts:
            if s.run is not None:  # the runs row travels with the watchlist row
                self.runs.append(s.run)
            self.syncs.append(s)
            return RequestFacts(request_id=s.request_id, status=self.status, department="ROADS")

        @activity.defn(name="sla.breach")
        async def breach(b: BreachRequest) -> BreachOutcome:
            self.breaches.append(b)
            old, self.status = self.status, "in_progress"
            return BreachOutcome(changed=True, old_status=old, new_status="in_progress")

        @activity.defn(name="sla.escalate")
        async def escalate(e: EscalateRequest) -> None:
            self.escalations.append(e)
            if e.sync is not None:  # the watchlist row after the escalation, same step
                self.syncs.append(e.sync)
            self.notices.extend(e.notices)  # and the supervisors' mail and SMS

        @activity.defn(name="sla.add_note")
        async def add_note(n: NoteRequest) -> None:
            self.notes.append(n)

        @activity.defn(name="sla.notify_supervisors")
        async def notify(n: SupervisorNotice) -> int:
            self.notices.append(n)
            return 1

        @activity.defn(name="platform.record_run")
        async def record_run(r: RunRecord) -> None:
            self.runs.append(r)

        @activity.defn(name="platform.audit")
        async def audit(e: AuditEventIn) -> None:
            pass

        return [sync, breach, escalate, add_note, notify, record_run, audit]


@dataclass
class Harness:
    env: WorkflowEnvironment
    fake: FakeSla
    task_queue: str

    async def start(self, due_in: timedelta, **kw: Any) -> WorkflowHandle[Any, Any]:
        now = await self.env.get_current_time()
        return await self.env.client.start_workflow(
            SlaEscalation.run,
            SlaEscalationInput(
                request_id=42,
                sla_due_at=(now + due_in).isoformat(),
                **{"revision": REVISION, **kw},  # as opsflow's starters start it
            ),
            id=f"sla:request:test-{uuid.uuid4()}",
            task_queue=self.task_queue,
            memo={"actor": "system:test"},
        )

    async def state(self, handle: WorkflowHandle[Any, Any]) -> SlaState:
        # A query that lands while the run continues as new can time out on the test server
        # (it went to the run that just closed); the next one reaches the new run.
        for attempt in range(3):
            try:
                result: SlaState = await handle.query(SlaEscalation.sla_state)
                return result
            except RPCError as exc:
                timed_out = "deadline exceeded" in str(exc) or "Timeout expired" in str(exc)
                if not timed_out or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def settle(self, handle: WorkflowHandle[Any, Any], want: str) -> SlaState:
        """Wait (real time) until the workflow has caught up with what was sent."""
        state = await self.state(handle)
        for _ in range(100):
            if state.state == want:
                return state
            await asyncio.sleep(0.05)
            state = await self.state(handle)
        return state


async def _harness(env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    fake = FakeSla()
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        env.client, task_queue=tq, workflows=[SlaEscalation], activities=fake.activities()
    ):
        yield Harness(env, fake, tq)


@pytest_asyncio.fixture
async def sla(ts_env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    async for harness in _harness(ts_env):
        yield harness


@pytest_asyncio.fixture
async def sla_alone(own_ts_env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    """A harness on a time-skipping server of its own.

    For the continue-as-new burst: on the shared server, a run that ended in an earlier test
    (the test server's bookkeeping of its last task) now and then keeps time from skipping,
    and the 61 hours this test sleeps would then wait a real minute.
    """
    async for harness in _harness(own_ts_env):
        yield harness


async def test_ok_then_watch_then_breach_once_then_resolved(sla: Harness) -> None:
    handle = await sla.start(timedelta(hours=48))
    assert (await sla.settle(handle, "ok")).state == "ok"
    await sla.env.sleep(timedelta(hours=23))
    assert (await sla.settle(handle, "ok")).state == "ok"  # not on the watchlist yet
    await sla.env.sleep(timedelta(hours=2))
    state = await sla.settle(handle, "watch")
    assert state.state == "watch"
    assert sla.fake.syncs[-1].state == "watch"
    assert not sla.fake.breaches
    await sla.env.sleep(timedelta(hours=24))
    state = await sla.settle(handle, "breached")
    assert state.state == "breached" and state.breached_at
    await sla.env.sleep(timedelta(hours=72))  # nothing more happens: the breach is once
    assert len(sla.fake.breaches) == 1
    assert [n.channel for n in sla.fake.notices] == ["mail"]
    await handle.signal(SlaEscalation.request_resolved, ResolvedSignal(actor="token:op"))
    result: SlaEscalationResult = await handle.result()
    assert result.breached and result.state == "resolved"
    assert result.ended_by == "request_resolved"
    assert len(sla.fake.breaches) == 1
    assert sla.fake.syncs[-1].state == "resolved"
    assert [r.status for r in sla.fake.runs] == ["running", "completed"]


async def test_escalate_notifies_by_mail_and_sms_once(sla: Harness) -> None:
    handle = await sla.start(timedelta(hours=10))
    await handle.signal(
        SlaEscalation.escalate, EscalateSignal(reason="road flooded", actor="token:sup")
    )
    state = await sla.settle(handle, "escalated")
    assert state.state == "escalated"
    assert [(e.actor, e.reason) for e in state.escalations] == [("token:sup", "road flooded")]
    assert len(sla.fake.escalations) == 1
    assert sorted(n.channel for n in sla.fake.notices) == ["mail", "sms"]
    keys = {n.idempotency_key for n in sla.fake.notices}
    assert len(keys) == 2 and all("/escalate/" in k for k in keys)
    await handle.signal(SlaEscalation.request_resolved, ResolvedSignal())
    result: SlaEscalationResult = await handle.result()
    assert result.escalations == 1 and not result.breached
    # One workflow task per signal: the escalation is a local activity (a marker, no
    # activity task), and the watch deadline's timer outlives the signal; it is cancelled
    # once, at the end.
    events = (await handle.fetch_history()).events
    kinds = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events]
    assert "ACTIVITY_TASK_SCHEDULED" not in kinds
    assert kinds.count("TIMER_STARTED") == 1 and kinds.count("TIMER_CANCELED") == 1
    last_signal = len(kinds) - 1 - kinds[::-1].index("WORKFLOW_EXECUTION_SIGNALED")
    assert kinds.index("TIMER_CANCELED") > last_signal  # request_resolved cancelled it
    local = [
        e.marker_recorded_event_attributes.details["data"].payloads[0].data
        for e in events
        if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert sum(b'"sla.escalate"' in d for d in local) == 1


@pytest.mark.parametrize(("revision", "patches"), [(REVISION, 0), (0, 2)])
async def test_patch_markers_only_for_runs_started_without_the_revision(
    sla: Harness, revision: int, patches: int
) -> None:
    # opsflow's starters give the revision: the run takes today's steps with no patch marker
    # (each would also upsert TemporalChangeVersion, a visibility write). A run started
    # without it asks for both markers, as an earlier worker's run did, and takes the same
    # steps.
    handle = await sla.start(timedelta(hours=10), revision=revision)
    await handle.signal(SlaEscalation.escalate, EscalateSignal(reason="flooded", actor="sup"))
    assert (await sla.settle(handle, "escalated")).state == "escalated"
    await handle.signal(SlaEscalation.request_resolved, ResolvedSignal())
    await handle.result()
    events = (await handle.fetch_history()).events
    markers = [e.marker_recorded_event_attributes.marker_name for e in events]
    assert markers.count("core_patch") == patches
    change_versions = [
        e
        for e in events
        if "TemporalChangeVersion"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    ]
    assert len(change_versions) == patches
    kinds = [EventType.Name(e.event_type) for e in events]
    assert "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED" not in kinds  # one-task steps either way
    assert sorted(n.channel for n in sla.fake.notices) == ["mail", "sms"]


async def test_resolved_before_breach_means_no_breach_action(sla: Harness) -> None:
    handle = await sla.start(timedelta(hours=30))
    await sla.env.sleep(timedelta(hours=7))
    assert (await sla.settle(handle, "watch")).state == "watch"
    await handle.signal(SlaEscalation.request_resolved, ResolvedSignal())
    result: SlaEscalationResult = await handle.result()
    assert not result.breached
    await sla.env.sleep(timedelta(hours=48))
    assert sla.fake.breaches == []
    assert sla.fake.notices == []


async def test_due_moved_later_then_earlier(sla: Harness) -> None:
    handle = await sla.start(timedelta(hours=30))
    await sla.env.sleep(timedelta(hours=7))
    assert (await sla.settle(handle, "watch")).state == "watch"
    now = await sla.env.get_current_time()
    later = now + timedelta(hours=100)
    await handle.signal(SlaEscalation.sla_changed, SlaChangedSignal(new_due_at=later.isoformat()))
    state = await sla.settle(handle, "ok")
    assert state.state == "ok"
    assert datetime.fromisoformat(state.due_at) == later
    await sla.env.sleep(timedelta(hours=30))  # past the old due time: no breach
    assert sla.fake.breaches == []
    assert (await sla.state(handle)).state == "ok"
    now = await sla.env.get_current_time()
    earlier = now + timedelta(hours=2)
    await handle.signal(SlaEscalation.sla_changed, SlaChangedSignal(new_due_at=earlier.isoformat()))
    assert (await sla.settle(handle, "watch")).state == "watch"
    await sla.env.sleep(timedelta(hours=3))
    assert (await sla.settle(handle, "breached")).state == "breached"
    assert len(sla.fake.breaches) == 1
    assert datetime.fromisoformat(sla.fake.breaches[0].due_at) == earlier
    await handle.signal(SlaEscalation.request_resolved, ResolvedSignal())
    await handle.result()


async def test_already_resolved_request_ends_at_once(sla: Harness) -> None:
    sla.fake.status = "closed"
    handle = await sla.start(timedelta(hours=5))
    result: SlaEscalationResult = await handle.result()
    assert result.ended_by == "request closed"
    assert sla.fake.breaches == []


async def _until(ok: Callable[[], bool | Awaitable[bool]], seconds: float = 10) -> None:
    """Wait (real time, up to ``seconds``) until ``ok()`` holds; the asserts that follow say
    what did not happen."""
    for _ in range(int(seconds / 0.05)):
        result = ok()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("notes", [12])
async def test_continue_as_new_keeps_state_and_signals(sla_alone: Harness, notes: int) -> None:
    sla = sla_alone
    handle = await sla.start(timedelta(hours=60), max_history_events=20)
    await handle.signal(SlaEscalation.escalate, EscalateSignal(reason="urgent", actor="token:s"))
    # The first half of the notes takes the history past the limit (a run checks it when a
    # workflow task starts; several signals can be handled in one task) ...
    half = notes // 2
    for i in range(half):
        await handle.signal(SlaEscalation.add_note, NoteSignal(text=f"note {i}", actor="token:o"))
    await _until(lambda: len(sla.fake.notes) == half)
    # ... then a burst: some notes land while the run is continuing as new.
    for i in range(half, notes):
        await handle.signal(SlaEscalation.add_note, NoteSignal(text=f"note {i}", actor="token:o"))
    # Wait on the activities' side, not with queries: a query that reaches a run in the
    # instant it continues as new can hold the test server's time skipping for a minute.
    await _until(
        lambda: (
            len(sla.fake.notes) == notes and "continued_as_new" in [r.status for r in sla.fake.runs]
        )
    )

    # The runs row comes just before the continue-as-new itself: query once the new run is
    # there (describe, unlike a query, never holds time skipping).
    async def new_run() -> bool:
        return (await handle.describe()).run_id != handle.result_run_id

    await _until(new_run)
    state = await sla.settle(handle, "escalated")
    for _ in range(100):
        if len(state.notes) == notes:
            break
        await asyncio.sleep(0.05)
        state = await sla.state(handle)
    assert state.generation >= 1, "the run never continued as new"
    assert [n.text for n in state.notes] == [f"note {i}" for i in range(notes)]
    assert state.state == "escalated" and len(state.escalations) == 1
    assert [n.text for n in sla.fake.notes] == [f"note {i}" for i in range(notes)]
    assert "continued_as_new" in [r.status for r in sla.fake.runs]
    await sla.env.sleep(timedelta(hours=61))
    state = await sla.settle(handle, "escalated")
    assert len(sla.fake.breaches) == 1  # the timers were re-armed in the new run
    await handle.signal(SlaEscalation.request_resolved, ResolvedSignal())
    result: SlaEscalationResult = await handle.result()
    assert result.notes == notes and result.escalations == 1 and result.breached
