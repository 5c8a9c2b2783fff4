"""``GET /audit``: read the hash-chained audit log (auditor, compliance, superadmin)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from opsflow.api.auth import CallerDep, require_role
from opsflow.api.deps import MetricsDep, StoreDep
from opsflow.api.routes import AUTH_ERRORS
from opsflow.api.schemas import AuditEventOut, AuditListOut
from opsflow.shared.roles import Role, roles

router = APIRouter(tags=["audit"])

AUDIT_READERS = roles(Role.AUDITOR, Role.COMPLIANCE, Role.SUPERADMIN)
_NO_NUL = r"^[^\x00]*$"
TextFilter = Annotated[str | None, Query(max_length=500, pattern=_NO_NUL)]


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@router.get("/audit", responses=AUTH_ERRORS)
async def list_audit_events(
    caller: CallerDep,
    store: StoreDep,
    metrics: MetricsDep,
    actor: TextFilter = None,
    action: TextFilter = None,
    target: TextFilter = None,
    since: Annotated[datetime | None, Query(description="Occurred at or after.")] = None,
    until: Annotated[datetime | None, Query(description="Occurred before.")] = None,
    after_id: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditListOut:
    """Audit events oldest first; page with `after_id` = the previous page's `next_after_id`."""
    require_role(caller, AUDIT_READERS, "reading the audit log", metrics)
    records = await store.query_events(
        actor=actor,
        action=action,
        target=target,
        since=_utc(since),
        until=_utc(until),
        after_id=after_id,
        limit=limit,
    )
    items = [AuditEventOut.model_validate(dataclasses.asdict(r)) for r in records]
    next_after_id = items[-1].id if len(items) == limit else None
    return AuditListOut(items=items, next_after_id=next_after_id)
