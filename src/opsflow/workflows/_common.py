"""Helpers every runbook workflow uses: actor, state, progress, the runs read model.

Pure workflow code: only ``temporalio.workflow``, the standard library and ``opsflow.shared``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from opsflow.shared import ids
    from opsflow.shared.common import AuditEventIn, Progress, RunRecord

STATE_KEY = SearchAttributeKey.for_keyword(ids.SA_STATE)
RUNBOOK_KEY = SearchAttributeKey.for_keyword(ids.SA_RUNBOOK)

# Platform bookkeeping (runs read model, audit) is idempotent and must not be lost: retry with
# backoff for as long as it takes, but never hammer a database that is down.
BOOKKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
BOOKKEEPING_TIMEOUT = timedelta(seconds=30)


def actor() -> str:
    """Return who started this run: the API caller, or ``system:<schedule-id>``."""
    value = workflow.memo_value(ids.MEMO_ACTOR, default="system:unknown", type_hint=str)
    return str(value)


def set_state(state: str) -> None:
    """Show the run's state in the Web UI (``OpsState``).

    Only runs started with opsflow's search attributes (by the API or a schedule) upsert them:
    a namespace without them registered (the time-skipping test server) would fail the task.
    """
    if workflow.info().typed_search_attributes.get(RUNBOOK_KEY) is None:
        return
    workflow.upsert_search_attributes([STATE_KEY.value_set(state)])


class RunbookWorkflow:
    """Base of runbook workflows: a ``progress`` query and the runs read model."""

    runbook: str = ""

    def __init__(self) -> None:
        self._progress = Progress()

    @workflow.query(name="progress")
    def progress(self) -> Progress:
        """Return the current step, with done/total where the step counts something."""
        return self._progress

    def step(self, step: str, message: str = "", done: int = 0, total: int = 0) -> None:
        """Move to a new step: query, Web UI current details."""
        self._progress = Progress(step=step, done=done, total=total, message=message)
        workflow.set_current_details(f"**{step}** {message}".strip())

    def run_record(
        self,
        status: str,
        inp: Any,
        *,
        result: Any = None,
        failure: str | None = None,
        figures: dict[str, Any] | None = None,
        tenant: str = ids.SYSTEM_TENANT,
    ) -> RunRecord:
        """Return this run's row of the ``runs`` read model, as of now."""
        info = workflow.info()
        return RunRecord(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            runbook=self.runbook,
            actor=actor(),
            status=status,
            tenant=tenant,
            input=asdict(inp) if inp is not None else {},
            result=asdict(result) if result is not None else None,
            failure=failure,
            figures=figures or {},
        )

    async def record_run(
        self,
        status: str,
        inp: Any,
        *,
        result: Any = None,
        failure: str | None = None,
        figures: dict[str, Any] | None = None,
        tenant: str = ids.SYSTEM_TENANT,
        local: bool = False,
    ) -> None:
        """Write this run's row of the ``runs`` read model (idempotent upsert).

        ``local=True`` runs it as a local activity: no server task of its own, for workflows
        that start by the thousand (the dev server's SQLite store is the limit).
        """
        execute = workflow.execute_local_activity if local else workflow.execute_activity
        await execute(
            "platform.record_run",
            self.run_record(
                status, inp, result=result, failure=failure, figures=figures, tenant=tenant
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"runs: {status}",
        )

    async def audit(
        self, action: str, target: str, outcome: str = "success", **details: Any
    ) -> None:
        """Append an audit event for this run (actor = who started it)."""
        info = workflow.info()
        await workflow.execute_activity(
            "platform.audit",
            AuditEventIn(
                actor=actor(),
                action=action,
                target=target,
                outcome=outcome,
                details=details,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"audit {action} {target}",
        )
