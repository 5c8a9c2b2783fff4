"""Bind workflow id, run id, runbook and actor to every log line an activity writes.

The actor lives in the workflow's memo, which activities cannot read; the workflow side of this
interceptor copies it into a header of each activity call, and the activity side binds it, with
the ids from ``activity.info()``, to structlog's context for the duration of the call.
"""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from opsflow.shared import ids

ACTOR_HEADER = "opsflow-actor"


class _ActivityLogContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        actor = None
        payload = (input.headers or {}).get(ACTOR_HEADER)
        if payload is not None:
            actor = activity.payload_converter().from_payload(payload, str)
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            runbook=info.workflow_type,
            activity=info.activity_type,
            attempt=info.attempt,
            actor=actor,
        ):
            return await super().execute_activity(input)


class _ActorOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        actor = workflow.memo_value(ids.MEMO_ACTOR, default=None, type_hint=str)
        if actor is not None:
            input.headers = {
                **input.headers,
                ACTOR_HEADER: workflow.payload_converter().to_payloads([actor])[0],
            }
        return super().start_activity(input)


class _ActorInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_ActorOutbound(outbound))


class LogContextInterceptor(Interceptor):
    """Worker interceptor: log context for activities, actor header from workflows."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap activity execution."""
        return _ActivityLogContext(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        """Wrap workflows so their activity calls carry the actor."""
        return _ActorInbound
