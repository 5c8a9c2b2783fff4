"""Activities log with the run's workflow id, run id, runbook and actor bound."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import structlog
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from opsflow.worker.interceptors import LogContextInterceptor

seen: list[dict[str, Any]] = []


@activity.defn(name="probe.context")
async def probe() -> None:
    seen.append(structlog.contextvars.get_contextvars())


@workflow.defn(name="log-context-probe")
class Probe:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(probe, start_to_close_timeout=timedelta(seconds=10))


async def test_activity_log_context_carries_ids_and_actor(ts_env: WorkflowEnvironment) -> None:
    tq = f"tq-{uuid.uuid4()}"
    wid = f"probe:{uuid.uuid4()}"
    async with Worker(
        ts_env.client,
        task_queue=tq,
        workflows=[Probe],
        activities=[probe],
        interceptors=[LogContextInterceptor()],
    ):
        handle = await ts_env.client.start_workflow(
            Probe.run, id=wid, task_queue=tq, memo={"actor": "token:carol:admin"}
        )
        await handle.result()
    ctx = seen[-1]
    assert ctx["workflow_id"] == wid
    assert ctx["run_id"] == handle.result_run_id
    assert ctx["runbook"] == "log-context-probe"
    assert ctx["actor"] == "token:carol:admin"
    # Nothing leaks into the context of code running after the activity.
    assert "workflow_id" not in structlog.contextvars.get_contextvars()
