"""triage-assignment under the time-skipping server, activities mocked by name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.errors import CONFLICT
from opsflow.shared.triage_assignment import (
    AssignOutcome,
    AssignRequest,
    StartSla,
    TriageAssignmentInput,
    TriageAssignmentResult,
)
from opsflow.workflows.triage_assignment import TriageAssignment


@dataclass
class FakeTriage:
    refuse: str | None = None
    due: str | None = "2026-11-24T12:00:00+00:00"
    assigns: list[AssignRequest] = field(default_factory=list)
    sla: list[StartSla] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    def activities(self) -> list[Any]:
        @activity.defn(name="triage.assign")
        async def assign(req: AssignRequest) -> AssignOutcome:
            self.assigns.append(req)
            if self.refuse:
                raise ApplicationError(self.refuse, type=CONFLICT, non_retryable=True)
            return AssignOutcome(
                assignment_id=7,
                department="ROADS",
                assignee="ann",
                sla_due_at=req.inp.sla_due_at or self.due,
                corrected=sorted(req.inp.corrections),
            )

        @activity.defn(name="triage.start_sla")
        async def start_sla(s: StartSla) -> str:
            self.sla.append(s)
            return f"sla:request:{s.request_id}"

        @activity.defn(name="platform.record_run")
        async def record_run(r: RunRecord) -> None:
            self.runs.append(r)

        @activity.defn(name="platform.audit")
        async def audit(e: AuditEventIn) -> None:
            pass

        return [assign, start_sla, record_run, audit]


async def _run(env: WorkflowEnvironment, fake: FakeTriage, inp: TriageAssignmentInput) -> Any:
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        env.client, task_queue=tq, workflows=[TriageAssignment], activities=fake.activities()
    ):
        return await env.client.execute_workflow(
            TriageAssignment.run,
            inp,
            id=f"triage:request:test-{uuid.uuid4()}",
            task_queue=tq,
            memo={"actor": "token:oscar:operator"},
        )


async def test_assigns_then_signal_with_starts_the_sla(ts_env: WorkflowEnvironment) -> None:
    fake = FakeTriage()
    inp = TriageAssignmentInput(
        request_id=5, department_id=2, assignee_id=3, corrections={"channel": "phone"}
    )
    result: TriageAssignmentResult = await _run(ts_env, fake, inp)
    assert result.status == "assigned" and result.assignment_id == 7
    assert result.sla_workflow_id == "sla:request:5" and result.corrected == ["channel"]
    assert fake.assigns[0].actor == "token:oscar:operator"
    assert [(s.request_id, s.sla_due_at, s.actor) for s in fake.sla] == [
        (5, fake.due, "token:oscar:operator")
    ]
    assert [r.status for r in fake.runs] == ["running", "completed"]


async def test_no_due_time_means_no_sla_workflow(ts_env: WorkflowEnvironment) -> None:
    fake = FakeTriage(due=None)
    result = await _run(ts_env, fake, TriageAssignmentInput(5, 2, 3))
    assert result.sla_workflow_id is None and fake.sla == []


async def test_refusal_fails_with_the_business_error_type(ts_env: WorkflowEnvironment) -> None:
    fake = FakeTriage(refuse="request 5 is closed")
    with pytest.raises(WorkflowFailureError) as info:
        await _run(ts_env, fake, TriageAssignmentInput(5, 2, 3))
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == CONFLICT and cause.message == "request 5 is closed"
    assert len(fake.assigns) == 1  # non-retryable: tried once
    assert fake.sla == []
    assert [r.status for r in fake.runs] == ["running", "failed"]
