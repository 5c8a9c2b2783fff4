"""``dev-role-elevation``: the developer role in production for N hours, revoke guaranteed.

Seed 003, "Developer Role Management" and "Developer Role Misuse in Production": an admin
enables the developer role in production for a bounded time; it is fully audited, notifies all
admins and expires on its own. Whatever ends the window — the timer, the ``disable`` signal,
cancellation or a failure — the setting is turned off, audited and announced, and the result
lists what developers did while it was on (the seed's misuse review).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from opsflow.shared.dev_role_elevation import (
        AdminNotice,
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
    from opsflow.workflows._common import RunbookWorkflow, actor, set_state

# Turning the grant off must eventually happen whatever is down: retry without limit.
REVOKE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)
MAIL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=20,
)
STEP_TIMEOUT = timedelta(seconds=60)


@workflow.defn(name="dev-role-elevation")
class DevRoleElevation(RunbookWorkflow):
    """One grant window per environment (workflow id ``dev-role-elevation:<environment>``)."""

    runbook = "dev-role-elevation"

    def __init__(self) -> None:
        super().__init__()
        self._disable: DisableSignal | None = None
        self._status = DevRoleStatus(state="starting", environment="")

    @workflow.signal(name="disable")
    def disable(self, sig: DisableSignal) -> None:
        """End the window early (admins only, checked by the API)."""
        if self._disable is None:
            self._disable = sig

    @workflow.query(name="status")
    def status(self) -> DevRoleStatus:
        """Return where the window stands."""
        return self._status

    @workflow.run
    async def run(self, inp: DevRoleElevationInput) -> DevRoleElevationResult:
        """Grant, wait for the timer or ``disable``, then always revoke and review."""
        info = workflow.info()
        granted_by = actor()
        granted_at = workflow.now()
        expires_at = granted_at + timedelta(hours=inp.hours)
        self._status = DevRoleStatus(
            state="granting",
            environment=inp.environment,
            granted_by=granted_by,
            expires_at=expires_at.isoformat(),
        )
        await self.record_run("running", inp)

        ended_by = "failure"
        error: BaseException | None = None
        try:
            self.step("granting", f"developer role in {inp.environment} for {inp.hours} h")
            await workflow.execute_activity(
                "dev_role.grant",
                GrantRequest(
                    environment=inp.environment,
                    hours=inp.hours,
                    reason=inp.reason,
                    actor=granted_by,
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                    granted_at=granted_at.isoformat(),
                    expires_at=expires_at.isoformat(),
                ),
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=REVOKE_RETRY,
                summary=f"enable developer role in {inp.environment} until {expires_at:%Y-%m-%d %H:%M}Z",  # noqa: E501
            )
            set_state("active")
            self._status.state = "active"
            await self._notify(
                "granted",
                f"[opsflow] Developer role ENABLED in {inp.environment} for {inp.hours} h",
                f"{granted_by} enabled the developer role in {inp.environment}.\n"
                f"Reason: {inp.reason}\nExpires at: {expires_at.isoformat()}\n"
                f"Workflow: {info.workflow_id}\n",
            )
            self.step("active", f"expires {expires_at.isoformat()}")
            try:
                await workflow.wait_condition(
                    lambda: self._disable is not None,
                    timeout=max(expires_at - workflow.now(), timedelta(0)),
                )
                ended_by = "disable"
            except TimeoutError:
                ended_by = "timer"
        except asyncio.CancelledError as exc:
            ended_by, error = "cancel", exc
        except Exception as exc:
            ended_by, error = "failure", exc

        result = await self._end(
            inp, granted_by, granted_at.isoformat(), expires_at.isoformat(), ended_by
        )
        if error is not None:
            await self.record_run(
                "canceled" if ended_by == "cancel" else "failed",
                inp,
                result=result,
                failure=str(error) or type(error).__name__,
                figures={"developer_actions": result.developer_action_count},
            )
            raise error
        await self.record_run(
            "completed",
            inp,
            result=result,
            figures={"developer_actions": result.developer_action_count},
        )
        return result

    async def _end(
        self,
        inp: DevRoleElevationInput,
        granted_by: str,
        granted_at: str,
        expires_at: str,
        ended_by: str,
    ) -> DevRoleElevationResult:
        """Turn the grant off, announce it and collect what developers did."""
        info = workflow.info()
        self.step("revoking", f"window ended by {ended_by}")
        ended_at = workflow.now().isoformat()
        disabled_by = self._disable.actor if self._disable else None
        outcome: RevokeOutcome = await workflow.execute_activity(
            "dev_role.revoke",
            RevokeRequest(
                environment=inp.environment,
                # Who ended it: the admin who disabled it, else the system (timer, cancel).
                actor=disabled_by if disabled_by else f"system:{ended_by}",
                workflow_id=info.workflow_id,
                ended_by=ended_by,
                ended_at=ended_at,
            ),
            result_type=RevokeOutcome,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=REVOKE_RETRY,
            summary=f"turn developer role off in {inp.environment} ({ended_by})",
        )
        set_state("revoked")
        self._status.state = "revoked"
        self._status.ended_by = ended_by
        self.step("reviewing", "collecting developer actions of the window")
        actions: DeveloperActions = await workflow.execute_activity(
            "dev_role.developer_actions",
            DeveloperActionsQuery(since=granted_at, until=ended_at),
            result_type=DeveloperActions,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=REVOKE_RETRY,
            summary="review developer actions of the window",
        )
        if outcome.changed:
            await self._notify(
                "revoked",
                f"[opsflow] Developer role DISABLED in {inp.environment} ({ended_by})",
                f"The developer role in {inp.environment} is off again.\n"
                f"Ended by: {ended_by}" + (f" ({disabled_by})" if disabled_by else "") + "\n"
                f"Window: {granted_at} .. {ended_at}\n"
                f"Developer actions during the window: {actions.total}\n"
                + "".join(
                    f"  {a.occurred_at} {a.user} {a.action} {a.target}\n"
                    for a in actions.actions[:50]
                ),
            )
        result = DevRoleElevationResult(
            environment=inp.environment,
            granted_by=granted_by,
            granted_at=granted_at,
            expires_at=expires_at,
            ended_at=ended_at,
            ended_by=ended_by,
            disabled_by=disabled_by,
            developer_actions=actions.actions,
            developer_action_count=actions.total,
        )
        await workflow.execute_activity(
            "dev_role.record_review",
            result,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=REVOKE_RETRY,
            summary=f"record review: {actions.total} developer actions",
        )
        self.step("done", f"ended by {ended_by}; {actions.total} developer actions")
        return result

    async def _notify(self, what: str, subject: str, body: str) -> None:
        info = workflow.info()
        await workflow.execute_activity(
            "dev_role.notify_admins",
            AdminNotice(
                idempotency_key=f"{info.workflow_id}/{info.run_id}/{what}",
                subject=subject,
                body=body,
            ),
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=MAIL_RETRY,
            summary=f"mail all admins: {what}",
        )
