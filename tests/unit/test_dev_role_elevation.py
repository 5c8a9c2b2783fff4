"""dev-role-elevation under the time-skipping server, activities mocked by name."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.dev_role_elevation import (
    AdminNotice,
    DeveloperAction,
    DeveloperActions,
    DeveloperActionsQuery,
    DevRoleElevationInput,
    DevRoleElevationResult,
    DevRoleStatus,
    DisableSignal,
    GrantRequest,
    RevokeOutcome,
    RevokeRequest,
)
from opsflow.workflows.dev_role_elevation import DevRoleElevation


@dataclass
class FakeApp:
    """In-memory stand-in for app.settings, mail and the activity log."""

    allow: bool = False
    grants: list[GrantRequest] = field(default_factory=list)
    revokes: list[RevokeRequest] = field(default_factory=list)
    mails: list[AdminNotice] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    fail_notify_granted: bool = False

    def activities(self) -> list[object]:
        @activity.defn(name="dev_role.grant")
        async def grant(req: GrantRequest) -> None:
            self.grants.append(req)
            self.allow = True

        @activity.defn(name="dev_role.revoke")
        async def revoke(req: RevokeRequest) -> RevokeOutcome:
            self.revokes.append(req)
            changed = self.allow
            self.allow = False
            return RevokeOutcome(changed=changed)

        @activity.defn(name="dev_role.notify_admins")
        async def notify(n: AdminNotice) -> int:
            if self.fail_notify_granted and n.idempotency_key.endswith("/granted"):
                from temporalio.exceptions import ApplicationError

                raise ApplicationError("smtp down", non_retryable=True)
            self.mails.append(n)
            return 2

        @activity.defn(name="dev_role.developer_actions")
        async def actions(q: DeveloperActionsQuery) -> DeveloperActions:
            a = DeveloperAction(q.since, "dev1", "pipeline.update", "pipeline:7")
            return DeveloperActions(actions=[a], total=1)

        @activity.defn(name="dev_role.record_review")
        async def review(r: DevRoleElevationResult) -> None:
            pass

        @activity.defn(name="platform.record_run")
        async def record_run(r: RunRecord) -> None:
            self.runs.append(r)

        @activity.defn(name="platform.audit")
        async def audit(e: AuditEventIn) -> None:
            pass

        return [grant, revoke, notify, actions, review, record_run, audit]


async def _start(env: WorkflowEnvironment, tq: str, hours: int = 2) -> object:
    return await env.client.start_workflow(
        DevRoleElevation.run,
        DevRoleElevationInput(reason="INC-1 hot fix", hours=hours),
        id=f"dev-role-elevation:test-{uuid.uuid4()}",
        task_queue=tq,
        memo={"actor": "token:alice(admin)"},
    )


async def _wait_active(handle: object) -> DevRoleStatus:
    status = DevRoleStatus(state="?", environment="")
    for _ in range(100):
        status = await handle.query(DevRoleElevation.status)  # type: ignore[attr-defined]
        if status.state == "active":
            break
        await asyncio.sleep(0.05)
    return status


async def test_timer_expiry_revokes_and_reports(ts_env: WorkflowEnvironment) -> None:
    fake = FakeApp()
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        ts_env.client, task_queue=tq, workflows=[DevRoleElevation], activities=fake.activities()
    ):
        handle = await _start(ts_env, tq, hours=24)
        result = await handle.result()  # type: ignore[attr-defined]
    assert result.ended_by == "timer"
    assert fake.allow is False
    assert len(fake.grants) == 1 and len(fake.revokes) == 1
    assert fake.revokes[0].actor == "system:timer"
    assert result.granted_by == "token:alice(admin)"
    # The window lasted the full 24 hours of workflow time.
    from datetime import datetime

    span = datetime.fromisoformat(result.ended_at) - datetime.fromisoformat(result.granted_at)
    assert timedelta(hours=24) <= span < timedelta(hours=24, minutes=1)
    assert result.developer_action_count == 1
    assert [m.idempotency_key.rsplit("/", 1)[1] for m in fake.mails] == ["granted", "revoked"]
    assert [r.status for r in fake.runs] == ["running", "completed"]


async def test_disable_ends_early(ts_env: WorkflowEnvironment) -> None:
    fake = FakeApp()
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        ts_env.client, task_queue=tq, workflows=[DevRoleElevation], activities=fake.activities()
    ):
        handle = await _start(ts_env, tq, hours=72)
        # Let the grant happen before the signal.
        status = await _wait_active(handle)
        assert status.state == "active" and status.granted_by == "token:alice(admin)"
        await handle.signal("disable", DisableSignal(actor="token:bob(admin)"))  # type: ignore[attr-defined]
        result = await handle.result()  # type: ignore[attr-defined]
    assert result.ended_by == "disable"
    assert result.disabled_by == "token:bob(admin)"
    assert fake.revokes[0].actor == "token:bob(admin)"
    assert fake.allow is False


async def test_cancellation_still_revokes(ts_env: WorkflowEnvironment) -> None:
    fake = FakeApp()
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        ts_env.client, task_queue=tq, workflows=[DevRoleElevation], activities=fake.activities()
    ):
        handle = await _start(ts_env, tq, hours=5)
        await _wait_active(handle)
        await handle.cancel()  # type: ignore[attr-defined]
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()  # type: ignore[attr-defined]
    assert isinstance(err.value.cause, CancelledError)
    assert fake.allow is False
    assert [r.ended_by for r in fake.revokes] == ["cancel"]
    assert fake.runs[-1].status == "canceled"
    assert fake.runs[-1].result is not None
    assert fake.runs[-1].result["developer_action_count"] == 1


async def test_failure_after_grant_still_revokes(ts_env: WorkflowEnvironment) -> None:
    fake = FakeApp(fail_notify_granted=True)
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        ts_env.client, task_queue=tq, workflows=[DevRoleElevation], activities=fake.activities()
    ):
        handle = await _start(ts_env, tq)
        with pytest.raises(WorkflowFailureError):
            await handle.result()  # type: ignore[attr-defined]
    assert fake.allow is False
    assert [r.ended_by for r in fake.revokes] == ["failure"]
    assert fake.runs[-1].status == "failed"
