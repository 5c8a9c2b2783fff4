"""``GET /health/report``: the latest health check and the open alerts."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder

from opsflow.api.auth import CallerDep, require_role
from opsflow.api.deps import MetricsDep, StoreDep
from opsflow.api.routes import AUTH_ERRORS
from opsflow.api.schemas import HealthReportOut
from opsflow.shared.roles import Role, roles

router = APIRouter(tags=["health"])

REPORT_READERS = roles(Role.OPERATOR, Role.SUPERVISOR, Role.AUDITOR, Role.ADMIN, Role.SUPERADMIN)


@router.get("/health/report", responses=AUTH_ERRORS)
async def health_report(caller: CallerDep, store: StoreDep, metrics: MetricsDep) -> HealthReportOut:
    """Return the latest `health_check_runs` row (null before any check) and open alerts."""
    require_role(caller, REPORT_READERS, "reading the health report", metrics)
    latest, alerts = await store.health_report()
    return HealthReportOut(
        latest=jsonable_encoder(latest) if latest is not None else None,
        open_alerts=jsonable_encoder(alerts),
    )
