"""``health-check``: the seed's system monitoring, every 5 minutes on a Temporal Schedule.

Seed 001, "System Monitoring": application health URL, database connections and slow queries,
storage use; the alert rules of "Alerts Configuration" evaluated over the last hour. Each firing
rule raises one alert (mail to the on-call list) and stays quiet until it clears, then sends one
"resolved" mail. It also turns off developer-role grants past their ``expires_at`` (the safety
net for a terminated ``dev-role-elevation`` workflow).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from opsflow.shared.health_check import (
        AlertTransition,
        AppHealth,
        DatabaseHealth,
        HealthCheckInput,
        HealthCheckRecord,
        HealthCheckResult,
        HourFigures,
        Observation,
        OpenAlerts,
        StorageHealth,
        Thresholds,
        evaluate_rules,
        transitions,
    )
    from opsflow.workflows._common import RunbookWorkflow, set_state

# A check is a snapshot: a probe that keeps failing is itself the finding, so retry briefly.
PROBE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
)
STATE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
PROBE_TIMEOUT = timedelta(seconds=60)


@workflow.defn(name="health-check")
class HealthCheck(RunbookWorkflow):
    """One check: observe, evaluate the alert rules, move alerts, record."""

    runbook = "health-check"

    @workflow.run
    async def run(self, inp: HealthCheckInput) -> HealthCheckResult:
        """Observe everything, raise/resolve alerts once each, record the check."""
        info = workflow.info()
        check_id = f"{info.workflow_id}/{info.run_id}"
        await self.record_run("running", inp)

        self.step("probing", "application, databases, storage", 0, 6)
        app, dbs, storage = await asyncio.gather(
            workflow.execute_activity(
                "health.check_app",
                result_type=AppHealth,
                start_to_close_timeout=PROBE_TIMEOUT,
                retry_policy=PROBE_RETRY,
                summary="GET the application health URL",
            ),
            workflow.execute_activity(
                "health.check_databases",
                result_type=list[DatabaseHealth],
                start_to_close_timeout=PROBE_TIMEOUT,
                retry_policy=PROBE_RETRY,
                summary="database connections and long-running queries",
            ),
            workflow.execute_activity(
                "health.check_storage",
                result_type=StorageHealth,
                start_to_close_timeout=PROBE_TIMEOUT,
                retry_policy=PROBE_RETRY,
                summary="bucket sizes, object counts, disk against quota",
            ),
        )
        self.step("expiring grants", "turning off developer-role grants past expires_at", 3, 6)
        expired: list[str] = await workflow.execute_activity(
            "health.expire_dev_grants",
            result_type=list[str],
            start_to_close_timeout=PROBE_TIMEOUT,
            retry_policy=STATE_RETRY,
            summary="turn off expired developer-role grants",
        )
        self.step("figures", "alert figures over the last hour", 4, 6)
        hour: HourFigures = await workflow.execute_activity(
            "health.hour_figures",
            app.latency_ms,
            result_type=HourFigures,
            start_to_close_timeout=PROBE_TIMEOUT,
            retry_policy=PROBE_RETRY,
            summary="errors, failed logins, p95, mail failures, missed schedules (1 h)",
        )
        hour.expired_grants_revoked = expired
        thresholds: Thresholds = await workflow.execute_activity(
            "health.thresholds",
            result_type=Thresholds,
            start_to_close_timeout=PROBE_TIMEOUT,
            retry_policy=PROBE_RETRY,
            summary="alert thresholds",
        )
        obs = Observation(app=app, databases=dbs, storage=storage, hour=hour, thresholds=thresholds)

        firing = evaluate_rules(obs)
        open_alerts: OpenAlerts = await workflow.execute_activity(
            "health.open_alerts",
            result_type=OpenAlerts,
            start_to_close_timeout=PROBE_TIMEOUT,
            retry_policy=STATE_RETRY,
            summary="alerts raised earlier and still open",
        )
        to_raise, to_resolve = transitions(open_alerts.alerts, firing)
        self.step("alerting", f"{len(to_raise)} to raise, {len(to_resolve)} to resolve", 5, 6)
        for alert, kind in [(a, "raised") for a in to_raise] + [
            (a, "resolved") for a in to_resolve
        ]:
            await workflow.execute_activity(
                "health.transition_alert",
                AlertTransition(alert=alert, kind=kind, check_id=check_id, notify=inp.notify),
                start_to_close_timeout=PROBE_TIMEOUT,
                retry_policy=STATE_RETRY,
                summary=f"alert {kind}: {alert.key}",
            )

        status = "ok" if not firing else "degraded"
        result = HealthCheckResult(
            status=status,
            firing=[a.key for a in firing],
            raised=[a.key for a in to_raise],
            resolved=[a.key for a in to_resolve],
            app_latency_ms=app.latency_ms,
        )
        await workflow.execute_activity(
            "health.record",
            HealthCheckRecord(
                check_id=check_id,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                status=status,
                observation=obs,
                firing=firing,
                raised=result.raised,
                resolved=result.resolved,
            ),
            start_to_close_timeout=PROBE_TIMEOUT,
            retry_policy=STATE_RETRY,
            summary=f"record check: {status}",
        )
        set_state(status)
        self.step("done", f"{status}: {len(firing)} firing", 6, 6)
        await self.record_run(
            "completed",
            inp,
            result=result,
            figures={"firing": len(firing), "app_latency_ms": app.latency_ms},
        )
        return result
