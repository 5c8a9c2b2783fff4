"""health-check under the time-skipping server: rules, alerts raised once and resolved once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.health_check import (
    Alert,
    AlertTransition,
    AppHealth,
    BucketUsage,
    DatabaseHealth,
    HealthCheckInput,
    HealthCheckRecord,
    HourFigures,
    Observation,
    OpenAlerts,
    StorageHealth,
    Thresholds,
    evaluate_rules,
    transitions,
)
from opsflow.workflows.health_check import HealthCheck


def _obs(**hour: object) -> Observation:
    return Observation(
        app=AppHealth(url="http://app/api/health", ok=True, status_code=200, latency_ms=12.0),
        databases=[
            DatabaseHealth(
                name="app", reachable=True, connections=10, max_connections=100, usage_pct=10.0
            )
        ],
        storage=StorageHealth(
            buckets=[BucketUsage("b", 1, 10)],
            total_bytes=10,
            quota_bytes=100,
            quota_pct=10.0,
            disk_used_pct=50.0,
        ),
        hour=HourFigures(**hour),  # type: ignore[arg-type]
        thresholds=Thresholds(),
    )


def test_rules_quiet_on_a_healthy_system() -> None:
    assert evaluate_rules(_obs()) == []


def test_rules_follow_the_seed_thresholds() -> None:
    # Exactly at a threshold is not over it; one more is.
    assert evaluate_rules(_obs(app_errors=10)) == []
    assert [a.key for a in evaluate_rules(_obs(app_errors=11))] == ["app_errors"]
    keys = [
        a.key
        for a in evaluate_rules(
            _obs(
                failed_logins_by_user={"eve": 6, "bob": 5},
                health_p95_ms=1001.0,
                failed_mail=1,
                missed_schedules=["health-check"],
            )
        )
    ]
    assert keys == [
        "failed_logins:eve",
        "response_p95",
        "mail_failures",
        "missed_schedule:health-check",
    ]
    obs = _obs()
    obs.databases[0].usage_pct = 91.0
    obs.storage.quota_pct = 90.5
    obs.app.ok = False
    assert {a.rule for a in evaluate_rules(obs)} == {"app_down", "db_pool", "storage_quota"}


def test_transitions_raise_new_and_resolve_cleared() -> None:
    a, b, c = Alert("a", "r", "m"), Alert("b", "r", "m"), Alert("c", "r", "m")
    raise_, resolve = transitions(open_alerts=[a, b], firing=[b, c])
    assert [x.key for x in raise_] == ["c"]
    assert [x.key for x in resolve] == ["a"]


@dataclass
class FakeWorld:
    """Observations the probes return, and the alert state that outlives each run."""

    app_errors: int = 0
    open: dict[str, Alert] = field(default_factory=dict)
    mails: list[str] = field(default_factory=list)
    records: list[HealthCheckRecord] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)

    def activities(self) -> list[object]:
        @activity.defn(name="health.check_app")
        async def check_app() -> AppHealth:
            return AppHealth(url="u", ok=True, status_code=200, latency_ms=5.0)

        @activity.defn(name="health.check_databases")
        async def check_databases() -> list[DatabaseHealth]:
            return [
                DatabaseHealth(
                    name="opsflow",
                    reachable=True,
                    connections=3,
                    max_connections=100,
                    usage_pct=3.0,
                )
            ]

        @activity.defn(name="health.check_storage")
        async def check_storage() -> StorageHealth:
            return StorageHealth()

        @activity.defn(name="health.expire_dev_grants")
        async def expire() -> list[str]:
            return list(self.expired)

        @activity.defn(name="health.hour_figures")
        async def hour(latency: float) -> HourFigures:
            return HourFigures(app_errors=self.app_errors)

        @activity.defn(name="health.thresholds")
        async def thresholds() -> Thresholds:
            return Thresholds()

        @activity.defn(name="health.open_alerts")
        async def open_alerts() -> OpenAlerts:
            return OpenAlerts(alerts=list(self.open.values()))

        @activity.defn(name="health.transition_alert")
        async def transition(t: AlertTransition) -> None:
            if t.kind == "raised":
                self.open[t.alert.key] = t.alert
            else:
                self.open.pop(t.alert.key)
            self.mails.append(f"{t.kind}:{t.alert.key}")

        @activity.defn(name="health.record")
        async def record(r: HealthCheckRecord) -> None:
            self.records.append(r)

        @activity.defn(name="platform.record_run")
        async def record_run(r: RunRecord) -> None:
            pass

        @activity.defn(name="platform.audit")
        async def audit(e: AuditEventIn) -> None:
            pass

        return [
            check_app,
            check_databases,
            check_storage,
            expire,
            hour,
            thresholds,
            open_alerts,
            transition,
            record,
            record_run,
            audit,
        ]


async def test_alert_raised_once_and_resolved_once(ts_env: WorkflowEnvironment) -> None:
    world = FakeWorld()
    tq = f"tq-{uuid.uuid4()}"
    results = []
    async with Worker(
        ts_env.client, task_queue=tq, workflows=[HealthCheck], activities=world.activities()
    ):
        # Four checks: errors spike for three of them, then clear.
        for errors in (25, 30, 12, 0):
            world.app_errors = errors
            results.append(
                await ts_env.client.execute_workflow(
                    HealthCheck.run,
                    HealthCheckInput(),
                    id=f"health-check:{uuid.uuid4()}",
                    task_queue=tq,
                    memo={"actor": "system:health-check"},
                )
            )
    assert [r.status for r in results] == ["degraded", "degraded", "degraded", "ok"]
    assert [r.raised for r in results] == [["app_errors"], [], [], []]
    assert [r.resolved for r in results] == [[], [], [], ["app_errors"]]
    assert world.mails == ["raised:app_errors", "resolved:app_errors"]
    assert len(world.records) == 4 and world.records[0].firing[0].value == 25


async def test_expired_grants_are_reported(ts_env: WorkflowEnvironment) -> None:
    world = FakeWorld(expired=["dev_role_production"])
    tq = f"tq-{uuid.uuid4()}"
    async with Worker(
        ts_env.client, task_queue=tq, workflows=[HealthCheck], activities=world.activities()
    ):
        await ts_env.client.execute_workflow(
            HealthCheck.run,
            HealthCheckInput(),
            id=f"health-check:{uuid.uuid4()}",
            task_queue=tq,
        )
    assert world.records[0].observation.hour.expired_grants_revoked == ["dev_role_production"]
