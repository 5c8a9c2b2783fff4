"""Dependencies of the routes: settings, the Temporal client, the platform store, the catalog.

The app's lifespan builds one :class:`Services` (Temporal client, a pool per database, an S3
client). A dependency that cannot be reached at start-up is connected on first use instead, so
the API starts (and ``/healthz`` reports what is down) even while Temporal or a database is
still coming up. Routes get everything through ``Annotated`` dependencies, which tests replace
with fakes via ``app.dependency_overrides``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import structlog
from fastapi import Depends, Request
from temporalio.client import Client

from opsflow.api.errors import ServiceUnavailable
from opsflow.api.metrics import ApiMetrics
from opsflow.catalog import RUNBOOKS, RunbookSpec
from opsflow.config import Settings
from opsflow.shared.common import AuditEventIn, RunRecord

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from mypy_boto3_s3 import S3Client
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow
    from psycopg_pool import AsyncConnectionPool

    from opsflow.adapters.audit import AuditRecord
    from opsflow.adapters.idempotency import IdempotencyRecord
    from opsflow.adapters.token_cache import TokenCache
    from opsflow.adapters.tokens import TokenInfo

log = structlog.get_logger("opsflow.api")

T = TypeVar("T")

# How long a request waits for a pooled connection or a first connect before answering 503;
# the pool's own default (30 s) would hold a client far too long during an outage.
CONNECT_TIMEOUT_S = 5.0

OPSFLOW_DB = "opsflow database"
APP_DB = "app database"


class Lazy(Generic[T]):
    """A resource built on first successful use and kept; failures retry on the next use."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Awaitable[T]],
        closer: Callable[[T], Awaitable[None]] | None = None,
        timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._factory = factory
        self._closer = closer
        self._timeout_s = timeout_s
        self._value: T | None = None
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """True once the resource has been built."""
        return self._value is not None

    async def get(self) -> T:
        """Return the resource, building it now if needed.

        Raises:
            ServiceUnavailable: it cannot be built (the reason is logged, not returned).

        """
        if self._value is not None:
            return self._value
        async with self._lock:
            if self._value is None:
                try:
                    self._value = await asyncio.wait_for(self._factory(), self._timeout_s)
                except Exception as exc:  # any connect failure means "unavailable"
                    log.warning("cannot connect", service=self.name, error=str(exc))
                    raise ServiceUnavailable(self.name) from exc
                log.info("connected", service=self.name)
            return self._value

    async def close(self) -> None:
        """Close the resource if it was built."""
        value, self._value = self._value, None
        if value is not None and self._closer is not None:
            try:
                await self._closer(value)
            except Exception as exc:  # closing must never mask the shutdown
                log.warning("close failed", service=self.name, error=str(exc))


@dataclass
class Services:
    """Everything the lifespan builds once and routes share."""

    settings: Settings
    temporal: Lazy[Client]
    opsflow_pool: Lazy[AsyncConnectionPool[AsyncConnection[DictRow]]]
    app_pool: Lazy[AsyncConnectionPool[AsyncConnection[DictRow]]]
    s3: S3Client
    metrics: ApiMetrics
    token_cache: TokenCache | None = None

    async def close(self) -> None:
        """Close pools; the Temporal client needs no explicit close."""
        await self.opsflow_pool.close()
        await self.app_pool.close()


