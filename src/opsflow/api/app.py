"""The FastAPI application: ``create_app(settings)``.

The lifespan builds, once, the Temporal client, a pool for each database and the S3 client.
Connections are made in the background at start-up and again on first use if that failed, so
the API serves ``/api/health`` and ``/healthz`` (which then names what is down) while its
dependencies come up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI

from opsflow import __version__
from opsflow.adapters.s3 import make_s3_client
from opsflow.api.deps import APP_DB, CONNECT_TIMEOUT_S, OPSFLOW_DB, Lazy, Services
from opsflow.api.errors import install_error_handlers
from opsflow.api.metrics import ApiMetrics
from opsflow.api.middleware import MAX_BODY_BYTES, BodyLimitMiddleware, RequestContextMiddleware
from opsflow.api.routes import audit, health, runbooks, runs, sla, system
from opsflow.api.routes import settings as settings_routes
from opsflow.config import Settings, get_settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow
    from psycopg_pool import AsyncConnectionPool
    from temporalio.client import Client

log = structlog.get_logger("opsflow.api")

# Opening a pool waits for its first connection; give it longer than a pooled checkout.
POOL_OPEN_TIMEOUT_S = 15.0

DESCRIPTION = """
Start, signal, update, query and cancel opsflow runbooks (durable Temporal workflows), read
their runs and the hash-chained audit log.

**Authentication:** `Authorization: Bearer <token>` on every route except `/healthz`,
`/api/health`, `/metrics` and these docs. Tokens come from `opsflow token create --role R
--name N`; each carries one role (operator, supervisor, auditor, compliance, admin,
superadmin), and each runbook declares which roles may start it and send each signal, update
and query (`GET /runbooks`).

**Errors:** JSON `{"detail": ...}`: 400 malformed JSON, 401 missing/invalid token, 403 wrong
role, 404 unknown runbook/run/signal/query, 409 conflict, 413 body over 1 MiB, 422 schema
violation (naming the field), 503 Temporal or a database unavailable.
"""


def build_services(settings: Settings, metrics: ApiMetrics) -> Services:
    """Declare the app's clients; nothing connects until first use (or the warm-up)."""
    from opsflow.worker.client import connect

    async def temporal() -> Client:
        return await connect(settings)

    def pool_factory(url: str, name: str) -> Lazy[AsyncConnectionPool[AsyncConnection[DictRow]]]:
        async def make() -> AsyncConnectionPool[AsyncConnection[DictRow]]:
            from opsflow.adapters.postgres import open_pool

            pool = await open_pool(
                url, name=name, max_size=settings.db_pool_max, timeout=POOL_OPEN_TIMEOUT_S - 1
            )
            # Checkouts wait at most this long, so an outage answers 503 quickly.
            pool.timeout = CONNECT_TIMEOUT_S
            return pool

        async def close(pool: AsyncConnectionPool[AsyncConnection[DictRow]]) -> None:
            await pool.close()

        return Lazy(name, make, close, timeout_s=POOL_OPEN_TIMEOUT_S)

    token_cache = None
    if settings.api_token_cache_s > 0:
        from opsflow.adapters.token_cache import TokenCache

        token_cache = TokenCache(
            settings.database_url.get_secret_value(), ttl_s=settings.api_token_cache_s
        )
        metrics.watch_token_cache(token_cache)
    return Services(
        settings=settings,
        token_cache=token_cache,
        temporal=Lazy("temporal", temporal),
        opsflow_pool=pool_factory(settings.database_url.get_secret_value(), OPSFLOW_DB),
        app_pool=pool_factory(settings.target_database_url.get_secret_value(), APP_DB),
        s3=make_s3_client(settings),
        metrics=metrics,
    )


async def _warm(services: Services) -> None:
    async def one(lazy: Lazy[object]) -> None:
        with contextlib.suppress(Exception):  # logged by Lazy; retried on first use
            await lazy.get()

    await asyncio.gather(
        one(services.temporal),  # type: ignore[arg-type]
        one(services.opsflow_pool),  # type: ignore[arg-type]
        one(services.app_pool),  # type: ignore[arg-type]
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API application.

    Args:
        settings: Configuration; defaults to the process settings (environment, then
            ``.opsflow/env``).

    Returns:
        The FastAPI app, ready for uvicorn or a test client.

    """
    settings = settings or get_settings()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, metrics)
        app.state.services = services
        warm = asyncio.create_task(_warm(services))
        listener = None
        if services.token_cache is not None:
            listener = asyncio.create_task(services.token_cache.run())
        log.info(
            "api starting",
            temporal=settings.temporal_address,
            namespace=settings.temporal_namespace,
        )
        try:
            yield
        finally:
            for task in (warm, listener):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await services.close()
            log.info("api stopped")

    app = FastAPI(
        title="opsflow API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "runbooks", "description": "The catalog; start runs."},
            {"name": "runs", "description": "Read runs; signal, update, query, cancel."},
            {"name": "audit", "description": "The hash-chained audit log."},
            {"name": "health", "description": "The health-check runbook's report."},
            {"name": "settings", "description": "The seed's developer-role switch."},
            {"name": "system", "description": "Probes and metrics (no token)."},
        ],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    # Added last = outermost: the request log and metrics see every answer, 413s included.
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    for module in (runbooks, runs, audit, health, settings_routes, sla, system):
        app.include_router(module.router)
    return app
