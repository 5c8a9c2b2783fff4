"""Replay scenarios of ``triage-assignment``, ``sla-escalation`` and ``sla-reconciler``.

Used by ``record_histories.py``: the activities mocked by name and the scenarios that produce
the saved histories (escalation with a note, the full timer timeline on the time-skipping
server, a continue-as-new, a triage, a refused triage, a reconciliation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError

from opsflow.shared.errors import NOT_FOUND
from opsflow.shared.sla_escalation import (
    REVISION,
    BreachOutcome,
    BreachRequest,
    EscalateRequest,
    EscalateSignal,
    NoteRequest,
    NoteSignal,
    ReconcileInput,
    ReconcileResult,
    RequestFacts,
    ResolvedSignal,
    SlaEscalationInput,
    SlaState,
    SlaSync,
    SupervisorNotice,
)
from opsflow.shared.triage_assignment import (
    AssignOutcome,
    AssignRequest,
    StartSla,
    TriageAssignmentInput,
)

if TYPE_CHECKING:
    from tests.replay.record_histories import Ctx

SUPERVISOR = "token:sue(supervisor)"
OPERATOR = "token:oscar(operator)"
REFUSED_REQUEST = 9102
TIMELINE_REQUEST = 9002


def sla_activities() -> list[Callable[..., Any]]:
    """The ``sla.*`` and ``triage.*`` activities, mocked."""

    @activity.defn(name="sla.sync")
    async def sync(s: SlaSync) -> RequestFacts:
        return RequestFacts(request_id=s.request_id, status="assigned", department="ROADS")

    @activity.defn(name="sla.breach")
    async def breach(b: BreachRequest) -> BreachOutcome:
        if b.request_id == TIMELINE_REQUEST:
            # Someone resolves the request right after the breach. Sent from here because a
            # time-skipping server with nothing left to wait for would skip to the timeout.
            handle = activity.client().get_workflow_handle(b.workflow_id)
            await handle.signal("request_resolved", ResolvedSignal(actor=OPERATOR))
        return BreachOutcome(changed=True, old_status="assigned", new_status="in_progress")

    @activity.defn(name="sla.escalate")
    async def escalate(e: EscalateRequest) -> None:
        pass

    @activity.defn(name="sla.add_note")
    async def add_note(n: NoteRequest) -> None:
        pass

    @activity.defn(name="sla.notify_supervisors")
    async def notify(n: SupervisorNotice) -> int:
        return 2

    @activity.defn(name="sla.reconcile")
    async def reconcile(inp: ReconcileInput) -> ReconcileResult:
        return ReconcileResult(open_requests=3, started=2, rearmed=0, ended=1)

    @activity.defn(name="triage.assign")
    async def assign(req: AssignRequest) -> AssignOutcome:
        if req.inp.request_id == REFUSED_REQUEST:
            raise ApplicationError("unknown request 9102", type=NOT_FOUND, non_retryable=True)
        return AssignOutcome(
            assignment_id=1,
            department="ROADS",
            assignee="staff-1",
            sla_due_at=(datetime.now(UTC) + timedelta(hours=48)).isoformat(),
            corrected=list(req.inp.corrections),
        )

    @activity.defn(name="triage.start_sla")
    async def start_sla(s: StartSla) -> str:
        return f"sla:request:{s.request_id}"

    return [sync, breach, escalate, add_note, notify, reconcile, assign, start_sla]


async def _state(handle: WorkflowHandle[Any, Any]) -> SlaState:
    state: SlaState = await handle.query("sla_state", result_type=SlaState)
    return state


async def _until(handle: WorkflowHandle[Any, Any], ok: Callable[[SlaState], bool]) -> None:
    for _ in range(400):
        if ok(await _state(handle)):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{handle.id}: state never reached")


def _due(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


async def sla_escalate_note(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """A supervisor escalates, an operator adds a note, the request is resolved."""
    from tests.replay.record_histories import settle, start

    inp = SlaEscalationInput(
        request_id=9001, sla_due_at=_due(30), department="ROADS", revision=REVISION
    )
    handle = await start(ctx, "sla-escalation", inp, actor="system:triage")
    await handle.signal("escalate", EscalateSignal(reason="road flooded", actor=SUPERVISOR))
    await handle.signal("add_note", NoteSignal(text="crew called", actor=OPERATOR))
    await _until(handle, lambda s: s.state == "escalated" and len(s.notes) == 1)
    await handle.signal("request_resolved", ResolvedSignal(actor=OPERATOR))
    await settle(handle)
    return handle


async def sla_timeline(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """Watch at due - 24 h, breach at the due time, then resolved (time-skipped)."""
    from tests.replay.record_histories import start

    inp = SlaEscalationInput(
        request_id=TIMELINE_REQUEST, sla_due_at=_due(30), department="ROADS", revision=REVISION
    )
    handle = await start(ctx, "sla-escalation", inp, actor="system:sla-reconciler")
    # Awaiting the result lets the test server skip time through both timers; the mocked
    # breach resolves the request, which ends the run.
    result = await handle.result()
    if not result.breached:
        raise RuntimeError("the timeline scenario did not breach")
    return handle


async def sla_continue_as_new(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """Notes fill the history: the run continues as new (the first run's history is saved)."""
    from tests.replay.record_histories import settle, start

    inp = SlaEscalationInput(
        request_id=9003,
        sla_due_at=_due(60),
        department="ROADS",
        max_history_events=20,
        revision=REVISION,
    )
    handle = await start(ctx, "sla-escalation", inp, actor="system:triage")
    # The run looks at its length when a workflow task starts: four notes one by one make
    # tasks enough to pass 20 events (eight at once can fit in two tasks and stay under),
    # then a burst lands around the continue-as-new.
    for i in range(4):
        await handle.signal("add_note", NoteSignal(text=f"note {i}", actor=OPERATOR))
        await _until(handle, lambda s, n=i + 1: len(s.notes) == n)
    for i in range(4, 8):
        await handle.signal("add_note", NoteSignal(text=f"note {i}", actor=OPERATOR))
    await _until(handle, lambda s: s.generation >= 1 and len(s.notes) == 8)
    await handle.signal("request_resolved", ResolvedSignal(actor=OPERATOR))
    await settle(handle)
    return ctx.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)


