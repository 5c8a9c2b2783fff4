"""Payloads of the ``health-check`` runbook (seed 001, System Monitoring)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HealthCheckInput:
    """Run one health check. Thresholds come from the worker's settings."""

    notify: bool = field(
        default=True,
        metadata={"description": "Send alert and resolved mail (false: evaluate and record only)."},
    )


@dataclass
class AppHealth:
    """The operated application's health URL."""

    url: str
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None = None


@dataclass
class LongQuery:
    """A query running longer than the threshold."""

    pid: int
    seconds: float
    state: str
    query: str


@dataclass
class DatabaseHealth:
    """Connections against max_connections, and long-running queries, for one database."""

    name: str
    reachable: bool
    connections: int = 0
    max_connections: int = 0
    usage_pct: float = 0.0
    long_queries: list[LongQuery] = field(default_factory=list)
    latency_ms: float = 0.0
    error: str | None = None


@dataclass
class BucketUsage:
    """Size and object count of one bucket."""

    bucket: str
    objects: int
    bytes: int
    accessible: bool = True
    error: str | None = None


@dataclass
class StorageHealth:
    """Buckets and local disk against the configured quota."""

    buckets: list[BucketUsage] = field(default_factory=list)
    total_bytes: int = 0
    quota_bytes: int = 0
    quota_pct: float = 0.0
    disk_path: str = "/"
    disk_used_pct: float = 0.0


@dataclass
class HourFigures:
    """Figures over the last hour that the alert rules read."""

    app_errors: int = 0
    failed_logins_by_user: dict[str, int] = field(default_factory=dict)
    health_p95_ms: float = 0.0
    failed_mail: int = 0
    missed_schedules: list[str] = field(default_factory=list)
    expired_grants_revoked: list[str] = field(default_factory=list)


@dataclass
class Thresholds:
    """Alert thresholds (the seed's defaults, overridable by settings)."""

    app_errors_per_hour: int = 10
    failed_logins_per_user_hour: int = 5
    p95_ms: float = 1000.0
    pool_pct: float = 90.0
    storage_pct: float = 90.0


@dataclass
class Observation:
    """Everything one check saw."""

    app: AppHealth
    databases: list[DatabaseHealth]
    storage: StorageHealth
    hour: HourFigures
    thresholds: Thresholds


@dataclass
class Alert:
    """A firing rule. ``key`` identifies it across runs (rule plus subject)."""

    key: str
    rule: str
    message: str
    value: float = 0.0
    threshold: float = 0.0


@dataclass
class OpenAlerts:
    """Alerts raised earlier and not yet resolved."""

    alerts: list[Alert] = field(default_factory=list)


@dataclass
class AlertTransition:
    """Activity input: raise or resolve one alert and mail the on-call list."""

    alert: Alert
    kind: str  # "raised" | "resolved"
    check_id: str
    notify: bool = True


@dataclass
class HealthCheckRecord:
    """Activity input: one ``health_check_runs`` row."""

    check_id: str
    workflow_id: str
    run_id: str
    status: str
    observation: Observation
    firing: list[Alert]
    raised: list[str]
    resolved: list[str]


@dataclass
class HealthCheckResult:
    """The run's result: overall status and which alerts moved."""

    status: str  # "ok" | "degraded"
    firing: list[str] = field(default_factory=list)
    raised: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    app_latency_ms: float = 0.0


def evaluate_rules(obs: Observation) -> list[Alert]:
    """Return the alerts firing for an observation (the seed's alert rules)."""
    t = obs.thresholds
    out: list[Alert] = []
    if not obs.app.ok:
        out.append(Alert("app_down", "app_down", f"{obs.app.url} is not ok: {obs.app.error}"))
    if obs.hour.app_errors > t.app_errors_per_hour:
        out.append(
            Alert(
                "app_errors",
                "app_errors",
                f"{obs.hour.app_errors} application errors in the last hour",
                obs.hour.app_errors,
                t.app_errors_per_hour,
            )
        )
    for user, n in sorted(obs.hour.failed_logins_by_user.items()):
        if n > t.failed_logins_per_user_hour:
            out.append(
                Alert(
                    f"failed_logins:{user}",
                    "failed_logins",
                    f"{n} failed logins for {user} in the last hour",
                    n,
                    t.failed_logins_per_user_hour,
                )
            )
    if obs.hour.health_p95_ms > t.p95_ms:
        out.append(
            Alert(
                "response_p95",
                "response_p95",
                f"health URL p95 {obs.hour.health_p95_ms:.0f} ms over the last hour",
                obs.hour.health_p95_ms,
                t.p95_ms,
            )
        )
    for db in obs.databases:
        if not db.reachable:
            out.append(Alert(f"db_down:{db.name}", "db_down", f"{db.name}: {db.error}"))
        elif db.usage_pct > t.pool_pct:
            out.append(
                Alert(
                    f"db_pool:{db.name}",
                    "db_pool",
                    f"{db.name}: {db.connections}/{db.max_connections} connections in use",
                    db.usage_pct,
                    t.pool_pct,
                )
            )
    if obs.storage.quota_pct > t.storage_pct:
        out.append(
            Alert(
                "storage_quota",
                "storage_quota",
                f"object storage at {obs.storage.quota_pct:.1f}% of quota",
                obs.storage.quota_pct,
                t.storage_pct,
            )
        )
    if obs.storage.disk_used_pct > t.storage_pct:
        out.append(
            Alert(
                "disk_usage",
                "disk_usage",
                f"disk {obs.storage.disk_path} at {obs.storage.disk_used_pct:.1f}%",
                obs.storage.disk_used_pct,
                t.storage_pct,
            )
        )
    for b in obs.storage.buckets:
        if not b.accessible:
            out.append(Alert(f"bucket:{b.bucket}", "bucket_inaccessible", f"{b.bucket}: {b.error}"))
    if obs.hour.failed_mail > 0:
        out.append(
            Alert(
                "mail_failures",
                "mail_failures",
                f"{obs.hour.failed_mail} mail deliveries failed in the last hour",
                obs.hour.failed_mail,
                0,
            )
        )
    for sched in obs.hour.missed_schedules:
        out.append(Alert(f"missed_schedule:{sched}", "missed_schedule", f"schedule {sched} missed"))
    return out


def transitions(open_alerts: list[Alert], firing: list[Alert]) -> tuple[list[Alert], list[Alert]]:
    """Return (to raise, to resolve): new firing alerts, and open ones that cleared."""
    open_keys = {a.key for a in open_alerts}
    firing_keys = {a.key for a in firing}
    to_raise = [a for a in firing if a.key not in open_keys]
    to_resolve = [a for a in open_alerts if a.key not in firing_keys]
    return to_raise, to_resolve
