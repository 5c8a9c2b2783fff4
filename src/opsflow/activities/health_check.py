"""Side effects of ``health-check``: probes, hour figures, alert state and mail, the record."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from opsflow.activities._rows import col as _col
from opsflow.adapters import audit
from opsflow.adapters.mail import Mailer, deliver_mail
from opsflow.adapters.s3 import bucket_usage
from opsflow.config import Settings
from opsflow.shared.common import AuditEventIn, MailMessage
from opsflow.shared.health_check import (
    Alert,
    AlertTransition,
    AppHealth,
    BucketUsage,
    DatabaseHealth,
    HealthCheckRecord,
    HourFigures,
    LongQuery,
    OpenAlerts,
    StorageHealth,
    Thresholds,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACTOR = "system:health-check"
_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")


def redact_sql(sql: str, limit: int = 160) -> str:
    """Drop literals from a query text so no value a user typed lands in a record."""
    return _LITERALS.sub("?", " ".join(sql.split()))[:limit]


class HealthCheckActivities:
    """Probes and alert bookkeeping; every dependency is injected by the worker."""

    def __init__(
        self,
        settings: Settings,
        opsflow_pool: AsyncConnectionPool,
        app_pool: AsyncConnectionPool,
        s3: S3Client,
        mailer: Mailer,
        temporal: Client | None,
        schedules: dict[str, timedelta],
    ) -> None:
        self.settings = settings
        self.ops = opsflow_pool
        self.app = app_pool
        self.s3 = s3
        self.mailer = mailer
        self.temporal = temporal
        self.schedules = schedules

    @activity.defn(name="health.check_app")
    async def check_app(self) -> AppHealth:
        """GET the application health URL; ok means 200 and ``{"status":"ok"}``."""
        url = self.settings.app_health_url
        start = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                resp = await http.get(url)
            latency = (time.perf_counter() - start) * 1000
            body: Any = None
            try:
                body = resp.json()
            except ValueError:
                body = None
            ok = resp.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok"
            error = None if ok else f"HTTP {resp.status_code}, body status {_status_of(body)!r}"
            return AppHealth(
                url=url,
                ok=ok,
                status_code=resp.status_code,
                latency_ms=round(latency, 2),
                error=error,
            )
        except httpx.HTTPError as exc:
            latency = (time.perf_counter() - start) * 1000
            return AppHealth(
                url=url,
                ok=False,
                status_code=None,
                latency_ms=round(latency, 2),
                error=type(exc).__name__,
            )

    async def _db(self, name: str, pool: AsyncConnectionPool) -> DatabaseHealth:
        start = time.perf_counter()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    """SELECT (SELECT count(*) FROM pg_stat_activity) AS connections,
                              current_setting('max_connections')::int AS max_connections"""
                )
                row = await cur.fetchone()
                cur = await conn.execute(
                    """SELECT pid, EXTRACT(EPOCH FROM now() - query_start)::float AS seconds,
                              state, query FROM pg_stat_activity
                       WHERE state <> 'idle' AND pid <> pg_backend_pid()
                         AND query_start < now() - make_interval(secs => %s)
                       ORDER BY query_start LIMIT 20""",
                    (self.settings.health_slow_query_seconds,),
                )
                longs = [
                    LongQuery(
                        pid=int(_col(r, "pid")),
                        seconds=round(float(_col(r, "seconds")), 1),
                        state=str(_col(r, "state")),
                        query=redact_sql(str(_col(r, "query"))),
                    )
                    for r in await cur.fetchall()
                ]
        except Exception as exc:  # a probe reports the fault instead of failing the check
            return DatabaseHealth(
                name=name,
                reachable=False,
                error=type(exc).__name__,
                latency_ms=round((time.perf_counter() - start) * 1000, 2),
            )
        used, limit = int(_col(row, "connections")), int(_col(row, "max_connections"))
        return DatabaseHealth(
            name=name,
            reachable=True,
            connections=used,
            max_connections=limit,
            usage_pct=round(100.0 * used / limit, 2) if limit else 0.0,
            long_queries=longs,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
        )

    @activity.defn(name="health.check_databases")
    async def check_databases(self) -> list[DatabaseHealth]:
        """Measure connections against max_connections, and queries over the threshold."""
        return list(await asyncio.gather(self._db("opsflow", self.ops), self._db("app", self.app)))

    @activity.defn(name="health.check_storage")
    async def check_storage(self) -> StorageHealth:
        """Bucket sizes and object counts against the quota, and local disk use."""
        s = self.settings
        buckets: list[BucketUsage] = []
        for name in dict.fromkeys([s.s3_audit_bucket, s.s3_backup_bucket, s.s3_attachments_bucket]):
            try:
                count, size = await asyncio.to_thread(bucket_usage, self.s3, name)
                buckets.append(BucketUsage(bucket=name, objects=count, bytes=size))
            except Exception as exc:  # reported as an inaccessible bucket
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                buckets.append(
                    BucketUsage(
                        bucket=name,
                        objects=0,
                        bytes=0,
                        accessible=False,
                        error=code or type(exc).__name__,
                    )
                )
            activity.heartbeat(name)
        total = sum(b.bytes for b in buckets)
        disk = shutil.disk_usage(s.health_disk_path)
        quota = s.health_storage_quota_bytes
        return StorageHealth(
            buckets=buckets,
            total_bytes=total,
            quota_bytes=quota,
            quota_pct=round(100.0 * total / quota, 3) if quota else 0.0,
            disk_path=s.health_disk_path,
            disk_used_pct=round(100.0 * disk.used / disk.total, 2) if disk.total else 0.0,
        )

    @activity.defn(name="health.expire_dev_grants")
    async def expire_dev_grants(self) -> list[str]:
        """Turn off developer-role grants past ``expires_at`` (a terminated workflow's)."""
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """UPDATE settings
                   SET value = value || jsonb_build_object('allow', false,
                           'ended_at', to_char(now() AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
                           'ended_by', 'health-check'),
                       updated_at = now(), updated_by = %s
                   WHERE key LIKE 'dev\\_role\\_%%' AND (value->>'allow')::boolean
                     AND (value->>'expires_at')::timestamptz < now()
                   RETURNING key, value->>'workflow_id' AS workflow_id""",
                (ACTOR,),
            )
            expired = [(str(_col(r, "key")), _col(r, "workflow_id")) for r in await cur.fetchall()]
        for key, wid in expired:
            await audit.record_event(
                self.ops,
                AuditEventIn(
                    actor=ACTOR,
                    action="dev_role.expire",
                    target=f"setting:{key}",
                    details={"reason": "grant past expires_at", "grant_workflow": wid},
                ),
            )
        return [k for k, _ in expired]

    @activity.defn(name="health.hour_figures")
    async def hour_figures(self, current_latency_ms: float) -> HourFigures:
        """Return the figures the alert rules read, over the last hour."""
        since = datetime.now(UTC) - timedelta(hours=1)
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """SELECT count(*) AS n FROM activity_logs
                   WHERE level = 'error' AND occurred_at >= %s""",
                (since,),
            )
            errors = int(_col(await cur.fetchone(), "n"))
            cur = await conn.execute(
                """SELECT COALESCE(username, user_id::text, '?') AS who, count(*) AS n
                   FROM activity_logs WHERE action = 'login_failed' AND occurred_at >= %s
                   GROUP BY 1 ORDER BY 2 DESC LIMIT 100""",
                (since,),
            )
            failed = {str(_col(r, "who")): int(_col(r, "n")) for r in await cur.fetchall()}
        async with self.ops.connection() as conn:
            cur = await conn.execute(
                """SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) AS p95 FROM (
                     SELECT app_latency_ms AS v FROM health_check_runs WHERE checked_at >= %s
                     UNION ALL SELECT %s::float) s""",
                (since, current_latency_ms),
            )
            p95 = float(_col(await cur.fetchone(), "p95") or 0.0)
            cur = await conn.execute(
                """SELECT count(*) AS n FROM notifications WHERE last_error IS NOT NULL
                   AND created_at >= %s""",
                (since,),
            )
            failed_mail = int(_col(await cur.fetchone(), "n"))
        return HourFigures(
            app_errors=errors,
            failed_logins_by_user=failed,
            health_p95_ms=round(p95, 2),
            failed_mail=failed_mail,
            missed_schedules=await self._missed_schedules(),
        )

    async def _missed_schedules(self) -> list[str]:
        """Schedules whose last run is older than their interval allows (or that vanished)."""
        if self.temporal is None:
            return []
        missed: list[str] = []
        now = datetime.now(UTC)
        for sid, interval in self.schedules.items():
            try:
                desc = await self.temporal.get_schedule_handle(sid).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    missed.append(sid)
                continue
            if desc.schedule.state.paused:
                continue
            times = [a.scheduled_at for a in desc.info.recent_actions]
            last = max(times) if times else desc.info.created_at
            # One interval late plus a grace for start latency is a miss.
            if last is not None and now - last > interval * 2 + timedelta(minutes=1):
                missed.append(sid)
        return missed

    @activity.defn(name="health.thresholds")
    async def thresholds(self) -> Thresholds:
        """Alert thresholds from settings (the seed's defaults)."""
        s = self.settings
        return Thresholds(
            app_errors_per_hour=s.health_app_errors_per_hour,
            failed_logins_per_user_hour=s.health_failed_logins_per_user_hour,
            p95_ms=s.health_p95_ms,
            pool_pct=s.health_pool_pct,
            storage_pct=s.health_storage_pct,
        )

    @activity.defn(name="health.open_alerts")
    async def open_alerts(self) -> OpenAlerts:
        """Alerts raised and not resolved yet."""
        async with self.ops.connection() as conn:
            cur = await conn.execute(
                """SELECT key, rule, message, value, threshold FROM health_alerts
                   WHERE resolved_at IS NULL ORDER BY raised_at, id"""
            )
            rows = await cur.fetchall()
        return OpenAlerts(
            alerts=[
                Alert(
                    key=str(_col(r, "key")),
                    rule=str(_col(r, "rule")),
                    message=str(_col(r, "message")),
                    value=float(_col(r, "value") or 0),
                    threshold=float(_col(r, "threshold") or 0),
                )
                for r in rows
            ]
        )

    @activity.defn(name="health.transition_alert")
    async def transition_alert(self, t: AlertTransition) -> None:
        """Raise or resolve one alert (exactly once) and mail the on-call list."""
        a = t.alert
        async with self.ops.connection() as conn, conn.transaction():
            if t.kind == "raised":
                cur = await conn.execute(
                    """INSERT INTO health_alerts (key, rule, message, value, threshold, raised_at,
                                                  raised_check_id)
                       VALUES (%s, %s, %s, %s, %s, now(), %s)
                       ON CONFLICT (key) WHERE resolved_at IS NULL DO NOTHING RETURNING id""",
                    (a.key, a.rule, a.message, a.value, a.threshold, t.check_id),
                )
                row = await cur.fetchone()
                if row is None:  # a retry, or raised already: find the open one
                    cur = await conn.execute(
                        """SELECT id, raised_check_id FROM health_alerts
                           WHERE key = %s AND resolved_at IS NULL""",
                        (a.key,),
                    )
                    row = await cur.fetchone()
                    if row is None or _col(row, "raised_check_id") != t.check_id:
                        return  # raised by another check: stay quiet
                else:
                    await audit.append_event(
                        conn,
                        AuditEventIn(
                            actor=ACTOR,
                            action="alert.raise",
                            target=f"alert:{a.key}",
                            details={"rule": a.rule, "message": a.message, "check": t.check_id},
                        ),
                    )
            else:
                cur = await conn.execute(
                    """UPDATE health_alerts SET resolved_at = now(), resolved_check_id = %s
                       WHERE key = %s AND resolved_at IS NULL RETURNING id""",
                    (t.check_id, a.key),
                )
                row = await cur.fetchone()
                if row is None:
                    cur = await conn.execute(
                        """SELECT id FROM health_alerts WHERE key = %s AND resolved_check_id = %s
                           ORDER BY id DESC LIMIT 1""",
                        (a.key, t.check_id),
                    )
                    row = await cur.fetchone()
                    if row is None:
                        return
                else:
                    await audit.append_event(
                        conn,
                        AuditEventIn(
                            actor=ACTOR,
                            action="alert.resolve",
                            target=f"alert:{a.key}",
                            details={"rule": a.rule, "check": t.check_id},
                        ),
                    )
            alert_id = int(_col(row, "id"))
        if not t.notify:
            return
        word = "ALERT" if t.kind == "raised" else "RESOLVED"
        await deliver_mail(
            self.ops,
            self.mailer,
            MailMessage(
                idempotency_key=f"health-alert-{alert_id}-{t.kind}",
                to=list(self.settings.oncall_emails),
                subject=f"[opsflow] {word}: {a.key}",
                body=(
                    f"{word}: {a.message}\nRule: {a.rule}\nValue: {a.value} "
                    f"(threshold {a.threshold})\nCheck: {t.check_id}\n"
                    f"Report: {self.settings.api_public_url}/health/report\n"
                ),
                kind=f"alert-{t.kind}",
            ),
        )

    @activity.defn(name="health.record")
    async def record(self, rec: HealthCheckRecord) -> None:
        """Insert the check's ``health_check_runs`` row (once)."""
        obs = asdict(rec.observation)
        async with self.ops.connection() as conn:
            await conn.execute(
                """INSERT INTO health_check_runs (check_id, workflow_id, run_id, status, app_ok,
                       app_latency_ms, observation, firing, raised, resolved)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (check_id) DO NOTHING""",
                (
                    rec.check_id,
                    rec.workflow_id,
                    rec.run_id,
                    rec.status,
                    rec.observation.app.ok,
                    rec.observation.app.latency_ms,
                    Jsonb(obs),
                    Jsonb([asdict(a) for a in rec.firing]),
                    rec.raised,
                    rec.resolved,
                ),
            )


def _status_of(body: Any) -> Any:
    return body.get("status") if isinstance(body, dict) else None
