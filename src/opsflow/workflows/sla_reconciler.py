"""``sla-reconciler``: every open request with an SLA due time has its ``sla-escalation`` run.

Scheduled every 5 minutes. Starts the workflow of each open request with ``sla_due_at`` that
has none, re-arms those whose due time changed outside opsflow, and ends the runs of requests
resolved or closed outside opsflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from opsflow.shared.sla_escalation import RECONCILER_TYPE, ReconcileInput, ReconcileResult
    from opsflow.workflows._common import RunbookWorkflow, set_state


@workflow.defn(name=RECONCILER_TYPE)
class SlaReconciler(RunbookWorkflow):
    """One reconciliation pass."""

    runbook = RECONCILER_TYPE

    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileResult:
        """Compare, then start, re-arm and end runs; record the figures."""
        await self.record_run("running", inp)
        self.step("reconciling", "open requests against SLA workflows")
        result: ReconcileResult = await workflow.execute_activity(
            "sla.reconcile",
            inp,
            result_type=ReconcileResult,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="arm missing SLA workflows, end orphaned ones",
        )
        set_state("done")
        self.step(
            "done",
            f"{result.started} started, {result.rearmed} re-armed, {result.ended} ended",
        )
        figures = {
            "open_requests": result.open_requests,
            "started": result.started,
            "rearmed": result.rearmed,
            "ended": result.ended,
            "failed": result.failed,
        }
        await self.record_run("completed", inp, result=result, figures=figures)
        return result
