"""``triage-assignment``: validate, assign and prioritise a new request, then watch its SLA.

Seed 000, "Triage & Assignment": staff validate the channel metadata (each correction audited
``action=update``), assign a department and an assignee, set the priority and an optional SLA
override and attach response templates. In one transaction: an ``assignments`` row, status
``assigned`` and a timeline entry. Then the request's ``sla-escalation`` workflow is started or
told the due time (signal-with-start: triaging twice never makes two).

A refused input (unknown request, department or assignee, assignee outside the department,
request not new or closed) fails the run with a business error before anything is written; the
API waits for the outcome and answers 4xx.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from opsflow.shared import ids
    from opsflow.shared.errors import BUSINESS_ERROR_STATUS
    from opsflow.shared.triage_assignment import (
        AssignOutcome,
        AssignRequest,
        StartSla,
        TriageAssignmentInput,
        TriageAssignmentResult,
    )
    from opsflow.workflows._common import RunbookWorkflow, actor, set_state

STEP_TIMEOUT = timedelta(seconds=30)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
)


@workflow.defn(name="triage-assignment")
class TriageAssignment(RunbookWorkflow):
    """Triage of one request (workflow id ``triage:request:<id>``)."""

    runbook = "triage-assignment"

    @workflow.run
    async def run(self, inp: TriageAssignmentInput) -> TriageAssignmentResult:
        """Validate and assign in one transaction, then signal-with-start the SLA workflow."""
        info = workflow.info()
        who = actor()
        await self.record_run("running", inp)
        self.step("assigning", f"request {inp.request_id}")
        try:
            outcome: AssignOutcome = await workflow.execute_activity(
                "triage.assign",
                AssignRequest(inp=inp, actor=who, workflow_id=info.workflow_id, run_id=info.run_id),
                result_type=AssignOutcome,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=RETRY,
                summary=f"validate and assign request {inp.request_id}",
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type in BUSINESS_ERROR_STATUS:
                set_state("refused")
                self.step("refused", cause.message)
                await self.record_run("failed", inp, failure=cause.message)
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None
            await self.record_run("failed", inp, failure=str(cause or exc))
            raise
        set_state("assigned")
        sla_workflow_id: str | None = None
        if outcome.sla_due_at:
            self.step("sla", f"watching the SLA due {outcome.sla_due_at}")
            sla_workflow_id = await workflow.execute_activity(
                "triage.start_sla",
                StartSla(
                    request_id=inp.request_id,
                    sla_due_at=outcome.sla_due_at,
                    department=outcome.department,
                    actor=who,
                ),
                result_type=str,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=RETRY,
                summary=f"signal-with-start {ids.sla_workflow_id(inp.request_id)}",
            )
        result = TriageAssignmentResult(
            request_id=inp.request_id,
            assignment_id=outcome.assignment_id,
            status="assigned",
            department=outcome.department,
            assignee=outcome.assignee,
            priority=inp.priority,
            sla_due_at=outcome.sla_due_at,
            sla_workflow_id=sla_workflow_id,
            corrected=outcome.corrected,
        )
        self.step("done", f"assigned to {outcome.assignee} ({outcome.department})")
        await self.record_run("completed", inp, result=result)
        return result