async def triage_ok(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """OP-002: a triage with a correction; the SLA workflow is signal-with-started."""
    from tests.replay.record_histories import settle, start

    inp = TriageAssignmentInput(
        request_id=9101, department_id=1, assignee_id=1, corrections={"channel": "phone"}
    )
    handle = await start(ctx, "triage-assignment", inp, actor=OPERATOR)
    await settle(handle)
    return handle


async def triage_refused(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """An unknown request: the run fails with a business error, nothing written."""
    from tests.replay.record_histories import settle, start

    inp = TriageAssignmentInput(request_id=REFUSED_REQUEST, department_id=1, assignee_id=1)
    handle = await start(ctx, "triage-assignment", inp, actor=OPERATOR)
    await settle(handle, fails=True)
    return handle


async def reconcile(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """One reconciliation pass."""
    from tests.replay.record_histories import settle, start

    handle = await start(ctx, "sla-reconciler", ReconcileInput(), actor="system:sla-reconciler")
    await settle(handle)
    return handle


@dataclass(frozen=True)
class SlaScenario:
    """A scenario's workflow id, how to produce it, and whether it needs time skipping."""

    workflow_id: str
    run: Callable[[Ctx], Awaitable[WorkflowHandle[Any, Any]]]
    time_skipping: bool = False


SLA_SCENARIOS: list[SlaScenario] = [
    SlaScenario("sla:request:9001", sla_escalate_note),
    SlaScenario("sla:request:9002", sla_timeline, time_skipping=True),
    SlaScenario("sla:request:9003", sla_continue_as_new),
    SlaScenario("triage:request:9101", triage_ok),
    SlaScenario("triage:request:9102", triage_refused),
    SlaScenario("sla-reconciler:manual", reconcile),
]
