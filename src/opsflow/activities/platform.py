"""Activities every runbook shares: the runs read model, audit events, mail."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool
from temporalio import activity

from opsflow.adapters import audit, runs
from opsflow.adapters.mail import Mailer, deliver_mail
from opsflow.shared.common import AuditEventIn, MailMessage, RunRecord


class PlatformActivities:
    """Bookkeeping against the opsflow database. Every method is idempotent."""

    def __init__(self, opsflow_pool: AsyncConnectionPool, mailer: Mailer) -> None:
        self.pool = opsflow_pool
        self.mailer = mailer

    @activity.defn(name="platform.record_run")
    async def record_run(self, rec: RunRecord) -> None:
        """Upsert the run's row; the first call sets started_at, a final status ended_at."""
        await runs.record(self.pool, rec)

    @activity.defn(name="platform.audit")
    async def audit(self, event: AuditEventIn) -> None:
        """Append an audit event once per (run, action, target), even across retries."""
        await audit.record_event_once(self.pool, event, f"{event.run_id}/{event.target}")

    @activity.defn(name="platform.send_mail")
    async def send_mail(self, msg: MailMessage) -> str:
        """Send one mail at most once per idempotency key."""
        return await deliver_mail(self.pool, self.mailer, msg)
