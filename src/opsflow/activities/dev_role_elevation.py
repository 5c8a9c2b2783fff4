"""Side effects of ``dev-role-elevation``: the grant in ``app.settings``, admin mail, review."""

from __future__ import annotations

import json
from datetime import datetime

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from temporalio import activity

from opsflow.activities._rows import col as _col
from opsflow.adapters import audit
from opsflow.adapters.mail import Mailer, deliver_mail
from opsflow.shared.common import AuditEventIn, MailMessage
from opsflow.shared.dev_role_elevation import (
    SETTING_KEY,
    AdminNotice,
    DeveloperAction,
    DeveloperActions,
    DeveloperActionsQuery,
    DevRoleElevationResult,
    GrantRequest,
    RevokeOutcome,
    RevokeRequest,
)


def setting_key(environment: str) -> str:
    """Key of the grant in ``app.settings``: the seed's production key, or one per env."""
    return SETTING_KEY if environment == "production" else f"dev_role_{environment}"


class DevRoleElevationActivities:
    """Writes the grant to the operated app and records it in opsflow."""

    def __init__(
        self, app_pool: AsyncConnectionPool, opsflow_pool: AsyncConnectionPool, mailer: Mailer
    ) -> None:
        self.app = app_pool
        self.ops = opsflow_pool
        self.mailer = mailer

    async def _audit_once(self, event: AuditEventIn) -> None:
        # One event per run and action, however often the activity is retried.
        await audit.record_event_once(self.ops, event, f"{event.run_id}")

    @activity.defn(name="dev_role.grant")
    async def grant(self, req: GrantRequest) -> None:
        """Enable the developer role until ``expires_at`` (idempotent for this run)."""
        value = {
            "allow": True,
            "expires_at": req.expires_at,
            "granted_at": req.granted_at,
            "granted_by": req.actor,
            "reason": req.reason,
            "workflow_id": req.workflow_id,
            "run_id": req.run_id,
        }
        async with self.app.connection() as conn:
            await conn.execute(
                """INSERT INTO settings (key, value, updated_at, updated_by)
                   VALUES (%s, %s, now(), %s)
                   ON CONFLICT (key) DO UPDATE
                   SET value = EXCLUDED.value, updated_at = now(),
                       updated_by = EXCLUDED.updated_by""",
                (setting_key(req.environment), Jsonb(value), req.actor),
            )
        async with self.ops.connection() as conn:
            await conn.execute(
                """INSERT INTO dev_role_elevation_runs
                     (workflow_id, run_id, environment, granted_by, reason, hours, granted_at,
                      expires_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (workflow_id, run_id) DO NOTHING""",
                (
                    req.workflow_id,
                    req.run_id,
                    req.environment,
                    req.actor,
                    req.reason,
                    req.hours,
                    datetime.fromisoformat(req.granted_at),
                    datetime.fromisoformat(req.expires_at),
                ),
            )
        await self._audit_once(
            AuditEventIn(
                actor=req.actor,
                action="dev_role.grant",
                target=f"setting:{setting_key(req.environment)}",
                details={
                    "environment": req.environment,
                    "hours": req.hours,
                    "reason": req.reason,
                    "expires_at": req.expires_at,
                },
                workflow_id=req.workflow_id,
                run_id=req.run_id,
            )
        )

    @activity.defn(name="dev_role.revoke")
    async def revoke(self, req: RevokeRequest) -> RevokeOutcome:
        """Turn the grant off if it is still this workflow's; audit it."""
        run_id = activity.info().workflow_run_id
        key = setting_key(req.environment)
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """UPDATE settings
                   SET value = value || jsonb_build_object('allow', false, 'ended_at', %s::text,
                                                           'ended_by', %s::text),
                       updated_at = now(), updated_by = %s
                   WHERE key = %s AND (value->>'allow')::boolean
                     AND value->>'workflow_id' = %s
                   RETURNING key""",
                (req.ended_at, req.ended_by, req.actor, key, req.workflow_id),
            )
            changed = await cur.fetchone() is not None
        async with self.ops.connection() as conn:
            await conn.execute(
                """UPDATE dev_role_elevation_runs SET ended_at = %s, ended_by = %s
                   WHERE workflow_id = %s AND run_id = %s AND ended_at IS NULL""",
                (datetime.fromisoformat(req.ended_at), req.ended_by, req.workflow_id, run_id),
            )
        await self._audit_once(
            AuditEventIn(
                actor=req.actor,
                action="dev_role.revoke",
                target=f"setting:{key}",
                outcome="success" if changed else "noop",
                details={
                    "environment": req.environment,
                    "ended_by": req.ended_by,
                    "changed": changed,
                },
                workflow_id=req.workflow_id,
                run_id=run_id,
            )
        )
        return RevokeOutcome(changed=changed)

    @activity.defn(name="dev_role.notify_admins")
    async def notify_admins(self, notice: AdminNotice) -> int:
        """Mail every active admin of the operated application; return how many."""
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """SELECT DISTINCT email FROM users
                   WHERE role = 'admin' AND is_active AND email IS NOT NULL ORDER BY email"""
            )
            emails = [_col(r, "email") for r in await cur.fetchall()]
        if not emails:
            activity.logger.warning("no active admin to notify")
            return 0
        await deliver_mail(
            self.ops,
            self.mailer,
            MailMessage(
                idempotency_key=notice.idempotency_key,
                to=emails,
                subject=notice.subject,
                body=notice.body,
                kind="dev-role-elevation",
            ),
        )
        return len(emails)

    @activity.defn(name="dev_role.developer_actions")
    async def developer_actions(self, q: DeveloperActionsQuery) -> DeveloperActions:
        """Return what developers did in the window (the seed's misuse review query)."""
        since, until = datetime.fromisoformat(q.since), datetime.fromisoformat(q.until)
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """SELECT occurred_at, COALESCE(username, user_id::text, '?') AS username,
                          action, COALESCE(target, '') AS target
                   FROM activity_logs WHERE role = 'developer'
                     AND occurred_at >= %s AND occurred_at <= %s
                   ORDER BY occurred_at, id LIMIT %s""",
                (since, until, q.limit + 1),
            )
            rows = await cur.fetchall()
            total_cur = await conn.execute(
                """SELECT count(*) AS n FROM activity_logs WHERE role = 'developer'
                   AND occurred_at >= %s AND occurred_at <= %s""",
                (since, until),
            )
            total = int(_col(await total_cur.fetchone(), "n"))
        actions = [
            DeveloperAction(
                occurred_at=_col(r, "occurred_at").isoformat(),
                user=_col(r, "username"),
                action=_col(r, "action"),
                target=_col(r, "target"),
            )
            for r in rows[: q.limit]
        ]
        return DeveloperActions(actions=actions, total=total, truncated=total > q.limit)

    @activity.defn(name="dev_role.record_review")
    async def record_review(self, result: DevRoleElevationResult) -> None:
        """Store the review's figures on the run's row and audit the review."""
        info = activity.info()
        async with self.ops.connection() as conn:
            await conn.execute(
                """UPDATE dev_role_elevation_runs SET developer_action_count = %s
                   WHERE workflow_id = %s AND run_id = %s""",
                (result.developer_action_count, info.workflow_id, info.workflow_run_id),
            )
        await self._audit_once(
            AuditEventIn(
                actor=f"system:{result.ended_by}",
                action="dev_role.review",
                target=f"setting:{setting_key(result.environment)}",
                details={
                    "developer_action_count": result.developer_action_count,
                    "actions": json.loads(
                        json.dumps([a.__dict__ for a in result.developer_actions[:100]])
                    ),
                },
                workflow_id=info.workflow_id,
                run_id=info.workflow_run_id,
            )
        )
