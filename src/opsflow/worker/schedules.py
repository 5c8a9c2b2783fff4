"""Create or update the Temporal Schedules the catalog declares."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from opsflow.catalog import RUNBOOKS, RunbookSpec
from opsflow.config import Settings
from opsflow.shared import ids

# A starter workflow waits for the run it starts, which has the runbook's execution timeout:
# it outlives that run by this much, so it sees and reports the run's end.
STARTER_TIMEOUT_SLACK = timedelta(minutes=30)


def build_schedule(spec: RunbookSpec, settings: Settings) -> Schedule:
    """Build the Temporal Schedule for one runbook (overlap skip, catch-up window).

    The action starts the runbook's workflow, or the schedule's starter workflow when it names
    one (``ScheduleSpec.workflow``).
    """
    sched = spec.schedule
    assert sched is not None
    actor = ids.schedule_actor(sched.id)
    if sched.settings_input is not None:
        inp = sched.settings_input(settings)
    else:
        inp = sched.make_input() if sched.make_input else spec.input()
    workflow = sched.workflow or spec.workflow
    timeout = spec.execution_timeout
    if sched.workflow is not None and timeout is not None:
        timeout += STARTER_TIMEOUT_SLACK
    return Schedule(
        action=ScheduleActionStartWorkflow(
            workflow.run,
            inp,
            # Temporal appends the scheduled time: "health-check-2026-11-22T02:05:00Z".
            id=sched.id,
            task_queue=settings.temporal_task_queue,
            execution_timeout=timeout,
            memo={ids.MEMO_ACTOR: actor, ids.MEMO_RUNBOOK: spec.name},
            typed_search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_RUNBOOK), spec.name),
                    SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_ACTOR), actor),
                    SearchAttributePair(
                        SearchAttributeKey.for_keyword(ids.SA_TENANT), ids.SYSTEM_TENANT
                    ),
                    SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_STATE), "scheduled"),
                ]
            ),
            static_summary=f"{spec.name} (schedule {sched.id})",
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=sched.interval)] if sched.interval else [],
            cron_expressions=([sched.cron] if sched.cron else []) + list(sched.fallback_crons),
            time_zone_name=settings.schedule_timezone,
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=sched.catchup_window
        ),
    )


async def sync_schedules(client: Client, settings: Settings) -> list[str]:
    """Create every catalog schedule, or update it in place; return the schedule ids."""
    done: list[str] = []
    for spec in RUNBOOKS.values():
        if spec.schedule is None:
            continue
        schedule = build_schedule(spec, settings)
        try:
            await client.create_schedule(spec.schedule.id, schedule)
        except ScheduleAlreadyRunningError:

            def _update(cur: ScheduleUpdateInput, s: Schedule = schedule) -> ScheduleUpdate:
                # Keep what operators set by hand (paused, notes).
                s.state = cur.description.schedule.state
                return ScheduleUpdate(schedule=s)

            await client.get_schedule_handle(spec.schedule.id).update(_update)
        done.append(spec.schedule.id)
    return done
