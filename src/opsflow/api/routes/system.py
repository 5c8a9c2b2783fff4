"""Unauthenticated probes: ``/healthz`` (readiness), ``/api/health`` (liveness), ``/metrics``.

None of them needs a token, so none may carry a secret: ``/healthz`` names each dependency and
the class of its error only (details go to the log), ``/metrics`` holds counts and latencies
labelled by route template.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from opsflow.api.deps import CONNECT_TIMEOUT_S, ServicesDep, StoreDep
from opsflow.api.schemas import DependencyHealth, HealthzOut

log = structlog.get_logger("opsflow.api")

router = APIRouter(tags=["system"])

# Each probe gets this long; /healthz answers within it even when a dependency hangs.
PROBE_TIMEOUT_S = CONNECT_TIMEOUT_S


async def _probe(name: str, check: Callable[[], Awaitable[None]]) -> DependencyHealth:
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(check(), PROBE_TIMEOUT_S)
    except Exception as exc:  # any failure means "down"; the reason is logged, not shown
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        log.warning("health probe failed", dependency=name, error=str(cause))
        return DependencyHealth(
            ok=False,
            latency_ms=round((time.perf_counter() - t0) * 1000, 2),
            error=f"unreachable ({type(cause).__name__})",
        )
    return DependencyHealth(ok=True, latency_ms=round((time.perf_counter() - t0) * 1000, 2))


@router.get(
    "/healthz",
    responses={503: {"model": HealthzOut, "description": "Something is down (see `down`)."}},
)
async def healthz(services: ServicesDep, store: StoreDep) -> JSONResponse:
    """Readiness: Temporal, both databases and S3, each with its latency. No token needed."""

    async def temporal() -> None:
        client = await services.temporal.get()
        await client.service_client.check_health()

    async def opsflow_db() -> None:
        await store.ping("opsflow")

    async def app_db() -> None:
        await store.ping("app")

    async def s3() -> None:
        bucket = services.settings.s3_audit_bucket
        await asyncio.to_thread(services.s3.head_bucket, Bucket=bucket)

    names = ("temporal", "opsflow_db", "app_db", "s3")
    results = await asyncio.gather(
        *(_probe(n, f) for n, f in zip(names, (temporal, opsflow_db, app_db, s3), strict=True))
    )
    checks = dict(zip(names, results, strict=True))
    down = [n for n, r in checks.items() if not r.ok]
    body = HealthzOut(
        status="ok" if not down else "down: " + ", ".join(down), checks=checks, down=down
    )
    return JSONResponse(status_code=503 if down else 200, content=body.model_dump(mode="json"))


@router.get("/api/health")
async def liveness() -> dict[str, str]:
    """Liveness in the seed's shape, `{"status": "ok"}`: the process answers. No token needed."""
    return {"status": "ok"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}
    },
)
async def metrics(services: ServicesDep) -> Response:
    """Serve the API's Prometheus metrics (requests, latency histograms, errors).

    No token needed: they hold counts and latencies by route template, nothing secret.
    """
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
