"""``sla-escalation``: one durable workflow per open request with an SLA due time.

Seed 000, "Escalating SLA Breaches": at ``sla_due_at - 24h`` the request joins the SLA
watchlist; a supervisor's ``escalate`` notifies the department's supervisors by mail and SMS,
sets ``priority=critical`` and expedites the request; past ``sla_due_at`` and unresolved, the
status changes once to ``waiting_external`` or ``in_progress`` with a reason; follow-up notes go
to the request timeline. ``request_resolved`` ends the workflow; ``sla_changed`` re-arms the
timers. Long-lived runs continue-as-new with their state and the signals not yet handled.

Every signal is queued and handled in order by the main loop, so handlers stay synchronous and
nothing is lost across continue-as-new.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    from opsflow.shared import ids
    from opsflow.shared.common import RunRecord
    from opsflow.shared.sla_escalation import (
        BREACHED,
        ESCALATED,
        OK,
        RESOLVED,
        REVISION,
        WATCH,
        WATCH_HOURS,
        WORKFLOW_TYPE,
        BreachOutcome,
        BreachRequest,
        EscalateRequest,
        EscalateSignal,
        NoteRequest,
        NoteSignal,
        RequestFacts,
        ResolvedSignal,
        SlaCarry,
        SlaChangedSignal,
        SlaEscalationInput,
        SlaEscalationRecord,
        SlaEscalationResult,
        SlaEvent,
        SlaNote,
        SlaState,
        SlaSync,
        SupervisorNotice,
    )
    from opsflow.workflows._common import (
        RUNBOOK_KEY,
        STATE_KEY,
        RunbookWorkflow,
        set_state,
    )

SLA_STATE_KEY = SearchAttributeKey.for_keyword(ids.SA_SLA_STATE)
SLA_DUE_KEY = SearchAttributeKey.for_datetime(ids.SA_SLA_DUE_AT)
REQUEST_KEY = SearchAttributeKey.for_keyword(ids.SA_REQUEST_ID)
DEPARTMENT_KEY = SearchAttributeKey.for_keyword(ids.SA_DEPARTMENT)

STEP_TIMEOUT = timedelta(seconds=30)
# The escalation step sends mail (SMTP timeout 30 s) and SMS (10 s) beside the request change.
ESCALATE_TIMEOUT = timedelta(seconds=60)
# Database steps must eventually happen: retry with backoff, without limit.
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# A notification that fails is retried and never lost (the ledger makes retries safe).
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)


# Runs that record this marker take fewer steps: the runs row with the watchlist row (one
# local activity where there were two); an escalation is one activity, ``sla.escalate``, that
# changes the request, writes the watchlist row and sends the mail and the SMS (three
# activities and a local activity before); search attributes go in one upsert of only what
# changed (two upserts before). Histories without it replay the earlier steps, so runs started
# by an earlier worker carry on unchanged.
LEAN_PATCH = "sla-one-step-bookkeeping"

# Runs that record this marker (all of them lean) handle a signal in one workflow task: the
# escalation and a note are local activities, so their result needs no second workflow task
# and no activity task goes through the server; and the SLA's next deadline is one durable
# timer that a signal leaves alone (a signal used to cancel it and start a new one). An
# escalation was 13 history events and two workflow tasks, now 6 events and one task. Runs
# without it keep the activities and the timer per wait.
ONE_TASK_PATCH = "sla-one-task-per-signal"

# Runs started with ``SlaEscalationInput.revision`` >= REVISION (opsflow's starters and every
# continue-as-new give it) take both steps above without asking for the markers; runs started
# without it ask, and record them, as before. Each marker is an event and an upsert of
# ``TemporalChangeVersion``, a visibility write on the server.


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


# Not sandboxed: this is the workflow that lives in tens of thousands (one per open request),
# and the sandbox re-imports this module for every instance it creates - on every cache miss
# of an escalation among 20,000 workflows - and keeps a module copy per cached instance. On
# the SLA bench (3,000 per side, 2 cores) dropping it armed 29% faster (70.4 -> 50.2 s),
# one escalation's call -> mail p50 fell from 102 to 65 ms, a restarted worker served 100
# pending escalations in 5.7 s instead of 8.1 s and used 68 MB less. The module keeps the
# house rules the sandbox would enforce (only temporalio, the standard library and
# opsflow.shared; time from workflow.now()), and the replay tests over saved histories
# check its determinism.
@workflow.defn(name=WORKFLOW_TYPE, sandboxed=False)
class SlaEscalation(RunbookWorkflow):
    """The SLA of one request (workflow id ``sla:request:<id>``)."""

    runbook = WORKFLOW_TYPE

    def __init__(self) -> None:
        super().__init__()
        self._events: list[SlaEvent] = []
        self._carry = SlaCarry()
        self._request_id = 0
        self._due = ""
        self._department = ""
        self._lean = True
        self._one_task = True
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: datetime | None = None

    # ------------------------------------------------------------------------------ signals

    def _push(self, event: SlaEvent) -> None:
        self._carry.seq += 1
        event.seq = self._carry.seq
        self._events.append(event)

    @workflow.signal(name="escalate")
    def escalate(self, sig: EscalateSignal) -> None:
        """Supervisor escalation (the API lets only supervisors send it)."""
        self._push(SlaEvent(kind="escalate", actor=sig.actor, text=sig.reason))

    @workflow.signal(name="add_note")
    def add_note(self, sig: NoteSignal) -> None:
        """Queue a manual follow-up note for the request timeline."""
        self._push(SlaEvent(kind="note", actor=sig.actor, text=sig.text))

    @workflow.signal(name="request_resolved")
    def request_resolved(self, sig: ResolvedSignal | None = None) -> None:
        """End cleanly: the request is resolved or closed."""
        self._push(SlaEvent(kind="resolved", actor=sig.actor if sig else "unknown"))

    @workflow.signal(name="sla_changed")
    def sla_changed(self, sig: SlaChangedSignal) -> None:
        """Re-arm the timers: the due time moved."""
        self._push(SlaEvent(kind="sla_changed", actor=sig.actor, new_due_at=sig.new_due_at))

    @workflow.query(name="sla_state")
    def sla_state(self) -> SlaState:
        """Due time, state, escalations and notes."""
        watch_at = ""
        if self._due:
            watch_at = (_parse(self._due) - timedelta(hours=WATCH_HOURS)).isoformat()
        return SlaState(
            request_id=self._request_id,
            due_at=self._due,
            state=self._carry.state,
            watch_at=watch_at,
            breached_at=self._carry.breached_at,
            escalations=list(self._carry.escalations),
            notes=list(self._carry.notes),
            generation=self._carry.generation,
        )

    # ---------------------------------------------------------------------------------- run

    @workflow.run
    async def run(self, inp: SlaEscalationInput) -> SlaEscalationResult:
        """Sleep on the SLA's timers and handle signals until the request is resolved."""
        if inp.revision >= REVISION:
            # Started for these steps: no patch marker to ask for (nor to pay for).
            self._lean = self._one_task = True
        else:
            self._lean = workflow.patched(LEAN_PATCH)
            self._one_task = self._lean and workflow.patched(ONE_TASK_PATCH)
        self._request_id = inp.request_id
        self._due = _parse(inp.sla_due_at).isoformat()
        self._department = inp.department
        if inp.carry is not None:
            self._carry = inp.carry
            # Signals received before the previous run continued as new come first.
            self._events = list(inp.carry.pending) + self._events
            self._carry.pending = []
        self._carry.generation = inp.carry.generation + 1 if inp.carry else 0
        if self._lean:
            facts = await self._sync(run=self.run_record("running", inp))
        else:
            await self.record_run("running", inp, local=True)
            facts = await self._sync()
        if not facts.exists or facts.status in ("resolved", "closed"):
            return await self._finish(inp, f"request {facts.status or 'missing'}")
        if facts.department:
            self._department = facts.department
        self._publish()

        while True:
            if self._events:
                event = self._events.pop(0)
                if event.kind == "resolved":
                    return await self._finish(inp, "request_resolved", event.actor)
                await self._handle(event)
                continue
            if self._should_continue_as_new(inp):
                # Handlers are synchronous; this only makes sure none is mid-flight.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._one_task:
                    # The server refuses a continue-as-new while signals it has not shown
                    # the worker are waiting, and with it the results of the local
                    # activities of the same workflow task: they would run again. A timer
                    # ends this task first, so the notes and escalations just handled stay.
                    await workflow.sleep(
                        timedelta(milliseconds=1), summary="before continue-as-new"
                    )
                await self.record_run("continued_as_new", inp, local=True)
                if not self._events:
                    self._carry.pending = []
                    self._disarm()
                    workflow.continue_as_new(
                        SlaEscalationInput(
                            request_id=inp.request_id,
                            sla_due_at=self._due,
                            department=self._department,
                            carry=self._carry,
                            max_history_events=inp.max_history_events,
                            revision=REVISION,  # the next run starts on today's steps
                        )
                    )
                continue
            deadline, what = self._next_deadline()
            self.step(self._carry.state, f"next: {what} at {deadline.isoformat()}" if what else "")
            if self._one_task:
                due_now = await self._wait_for_signal_or(deadline if what else None, what)
            else:
                try:
                    timeout = max(deadline - workflow.now(), timedelta(0)) if what else None
                    await workflow.wait_condition(lambda: bool(self._events), timeout=timeout)
                    due_now = False
                except TimeoutError:
                    due_now = True
            if due_now:
                if what == "watch":
                    await self._enter_watch()
                elif what == "breach":
                    await self._breach()

    async def _wait_for_signal_or(self, deadline: datetime | None, what: str) -> bool:
        """Wait for a signal or ``deadline``; True when the deadline came first.

        The deadline has one durable timer for as long as it stands: signals handled in
        between leave it running, a new deadline (watch -> breach, ``sla_changed``)
        replaces it.
        """
        if deadline is not None and deadline <= workflow.now():
            self._disarm()
            return True
        if deadline != self._timer_at or self._timer is None:
            self._disarm()
            if deadline is not None:
                self._timer_at = deadline
                self._timer = asyncio.create_task(
                    workflow.sleep(deadline - workflow.now(), summary=f"{what} at {deadline}")
                )
        timer = self._timer
        await workflow.wait_condition(
            lambda: bool(self._events) or (timer is not None and timer.done())
        )
        if self._events:
            return False
        self._timer, self._timer_at = None, None
        return True

    def _disarm(self) -> None:
        """Cancel the deadline's timer, if one is running."""
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer, self._timer_at = None, None

    def _should_continue_as_new(self, inp: SlaEscalationInput) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= inp.max_history_events
        )

    def _next_deadline(self) -> tuple[datetime, str]:
        due = _parse(self._due)
        if self._carry.state == OK:
            return due - timedelta(hours=WATCH_HOURS), "watch"
        if self._carry.breached_due != self._due:
            return due, "breach"
        return due, ""

    async def _enter_watch(self) -> None:
        if self._carry.state == OK:
            self._carry.state = WATCH
            await self._sync()
            self._publish()

    async def _breach(self) -> None:
        info = workflow.info()
        self._carry.breached_due = self._due
        self._carry.breached_at = workflow.now().isoformat()
        outcome: BreachOutcome = await workflow.execute_activity(
            "sla.breach",
            BreachRequest(
                request_id=self._request_id,
                due_at=self._due,
                workflow_id=info.workflow_id,
                actor="system:sla-escalation",
            ),
            result_type=BreachOutcome,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=DB_RETRY,
            summary=f"SLA breached: request {self._request_id} due {self._due}",
        )
        if self._carry.state != ESCALATED:
            self._carry.state = BREACHED
        await self._sync()
        self._publish()
        if outcome.changed:
            key = f"{info.workflow_id}/breach/{self._due}"
            subject = f"[opsflow] SLA breached: request {self._request_id}"
            body = (
                f"Request {self._request_id} passed its SLA due time {self._due} unresolved.\n"
                f"Status: {outcome.old_status} -> {outcome.new_status}\n"
                f"Reason: {outcome.reason}\n"
            )
            await self._notify(key, subject, body, sms=False)

    async def _handle(self, event: SlaEvent) -> None:
        info = workflow.info()
        now = workflow.now().isoformat()
        if event.kind == "escalate":
            key = f"{info.workflow_id}/escalate/{event.seq}"
            subject = f"[opsflow] ESCALATED: request {self._request_id} (SLA due {self._due})"
            body = (
                f"{event.actor} escalated request {self._request_id}.\n"
                f"Reason: {event.text}\nSLA due: {self._due}\n"
                "Priority is now critical and the request is expedited.\n"
            )
            request = EscalateRequest(
                request_id=self._request_id,
                reason=event.text,
                actor=event.actor,
                workflow_id=info.workflow_id,
                key=key,
            )
            if self._lean:
                # One step: the request change, the watchlist row and both notifications
                # (each idempotent on its own key, so a retry repeats only what failed).
                request.sync = SlaSync(  # the watchlist row as it will be afterwards
                    request_id=self._request_id,
                    workflow_id=info.workflow_id,
                    due_at=self._due,
                    state=ESCALATED,
                    escalations=len(self._carry.escalations) + 1,
                    breached_at=self._carry.breached_at,
                )
                request.notices = self._notices(key, subject, body, sms=True)
                await self._step(
                    "sla.escalate",
                    request,
                    ESCALATE_TIMEOUT,
                    NOTIFY_RETRY,
                    f"escalate request {self._request_id}: priority critical, expedited, "
                    "supervisors told by mail and SMS",
                )
            else:
                # Runs started before the patch: the request change and both notifications
                # as three activities side by side, then the read model.
                await asyncio.gather(
                    workflow.execute_activity(
                        "sla.escalate",
                        request,
                        start_to_close_timeout=STEP_TIMEOUT,
                        retry_policy=DB_RETRY,
                        summary=f"escalate request {self._request_id}: priority critical, "
                        "expedited",
                    ),
                    self._notify(key, subject, body, sms=True),
                )
            self._carry.escalations.append(
                SlaEscalationRecord(reason=event.text, actor=event.actor, at=now)
            )
            self._carry.state = ESCALATED
            if not self._lean:
                await self._sync()
            self._publish()
        elif event.kind == "note":
            await self._step(
                "sla.add_note",
                NoteRequest(
                    request_id=self._request_id,
                    text=event.text,
                    actor=event.actor,
                    workflow_id=info.workflow_id,
                    key=f"{info.workflow_id}/note/{event.seq}",
                ),
                STEP_TIMEOUT,
                DB_RETRY,
                f"note on request {self._request_id}",
            )
            self._carry.notes.append(SlaNote(text=event.text, actor=event.actor, at=now))
        elif event.kind == "sla_changed" and event.new_due_at:
            new_due = _parse(event.new_due_at).isoformat()
            if new_due == self._due:
                return
            self._due = new_due
            if self._carry.state in (WATCH, BREACHED):
                # Re-arm: the state follows the new due time; a new due time can be breached.
                self._carry.state = OK
            if (
                self._carry.state == OK
                and _parse(new_due) - timedelta(hours=WATCH_HOURS) <= workflow.now()
            ):
                self._carry.state = WATCH
            await self._sync()
            self._publish()

    async def _step(
        self, name: str, arg: Any, limit: timedelta, retry: RetryPolicy, summary: str
    ) -> None:
        """Run a signal's step: a local activity in one-task runs, else an activity.

        The local activity runs in the signal's own workflow task with the same timeout and
        retry policy; its result needs no second workflow task.
        """
        if self._one_task:
            await workflow.execute_local_activity(
                name, arg, start_to_close_timeout=limit, retry_policy=retry, summary=summary
            )
        else:
            await workflow.execute_activity(
                name, arg, start_to_close_timeout=limit, retry_policy=retry, summary=summary
            )

    def _notices(self, key: str, subject: str, body: str, *, sms: bool) -> list[SupervisorNotice]:
        return [
            SupervisorNotice(
                request_id=self._request_id,
                channel=channel,
                idempotency_key=f"{key}/{channel}",
                subject=subject,
                body=body,
            )
            for channel in (["mail", "sms"] if sms else ["mail"])
        ]

    async def _notify(self, key: str, subject: str, body: str, *, sms: bool) -> None:
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    "sla.notify_supervisors",
                    notice,
                    result_type=int,
                    start_to_close_timeout=STEP_TIMEOUT,
                    retry_policy=NOTIFY_RETRY,
                    summary=f"notify supervisors by {notice.channel}",
                )
                for notice in self._notices(key, subject, body, sms=sms)
            )
        )

    async def _sync(self, run: RunRecord | None = None) -> RequestFacts:
        # A local activity, like the runs row (record_run(local=True)): runs at each change.
        facts: RequestFacts = await workflow.execute_local_activity(
            "sla.sync",
            SlaSync(
                request_id=self._request_id,
                workflow_id=workflow.info().workflow_id,
                due_at=self._due,
                state=self._carry.state,
                escalations=len(self._carry.escalations),
                breached_at=self._carry.breached_at,
                run=run,
            ),
            result_type=RequestFacts,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=DB_RETRY,
            summary=f"watchlist: request {self._request_id} {self._carry.state}",
        )
        return facts

    def _publish(self) -> None:
        """Show the SLA in the Web UI (only where opsflow's attributes are registered)."""
        if not self._lean:
            set_state(self._carry.state)
        current = workflow.info().typed_search_attributes
        if current.get(RUNBOOK_KEY) is None:
            return
        updates: list[SearchAttributeUpdate[Any]] = [
            SLA_STATE_KEY.value_set(self._carry.state),
            SLA_DUE_KEY.value_set(_parse(self._due)),
            REQUEST_KEY.value_set(str(self._request_id)),
            DEPARTMENT_KEY.value_set(self._department or "-"),
        ]
        if not self._lean:
            workflow.upsert_search_attributes(updates)
            return
        # One upsert of what changed (each one is a visibility write on the server); the
        # starter sets the first values, so arming a request usually upserts nothing.
        updates.insert(0, STATE_KEY.value_set(self._carry.state))
        changed = [u for u in updates if current.get(u.key) != u.value]
        if changed:
            workflow.upsert_search_attributes(changed)

    async def _finish(
        self, inp: SlaEscalationInput, ended_by: str, by: str = ""
    ) -> SlaEscalationResult:
        self._disarm()  # timers cancelled: nothing is left armed after the end
        breached = bool(self._carry.breached_due)
        self._carry.state = RESOLVED
        result = SlaEscalationResult(
            request_id=self._request_id,
            state=RESOLVED,
            due_at=self._due,
            breached=breached,
            escalations=len(self._carry.escalations),
            notes=len(self._carry.notes),
            ended_by=ended_by,
        )
        figures = {"escalations": result.escalations, "breached": breached}
        if self._lean:
            await self._sync(run=self.run_record("completed", inp, result=result, figures=figures))
        else:
            await self._sync()
        self._publish()
        self.step("done", f"ended by {ended_by}" + (f" ({by})" if by else ""))
        if self._lean:
            return result
        await self.record_run(
            "completed",
            inp,
            result=result,
            figures=figures,
        )
        return result
