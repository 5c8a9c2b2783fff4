"""Side effects of ``triage-assignment``: validation and the assignment transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from opsflow.activities._rows import col
from opsflow.activities.sla_escalation import audit_once, signal_with_start
from opsflow.shared.common import AuditEventIn
from opsflow.shared.errors import CONFLICT, INVALID, NOT_FOUND
from opsflow.shared.triage_assignment import (
    CORRECTABLE_FIELDS,
    AssignOutcome,
    AssignRequest,
    StartSla,
)

CHANNELS = ("web", "phone", "email", "mobile", "walk_in", "api")


def _refuse(message: str, kind: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def _check_corrections(corrections: dict[str, str]) -> None:
    unknown = sorted(set(corrections) - set(CORRECTABLE_FIELDS))
    if unknown:
        raise _refuse(
            f"cannot correct {unknown}: correctable fields are {list(CORRECTABLE_FIELDS)}",
            INVALID,
        )
    channel = corrections.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise _refuse(f"unknown channel {channel!r}: one of {list(CHANNELS)}", INVALID)
    if "title" in corrections and not corrections["title"].strip():
        raise _refuse("title must not be empty", INVALID)


class TriageActivities:
    """Writes the triage to the operated app and starts the request's SLA workflow."""

    def __init__(
        self,
        app_pool: AsyncConnectionPool,
        opsflow_pool: AsyncConnectionPool,
        client: Client | None,
        task_queue: str,
    ) -> None:
        self.app = app_pool
        self.ops = opsflow_pool
        self.client = client
        self.task_queue = task_queue

    @activity.defn(name="triage.assign")
    async def assign(self, req: AssignRequest) -> AssignOutcome:
        """Validate, then assign in one transaction; business refusals are non-retryable.

        A retry after the commit finds this run's timeline entry and answers as the first
        attempt did, so the request is never assigned twice.
        """
        inp = req.inp
        key = f"{req.workflow_id}/{req.run_id}/assign"
        _check_corrections(inp.corrections)
        try:
            due_override = datetime.fromisoformat(inp.sla_due_at) if inp.sla_due_at else None
        except ValueError:
            raise _refuse(f"sla_due_at {inp.sla_due_at!r} is not ISO 8601", INVALID) from None
        if due_override is not None and due_override.tzinfo is None:
            raise _refuse("sla_due_at needs a time zone (e.g. +00:00)", INVALID)
        async with self.app.connection() as conn, conn.transaction():
            done = await self._already_done(conn, inp.request_id, key)
        if done is not None:
            outcome, changes = done
            await self._audit(req, key, outcome, changes)
            return outcome
        async with self.app.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """SELECT id, organization_id, status, sla_due_at, channel, title, description,
                          reporter_name, reporter_email, reporter_phone, address
                   FROM service_requests WHERE id = %s FOR UPDATE""",
                (inp.request_id,),
            )
            request = await cur.fetchone()
            if request is None:
                raise _refuse(f"unknown request {inp.request_id}", NOT_FOUND)
            status = col(request, "status")
            if status in ("resolved", "closed"):
                raise _refuse(f"request {inp.request_id} is {status}", CONFLICT)
            if status != "new":
                raise _refuse(
                    f"request {inp.request_id} is not new (status {status}); only new "
                    "requests are triaged",
                    CONFLICT,
                )
            cur = await conn.execute(
                "SELECT id, organization_id, code FROM departments WHERE id = %s",
                (inp.department_id,),
            )
            dept = await cur.fetchone()
            if dept is None or col(dept, "organization_id") != col(request, "organization_id"):
                raise _refuse(f"unknown department {inp.department_id}", INVALID)
            cur = await conn.execute(
                "SELECT id, username, department_id, is_active FROM users WHERE id = %s",
                (inp.assignee_id,),
            )
            user = await cur.fetchone()
            if user is None or not col(user, "is_active"):
                raise _refuse(f"unknown or inactive assignee {inp.assignee_id}", INVALID)
            if col(user, "department_id") != inp.department_id:
                raise _refuse(
                    f"assignee {col(user, 'username')} is not in department {col(dept, 'code')}",
                    INVALID,
                )
            corrected = {
                f: (col(request, f), v)
                for f, v in sorted(inp.corrections.items())
                if col(request, f) != v
            }
            due = due_override or col(request, "sla_due_at")
            for field_name, (_old, new) in corrected.items():
                # Field names come from CORRECTABLE_FIELDS only (checked above).
                await conn.execute(
                    f"UPDATE service_requests SET {field_name} = %s WHERE id = %s",
                    (new, inp.request_id),
                )
            await conn.execute(
                """UPDATE service_requests SET status = 'assigned', priority = %s,
                       department_id = %s, sla_due_at = %s, updated_at = now()
                   WHERE id = %s""",
                (inp.priority, inp.department_id, due, inp.request_id),
            )
            cur = await conn.execute(
                """INSERT INTO assignments (request_id, department_id, assignee_id, assigned_by,
                       priority, sla_due_at, templates)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (
                    inp.request_id,
                    inp.department_id,
                    inp.assignee_id,
                    req.actor,
                    inp.priority,
                    due,
                    Jsonb(inp.templates),
                ),
            )
            assignment_id = int(col(await cur.fetchone(), "id"))
            outcome = AssignOutcome(
                assignment_id=assignment_id,
                department=col(dept, "code"),
                assignee=col(user, "username"),
                sla_due_at=due.isoformat() if due else None,
                corrected=list(corrected),
            )
            await conn.execute(
                """INSERT INTO request_timeline (request_id, actor, kind, message, details)
                   VALUES (%s, %s, 'assigned', %s, %s)""",
                (
                    inp.request_id,
                    req.actor,
                    f"Assigned to {outcome.assignee} ({outcome.department}), "
                    f"priority {inp.priority}",
                    Jsonb(
                        {
                            "key": key,
                            "assignment_id": assignment_id,
                            "department": outcome.department,
                            "assignee": outcome.assignee,
                            "priority": inp.priority,
                            "sla_due_at": outcome.sla_due_at,
                            "templates": inp.templates,
                            "corrected": outcome.corrected,
                            "changes": {f: [o, n] for f, (o, n) in corrected.items()},
                        }
                    ),
                ),
            )
        await self._audit(req, key, outcome, {f: [o, n] for f, (o, n) in corrected.items()})
        return outcome

    async def _audit(
        self, req: AssignRequest, key: str, outcome: AssignOutcome, changes: dict[str, Any]
    ) -> None:
        """One ``update`` event per corrected field, then the ``assign`` event (each once)."""
        inp = req.inp
        for field_name, (old, new) in changes.items():
            await audit_once(
                self.ops,
                AuditEventIn(
                    actor=req.actor,
                    action="update",
                    target=f"request:{inp.request_id}",
                    details={"field": field_name, "old": old, "new": new, "reason": "triage"},
                    workflow_id=req.workflow_id,
                    run_id=req.run_id,
                ),
                f"{key}/correct/{field_name}",
            )
        await audit_once(
            self.ops,
            AuditEventIn(
                actor=req.actor,
                action="assign",
                target=f"request:{inp.request_id}",
                details={
                    "assignment_id": outcome.assignment_id,
                    "department": outcome.department,
                    "assignee": outcome.assignee,
                    "priority": inp.priority,
                    "sla_due_at": outcome.sla_due_at,
                    "status": "assigned",
                    "templates": inp.templates,
                },
                workflow_id=req.workflow_id,
                run_id=req.run_id,
            ),
            key,
        )

    async def _already_done(
        self, conn: Any, request_id: int, key: str
    ) -> tuple[AssignOutcome, dict[str, Any]] | None:
        cur = await conn.execute(
            """SELECT details FROM request_timeline WHERE request_id = %s AND kind = 'assigned'
               AND details->>'key' = %s LIMIT 1""",
            (request_id, key),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        d = col(row, "details")
        outcome = AssignOutcome(
            assignment_id=int(d["assignment_id"]),
            department=str(d["department"]),
            assignee=str(d["assignee"]),
            sla_due_at=d.get("sla_due_at"),
            corrected=list(d.get("corrected") or []),
        )
        return outcome, dict(d.get("changes") or {})

    @activity.defn(name="triage.start_sla")
    async def start_sla(self, s: StartSla) -> str:
        """Signal-with-start the request's ``sla-escalation`` workflow."""
        if self.client is None:
            raise RuntimeError("starting the SLA workflow needs a Temporal client")
        return await signal_with_start(
            self.client, self.task_queue, s.request_id, s.sla_due_at, s.department, s.actor
        )
