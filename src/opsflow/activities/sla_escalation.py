"""Side effects of ``sla-escalation``: the watchlist read model, request changes, notifications.

Every write is idempotent under retries: timeline rows and audit events carry the key of the
step that wrote them (``details.key``) and are written only when no row with that key exists;
notifications go through the ledgers of the mail and SMS adapters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from temporalio import activity
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from opsflow.activities._rows import col
from opsflow.adapters import audit, runs
from opsflow.adapters.mail import Mailer, deliver_mail
from opsflow.adapters.postgres import autocommit
from opsflow.adapters.sms import SmsGateway, deliver_sms
from opsflow.shared import ids
from opsflow.shared.common import AuditEventIn, MailMessage
from opsflow.shared.sla_escalation import (
    OK,
    REVISION,
    WORKFLOW_TYPE,
    BreachOutcome,
    BreachRequest,
    EscalateRequest,
    NoteRequest,
    ReconcileInput,
    ReconcileResult,
    RequestFacts,
    ResolvedSignal,
    SlaChangedSignal,
    SlaEscalationInput,
    SlaSync,
    SupervisorNotice,
)

CLOSED = ("resolved", "closed")


# Retry-safe audit events (kept under this name for the SLA and triage activities).
audit_once = audit.record_event_once


async def _together(*parts: Awaitable[Any]) -> None:
    """Run ``parts`` at once; once all have finished, raise the first failure, if any.

    Every part runs to its end even when another fails, so a retry finds each one either
    done or not started, never cut off halfway.
    """
    for outcome in await asyncio.gather(*parts, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def _timeline_once(
    conn: Any, request_id: int, actor: str, kind: str, message: str, details: dict[str, Any]
) -> bool:
    """Insert a timeline row unless one with the same ``details.key`` exists; True if new."""
    cur = await conn.execute(
        """SELECT 1 FROM request_timeline WHERE request_id = %s AND kind = %s
           AND details->>'key' = %s LIMIT 1""",
        (request_id, kind, details["key"]),
    )
    if await cur.fetchone() is not None:
        return False
    await conn.execute(
        """INSERT INTO request_timeline (request_id, actor, kind, message, details)
           VALUES (%s, %s, %s, %s, %s)""",
        (request_id, actor, kind, message, Jsonb(details)),
    )
    return True


class SlaEscalationActivities:
    """Reads and writes the operated app's requests and opsflow's read model and ledgers."""

    def __init__(
        self,
        app_pool: AsyncConnectionPool,
        opsflow_pool: AsyncConnectionPool,
        mailer: Mailer,
        sms: SmsGateway,
    ) -> None:
        self.app = app_pool
        self.ops = opsflow_pool
        self.mailer = mailer
        self.sms = sms

    @activity.defn(name="sla.sync")
    async def sync(self, s: SlaSync) -> RequestFacts:
        """Upsert the request's watchlist row (and the run's row); return the request's facts."""
        if s.run is not None:
            await runs.record(self.ops, s.run)
        # Single statements in autocommit: one round trip each, no BEGIN and COMMIT around.
        async with self.app.connection() as conn, autocommit(conn):
            cur = await conn.execute(
                """SELECT r.status, r.priority, r.reference, r.title, r.department_id,
                          d.code AS department, u.username AS assignee
                   FROM service_requests r
                   LEFT JOIN LATERAL (
                       SELECT a.department_id, a.assignee_id FROM assignments a
                       WHERE a.request_id = r.id ORDER BY a.id DESC LIMIT 1) a ON true
                   LEFT JOIN departments d ON d.id = COALESCE(a.department_id, r.department_id)
                   LEFT JOIN users u ON u.id = a.assignee_id
                   WHERE r.id = %s""",
                (s.request_id,),
            )
            row = await cur.fetchone()
        if row is None:
            facts = RequestFacts(request_id=s.request_id, exists=False)
        else:
            facts = RequestFacts(
                request_id=s.request_id,
                status=col(row, "status"),
                department=col(row, "department") or "",
                department_id=col(row, "department_id"),
                assignee=col(row, "assignee") or "",
                priority=col(row, "priority"),
            )
        async with self.ops.connection() as conn, autocommit(conn):
            await conn.execute(
                """INSERT INTO sla_watchlist (request_id, workflow_id, reference, title,
                       department_id, department, assignee, priority, status, sla_due_at, state,
                       escalations, breached_at, updated_at)
                   VALUES (%(id)s, %(wf)s, %(ref)s, %(title)s, %(dept_id)s, %(dept)s,
                           %(assignee)s, %(priority)s, %(status)s, %(due)s, %(state)s,
                           %(esc)s, %(breached)s, now())
                   ON CONFLICT (request_id) DO UPDATE SET
                       workflow_id = EXCLUDED.workflow_id, reference = EXCLUDED.reference,
                       title = EXCLUDED.title, department_id = EXCLUDED.department_id,
                       department = EXCLUDED.department, assignee = EXCLUDED.assignee,
                       priority = EXCLUDED.priority, status = EXCLUDED.status,
                       sla_due_at = EXCLUDED.sla_due_at, state = EXCLUDED.state,
                       escalations = EXCLUDED.escalations, breached_at = EXCLUDED.breached_at,
                       updated_at = now()""",
                {
                    "id": s.request_id,
                    "wf": s.workflow_id,
                    "ref": col(row, "reference") if row else None,
                    "title": col(row, "title") if row else None,
                    "dept_id": facts.department_id,
                    "dept": facts.department or None,
                    "assignee": facts.assignee or None,
                    "priority": facts.priority or None,
                    "status": facts.status or None,
                    "due": datetime.fromisoformat(s.due_at),
                    "state": s.state,
                    "esc": s.escalations,
                    "breached": datetime.fromisoformat(s.breached_at) if s.breached_at else None,
                },
            )
        return facts

    @activity.defn(name="sla.breach")
    async def breach(self, req: BreachRequest) -> BreachOutcome:
        """Past the due time and unresolved: status change with a reason, once per due time.

        The request waits on an outside party when its latest communication is outbound (a
        question sent, no answer since): it becomes ``waiting_external``; otherwise
        ``in_progress``.
        """
        key = f"{req.workflow_id}/breach/{req.due_at}"
        async with self.app.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT status FROM service_requests WHERE id = %s FOR UPDATE", (req.request_id,)
            )
            row = await cur.fetchone()
            if row is None or col(row, "status") in CLOSED:
                return BreachOutcome(changed=False, old_status=col(row, "status") if row else "")
            old = col(row, "status")
            cur = await conn.execute(
                """SELECT direction, sent_at FROM communications WHERE request_id = %s
                   ORDER BY sent_at DESC, id DESC LIMIT 1""",
                (req.request_id,),
            )
            last = await cur.fetchone()
            if last is not None and col(last, "direction") == "outbound":
                new = "waiting_external"
                reason = (
                    f"SLA due {req.due_at} passed unresolved; waiting on a reply to the outbound "
                    f"message of {col(last, 'sent_at').isoformat()}"
                )
            else:
                new = "in_progress"
                reason = f"SLA due {req.due_at} passed unresolved; work must continue now"
            written = await _timeline_once(
                conn,
                req.request_id,
                req.actor,
                "sla_breach",
                reason,
                {"key": key, "due_at": req.due_at, "old_status": old, "new_status": new},
            )
            if not written:
                return BreachOutcome(changed=False, old_status=old, new_status=old, reason="")
            await conn.execute(
                "UPDATE service_requests SET status = %s, updated_at = now() WHERE id = %s",
                (new, req.request_id),
            )
        await audit_once(
            self.ops,
            AuditEventIn(
                actor=req.actor,
                action="sla.breach",
                target=f"request:{req.request_id}",
                details={
                    "due_at": req.due_at,
                    "old_status": old,
                    "new_status": new,
                    "reason": reason,
                },
                workflow_id=req.workflow_id,
            ),
            key,
        )
        return BreachOutcome(changed=True, old_status=old, new_status=new, reason=reason)

    @activity.defn(name="sla.escalate")
    async def escalate(self, req: EscalateRequest) -> None:
        """Priority critical and expedited, with a timeline entry and an audit event.

        With ``notices``, the supervisors' mail and SMS go out at the same time as the
        request change; with ``sync``, the watchlist row is written after it. Every part is
        idempotent on its own key, so a retry (an SMS gateway that was down) repeats only
        what did not happen: the request change, the mail and the SMS each happen once.
        """
        # One lookup of the supervisors for both notices (mail and SMS go to the same people).
        supervisors = (
            asyncio.ensure_future(self._supervisors(req.request_id)) if req.notices else None
        )
        await _together(
            self._escalate_request(req), *(self._notify(n, supervisors) for n in req.notices)
        )

    async def _escalate_request(self, req: EscalateRequest) -> None:
        # Pipelined: BEGIN and the row lock go out together, the timeline check alone, the
        # writes with COMMIT: three round trips instead of six, each a wait for a busy worker.
        async with self.app.connection() as conn, conn.pipeline(), conn.transaction():
            cur = await conn.execute(
                "SELECT priority FROM service_requests WHERE id = %s FOR UPDATE",
                (req.request_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return
            old = col(row, "priority")
            written = await _timeline_once(
                conn,
                req.request_id,
                req.actor,
                "sla_escalation",
                f"Escalated by {req.actor}: {req.reason}",
                {"key": req.key, "reason": req.reason, "old_priority": old},
            )
            if written:
                await conn.execute(
                    """UPDATE service_requests SET priority = 'critical', expedited = true,
                       updated_at = now() WHERE id = %s""",
                    (req.request_id,),
                )
        audited = audit_once(
            self.ops,
            AuditEventIn(
                actor=req.actor,
                action="sla.escalate",
                target=f"request:{req.request_id}",
                details={
                    "reason": req.reason,
                    "old_priority": old,
                    "priority": "critical",
                    "expedited": True,
                },
                workflow_id=req.workflow_id,
            ),
            req.key,
        )
        # The audit event and the read model are independent of each other: both at once.
        if req.sync is None:
            await audited
            return
        await _together(audited, self.sync(req.sync))

    @activity.defn(name="sla.add_note")
    async def add_note(self, req: NoteRequest) -> None:
        """Write a follow-up note to the request timeline (actor = its author), audited."""
        async with self.app.connection() as conn, conn.transaction():
            await _timeline_once(
                conn, req.request_id, req.actor, "note", req.text, {"key": req.key}
            )
        await audit_once(
            self.ops,
            AuditEventIn(
                actor=req.actor,
                action="sla.note",
                target=f"request:{req.request_id}",
                details={"text": req.text[:500]},
                workflow_id=req.workflow_id,
            ),
            req.key,
        )

    async def _supervisors(self, request_id: int) -> tuple[list[str], list[str]]:
        async with self.app.connection() as conn, autocommit(conn):
            cur = await conn.execute(
                """WITH dept AS (
                       SELECT COALESCE(
                           (SELECT a.department_id FROM assignments a WHERE a.request_id = r.id
                            ORDER BY a.id DESC LIMIT 1), r.department_id) AS id
                       FROM service_requests r WHERE r.id = %s)
                   SELECT u.email, u.phone FROM users u, dept
                   WHERE u.department_id = dept.id AND u.role = 'supervisor' AND u.is_active
                   UNION
                   SELECT d.supervisor_email, NULL FROM departments d, dept
                   WHERE d.id = dept.id AND d.supervisor_email IS NOT NULL""",
                (request_id,),
            )
            rows = await cur.fetchall()
        emails = sorted({col(r, "email") for r in rows if col(r, "email")})
        phones = sorted({col(r, "phone") for r in rows if col(r, "phone")})
        return emails, phones

    @activity.defn(name="sla.notify_supervisors")
    async def notify_supervisors(self, n: SupervisorNotice) -> int:
        """Notify the request's department supervisors on one channel; return how many."""
        return await self._notify(n)

    async def _notify(
        self,
        n: SupervisorNotice,
        supervisors: asyncio.Future[tuple[list[str], list[str]]] | None = None,
    ) -> int:
        lookup = supervisors if supervisors is not None else self._supervisors(n.request_id)
        emails, phones = await lookup
        if n.channel == "sms":
            if not phones:
                # Recorded as ``suppressed`` below; say so where an engineer looks first.
                activity.logger.warning("no supervisor phone to text for request %s", n.request_id)
            text = f"{n.subject}\n{n.body}"[:480]
            await deliver_sms(self.ops, self.sms, n.idempotency_key, phones, text)
            return len(phones)
        if not emails:
            activity.logger.warning("no supervisor to notify for request %s", n.request_id)
            return 0
        await deliver_mail(
            self.ops,
            self.mailer,
            MailMessage(
                idempotency_key=n.idempotency_key,
                to=emails,
                subject=n.subject,
                body=n.body,
                kind="sla-escalation",
            ),
        )
        return len(emails)


async def signal_with_start(
    client: Client,
    task_queue: str,
    request_id: int,
    due_at: str,
    department: str,
    actor: str,
    *,
    signal: bool = True,
) -> str:
    """Start the request's ``sla-escalation`` workflow, or tell the running one the due time.

    Signal-with-start keeps one workflow per request whatever happens twice: a second triage,
    the reconciler and a triage at the same moment. Without ``signal`` a running workflow is
    left alone (the reconciler's "make sure it runs").

    Returns:
        The workflow id.

    """
    workflow_id = ids.sla_workflow_id(request_id)
    inp = SlaEscalationInput(
        request_id=request_id, sla_due_at=due_at, department=department, revision=REVISION
    )
    kwargs: dict[str, Any] = {}
    if signal:
        kwargs["start_signal"] = "sla_changed"
        kwargs["start_signal_args"] = [SlaChangedSignal(new_due_at=due_at, actor=actor)]
    else:
        # Eager start: when ``client`` is a worker's (the reconciler's is) and that worker
        # polls ``task_queue``, the server hands the first workflow task back in the answer
        # to the start: no matching, one write fewer. Arming 1,500 workflows of one timer on
        # the dev server, interleaved: 18.6 and 19.7 ms of its CPU each without, 16.9 and
        # 16.2 with. Those first tasks, and the later ones (sticky), go to that worker.
        kwargs["request_eager_start"] = True
    try:
        await client.start_workflow(
            WORKFLOW_TYPE,
            inp,
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(
                        SearchAttributeKey.for_keyword(ids.SA_RUNBOOK), WORKFLOW_TYPE
                    ),
                    SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_ACTOR), actor),
                    SearchAttributePair(
                        SearchAttributeKey.for_keyword(ids.SA_TENANT), ids.SYSTEM_TENANT
                    ),
                    # What the workflow would publish first (a newly armed SLA is "ok"), so
                    # arming writes no visibility update of its own.
                    SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_STATE), OK),
                    SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_SLA_STATE), OK),
                    SearchAttributePair(
                        SearchAttributeKey.for_datetime(ids.SA_SLA_DUE_AT),
                        datetime.fromisoformat(due_at),
                    ),
                    SearchAttributePair(
                        SearchAttributeKey.for_keyword(ids.SA_REQUEST_ID), str(request_id)
                    ),
                    SearchAttributePair(
                        SearchAttributeKey.for_keyword(ids.SA_DEPARTMENT), department or "-"
                    ),
                ]
            ),
            memo={ids.MEMO_ACTOR: actor, ids.MEMO_RUNBOOK: WORKFLOW_TYPE},
            static_summary=f"SLA of request {request_id}, due {due_at}",
            **kwargs,
        )
    except WorkflowAlreadyStartedError:
        pass  # running already and no signal wanted
    return workflow_id