class PlatformStore:
    """The platform's tables as the API uses them, over ``opsflow.adapters``.

    A database outage surfaces as :class:`ServiceUnavailable` naming the database, so the
    client reads which dependency is down.
    """

    def __init__(self, services: Services) -> None:
        self._services = services

    @asynccontextmanager
    async def _guard(self, name: str) -> AsyncIterator[None]:
        import psycopg
        import psycopg_pool

        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            log.warning("database call failed", service=name, error=str(exc))
            raise ServiceUnavailable(name) from exc

    async def _ops(self) -> AsyncConnectionPool[AsyncConnection[DictRow]]:
        return await self._services.opsflow_pool.get()

    async def _app(self) -> AsyncConnectionPool[AsyncConnection[DictRow]]:
        return await self._services.app_pool.get()

    async def authenticate(self, token: str) -> TokenInfo | None:
        """Return the token's info, or None if unknown or revoked."""
        from opsflow.adapters import tokens

        cache = self._services.token_cache
        async with self._guard(OPSFLOW_DB):
            if cache is not None:
                return await cache.authenticate(await self._ops(), token)
            return await tokens.authenticate(await self._ops(), token)

    async def record_event(self, event: AuditEventIn) -> AuditRecord:
        """Append one event to the audit chain."""
        from opsflow.adapters import audit

        async with self._guard(OPSFLOW_DB):
            return await audit.record_event(await self._ops(), event)

    async def query_events(self, **filters: Any) -> list[AuditRecord]:
        """Read audit events (filters as ``opsflow.adapters.audit.query_events``)."""
        from opsflow.adapters import audit

        async with self._guard(OPSFLOW_DB):
            pool = await self._ops()
            async with pool.connection() as conn:
                return await audit.query_events(conn, **filters)

    async def upsert_run(self, rec: RunRecord, *, started_at: datetime | None = None) -> None:
        """Write the run's row of the ``runs`` read model."""
        from opsflow.adapters import runs

        async with self._guard(OPSFLOW_DB):
            await runs.upsert_run(await self._ops(), rec, started_at=started_at)

    async def get_run(self, workflow_id: str) -> dict[str, Any] | None:
        """Return the latest ``runs`` row of a workflow id, or None."""
        from opsflow.adapters import runs

        async with self._guard(OPSFLOW_DB):
            return await runs.get_run(await self._ops(), workflow_id)

    async def list_runs(self, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """Return a page of the ``runs`` read model and the total count."""
        from opsflow.adapters import runs

        async with self._guard(OPSFLOW_DB):
            return await runs.list_runs(await self._ops(), **filters)

    async def idempotency_lookup(self, actor: str, key: str) -> IdempotencyRecord | None:
        """Return what a previous request with this key answered, or None."""
        from opsflow.adapters import idempotency

        async with self._guard(OPSFLOW_DB):
            return await idempotency.lookup(await self._ops(), actor, key)

    async def idempotency_remember(self, rec: IdempotencyRecord) -> IdempotencyRecord:
        """Store a response under its key; returns the stored record (the first one wins)."""
        from opsflow.adapters import idempotency

        async with self._guard(OPSFLOW_DB):
            return await idempotency.remember(await self._ops(), rec)

    async def health_report(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Return the latest ``health_check_runs`` row and the open ``health_alerts``."""
        async with self._guard(OPSFLOW_DB):
            pool = await self._ops()
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT * FROM health_check_runs ORDER BY checked_at DESC, id DESC LIMIT 1"
                )
                latest = await cur.fetchone()
                cur = await conn.execute(
                    "SELECT * FROM health_alerts WHERE resolved_at IS NULL ORDER BY raised_at, id"
                )
                alerts = await cur.fetchall()
        return (dict(latest) if latest else None), [dict(a) for a in alerts]

    async def app_setting(self, key: str) -> Any:
        """Return the jsonb value of ``settings.key`` in the operated app, or None."""
        async with self._guard(APP_DB):
            pool = await self._app()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT value FROM settings WHERE key = %s", (key,))
                row = await cur.fetchone()
        return row["value"] if row else None

    async def ping(self, which: str) -> float:
        """Run ``SELECT 1`` on one database; return the latency in ms.

        Args:
            which: ``"opsflow"`` or ``"app"``.

        """
        lazy = self._services.opsflow_pool if which == "opsflow" else self._services.app_pool
        t0 = time.perf_counter()
        pool = await lazy.get()
        async with pool.connection(timeout=CONNECT_TIMEOUT_S) as conn:
            await conn.execute("SELECT 1")
        return (time.perf_counter() - t0) * 1000


async def get_services(request: Request) -> Services:
    """Return the app's services (built by the lifespan)."""
    services: Services = request.app.state.services
    return services


# The dependencies are coroutines, even those that only return something: FastAPI runs a
# plain function in its thread pool, a thread hop on every request for each of them.
ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings_dep(services: ServicesDep) -> Settings:
    """Return the app's settings."""
    return services.settings


async def get_temporal_client(services: ServicesDep) -> Client:
    """Return the Temporal client, connecting now if the start-up connect failed."""
    return await services.temporal.get()


async def get_store(services: ServicesDep) -> PlatformStore:
    """Return the platform store over the app's pools."""
    return PlatformStore(services)


async def get_metrics(services: ServicesDep) -> ApiMetrics:
    """Return the app's metrics."""
    return services.metrics


async def get_catalog() -> Mapping[str, RunbookSpec]:
    """Return the runbook catalog (tests override it with their own specs)."""
    return RUNBOOKS


async def utcnow() -> datetime:
    """Return the current time (a dependency so tests can pin it)."""
    return datetime.now(UTC)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
TemporalDep = Annotated[Client, Depends(get_temporal_client)]
StoreDep = Annotated[PlatformStore, Depends(get_store)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
CatalogDep = Annotated[Mapping[str, RunbookSpec], Depends(get_catalog)]
NowDep = Annotated[datetime, Depends(utcnow)]
