"""``/sla``: the SLA watchlist (seed 000, "Escalating SLA Breaches") and one-click actions.

The watchlist reads ``sla_watchlist``, the read model the ``sla-escalation`` workflows keep:
open requests whose ``sla_due_at`` is less than 24 hours away, overdue ones included and marked
breached. Escalations and notes are signals to the request's workflow, sent through the same
path as ``POST /runs/{id}/signals/{name}`` (role-checked by the catalog, audited).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import psycopg
import psycopg_pool
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from opsflow.api.actions import CtxDep, signal_runbook_run
from opsflow.api.auth import CallerDep, require_role
from opsflow.api.deps import OPSFLOW_DB, CatalogDep, MetricsDep, ServicesDep
from opsflow.api.errors import ServiceUnavailable
from opsflow.api.routes import AUTH_ERRORS, BODY_ERRORS, NOT_FOUND
from opsflow.shared import ids
from opsflow.shared.roles import Role, roles
from opsflow.shared.sla_escalation import BREACHED, WATCH_HOURS
from opsflow.shared.sla_escalation import WORKFLOW_TYPE as SLA_RUNBOOK

router = APIRouter(tags=["sla"])

WATCHLIST_READERS = roles(Role.OPERATOR, Role.SUPERVISOR, Role.AUDITOR, Role.ADMIN, Role.SUPERADMIN)
RequestId = Annotated[int, Path(ge=1, description="The service request's id.")]


class WatchItem(BaseModel):
    """One request on the SLA watchlist."""

    request_id: int
    reference: str | None = None
    title: str | None = None
    department: str | None = None
    assignee: str | None = None
    priority: str | None = None
    state: str = Field(description="ok | watch | escalated | breached (overdue is breached).")
    breached: bool
    sla_due_at: datetime
    seconds_left: int = Field(description="Seconds until the due time (negative: overdue).")
    escalations: int = 0
    workflow_id: str


class WatchlistOut(BaseModel):
    """A page of the watchlist, soonest due first."""

    total: int
    limit: int
    offset: int
    items: list[WatchItem]


@router.get("/sla/watchlist", responses=AUTH_ERRORS)
async def watchlist(
    caller: CallerDep,
    services: ServicesDep,
    metrics: MetricsDep,
    department: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WatchlistOut:
    """Open requests due within 24 hours (overdue included, marked breached), soonest first."""
    require_role(caller, WATCHLIST_READERS, "reading the SLA watchlist", metrics)
    where = """state <> 'resolved' AND COALESCE(status, '') NOT IN ('resolved', 'closed')
               AND sla_due_at < now() + make_interval(hours => %(hours)s)
               AND (%(dept)s::text IS NULL OR department = %(dept)s)"""
    params: dict[str, Any] = {
        "hours": WATCH_HOURS,
        "dept": department,
        "limit": limit,
        "offset": offset,
    }
    try:
        pool = await services.opsflow_pool.get()
        async with pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*) AS n FROM sla_watchlist WHERE {where}",
                params,
            )
            total_row = await cur.fetchone()
            cur = await conn.execute(
                f"""SELECT *, extract(epoch FROM sla_due_at - now())::bigint AS seconds_left
                    FROM sla_watchlist WHERE {where}
                    ORDER BY sla_due_at, request_id LIMIT %(limit)s OFFSET %(offset)s""",
                params,
            )
            rows = await cur.fetchall()
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
        raise ServiceUnavailable(OPSFLOW_DB) from exc
    items = []
    for r in rows:
        overdue = int(r["seconds_left"]) <= 0
        state = str(r["state"])
        items.append(
            WatchItem(
                request_id=r["request_id"],
                reference=r["reference"],
                title=r["title"],
                department=r["department"],
                assignee=r["assignee"],
                priority=r["priority"],
                state=BREACHED if overdue and state != "escalated" else state,
                breached=overdue,
                sla_due_at=r["sla_due_at"],
                seconds_left=int(r["seconds_left"]),
                escalations=r["escalations"],
                workflow_id=r["workflow_id"],
            )
        )
    total = int(total_row["n"]) if total_row else 0
    return WatchlistOut(total=total, limit=limit, offset=offset, items=items)


class EscalateIn(BaseModel):
    """Why the request is escalated."""

    reason: str = Field(min_length=3, max_length=500, examples=["Road flooded, crew needed"])


class NoteIn(BaseModel):
    """A follow-up note for the request timeline."""

    text: str = Field(min_length=1, max_length=2000)


async def _signal(ctx: Any, catalog: Any, request_id: int, name: str, body: bytes) -> Response:
    # sla:request:<id> is always an sla-escalation run: no describe before the signal.
    spec = catalog[SLA_RUNBOOK]
    await signal_runbook_run(ctx, spec, ids.sla_workflow_id(request_id), name, body)
    return Response(status_code=202)


@router.post(
    "/sla/requests/{request_id}/escalate",
    status_code=202,
    responses={**AUTH_ERRORS, **NOT_FOUND, **BODY_ERRORS, 409: {"description": "Run ended."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EscalateIn.model_json_schema()}},
        }
    },
)
async def escalate(
    request_id: RequestId, request: Request, ctx: CtxDep, catalog: CatalogDep
) -> Response:
    """Supervisor's one-click escalate: mail + SMS to supervisors, priority critical, expedite."""
    return await _signal(ctx, catalog, request_id, "escalate", await request.body())


@router.post(
    "/sla/requests/{request_id}/notes",
    status_code=202,
    responses={**AUTH_ERRORS, **NOT_FOUND, **BODY_ERRORS, 409: {"description": "Run ended."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": NoteIn.model_json_schema()}},
        }
    },
)
async def add_note(
    request_id: RequestId, request: Request, ctx: CtxDep, catalog: CatalogDep
) -> Response:
    """Add a follow-up note to the request timeline, with the caller as its author."""
    return await _signal(ctx, catalog, request_id, "add_note", await request.body())