class SlaReconcilerActivities:
    """The reconciler: every open request with a due time has its workflow, no orphan runs."""

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

    @activity.defn(name="sla.reconcile")
    async def reconcile(self, inp: ReconcileInput) -> ReconcileResult:
        """Compare open requests with the watchlist read model; start, re-arm and end runs."""
        if self.client is None:
            raise RuntimeError("the reconciler needs a Temporal client")
        client = self.client
        org = inp.organization_id
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """SELECT r.id, r.sla_due_at, COALESCE(d.code, '') AS department
                   FROM service_requests r LEFT JOIN departments d ON d.id = r.department_id
                   WHERE r.status NOT IN ('resolved', 'closed') AND r.sla_due_at IS NOT NULL
                     AND (%s::bigint IS NULL OR r.organization_id = %s)""",
                (org, org),
            )
            open_rows = {int(col(r, "id")): r for r in await cur.fetchall()}
        async with self.ops.connection() as conn:
            cur = await conn.execute(
                "SELECT request_id, sla_due_at, state FROM sla_watchlist WHERE state <> 'resolved'"
            )
            watched = {int(col(r, "request_id")): r for r in await cur.fetchall()}
        # Watched requests that are no longer open with a due time (in scope) are orphans.
        async with self.app.connection() as conn:
            cur = await conn.execute(
                """SELECT id FROM service_requests WHERE id = ANY(%s)
                   AND status NOT IN ('resolved', 'closed') AND sla_due_at IS NOT NULL""",
                (list(watched),),
            )
            still_open = {int(col(r, "id")) for r in await cur.fetchall()}
            in_scope = set(watched)
            if org is not None:
                cur = await conn.execute(
                    "SELECT id FROM service_requests WHERE id = ANY(%s) AND organization_id = %s",
                    (list(watched), org),
                )
                in_scope = {int(col(r, "id")) for r in await cur.fetchall()}
        orphans = [rid for rid in watched if rid in in_scope and rid not in still_open]
        result = ReconcileResult(open_requests=len(open_rows))
        actor = ids.schedule_actor("sla-reconciler")
        gate = asyncio.Semaphore(inp.concurrency)
        done = 0

        async def arm(request_id: int, row: Any, rearm: bool) -> None:
            nonlocal done
            async with gate:
                try:
                    await signal_with_start(
                        client,
                        self.task_queue,
                        request_id,
                        col(row, "sla_due_at").isoformat(),
                        col(row, "department"),
                        actor,
                        signal=rearm,
                    )
                    if rearm and request_id in watched:
                        result.rearmed += 1
                    else:
                        result.started += 1
                except Exception as exc:  # one bad request must not stop the others
                    result.failed += 1
                    activity.logger.warning("cannot arm request %s: %s", request_id, exc)
                done += 1
                if done % 200 == 0:
                    activity.heartbeat(done)

        async def end(request_id: int) -> None:
            nonlocal done
            async with gate:
                try:
                    await client.get_workflow_handle(ids.sla_workflow_id(request_id)).signal(
                        "request_resolved", ResolvedSignal(actor=actor)
                    )
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        result.failed += 1
                        return
                    # No run left to tell: close the read model row ourselves.
                    async with self.ops.connection() as conn:
                        await conn.execute(
                            """UPDATE sla_watchlist SET state = 'resolved', updated_at = now()
                               WHERE request_id = %s""",
                            (request_id,),
                        )
                result.ended += 1
                done += 1

        tasks = []
        for request_id, row in open_rows.items():
            seen = watched.get(request_id)
            if seen is None:
                tasks.append(arm(request_id, row, rearm=False))
            elif col(seen, "sla_due_at") != col(row, "sla_due_at"):
                tasks.append(arm(request_id, row, rearm=True))
        tasks.extend(end(request_id) for request_id in orphans)
        await asyncio.gather(*tasks)
        return result
