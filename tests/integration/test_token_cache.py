"""The API's token cache against the real database: announcements, listener loss, reconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import PoolClosed

from opsflow.adapters import tokens
from opsflow.adapters.postgres import Pool, open_pool
from opsflow.adapters.token_cache import TokenCache
from opsflow.shared.roles import Role
from tests.fixtures.databases import Databases


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(own_dbs: Databases) -> AsyncIterator[Pool]:
    p = await open_pool(own_dbs.opsflow_url, name="test-token-cache", max_size=2)
    yield p
    await p.close()


@pytest_asyncio.fixture(loop_scope="session")
async def cache(own_dbs: Databases) -> AsyncIterator[TokenCache]:
    c = TokenCache(own_dbs.opsflow_url, ttl_s=60)
    task = asyncio.create_task(c.run(retry_s=0.1))
    await until(lambda: c.live)
    yield c
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not c.live and c.size == 0


async def until(cond: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def closed_pool(dbs: Databases) -> Pool:
    """A pool that fails every checkout: whatever it answers came from memory."""
    p = await open_pool(dbs.opsflow_url, name="test-closed", max_size=1)
    await p.close()
    return p


async def test_verified_token_is_answered_from_memory_until_revoked(
    cache: TokenCache, pool: Pool, own_dbs: Databases
) -> None:
    secret = await tokens.create_token(pool, name="cached", role=Role.SUPERVISOR, created_by="t")
    first = await cache.authenticate(pool, secret)
    assert first is not None and first.role is Role.SUPERVISOR and cache.misses == 1
    dead = await closed_pool(own_dbs)
    again = await cache.authenticate(dead, secret)  # no database involved
    assert again == first and cache.hits == 1
    # An unknown token is never answered from memory.
    with pytest.raises(PoolClosed):
        await cache.authenticate(dead, secret + "x")

    assert await tokens.revoke_token(pool, "cached", actor="t")
    # The announcement reaches the listener; the next lookup reads the table: revoked.
    await until(lambda: cache.size == 0)
    assert await cache.authenticate(pool, secret) is None
    assert cache.size == 0  # a refusal is not kept


async def test_role_change_and_delete_are_announced(cache: TokenCache, pool: Pool) -> None:
    secret = await tokens.create_token(pool, name="moved", role=Role.OPERATOR, created_by="t")
    other = await tokens.create_token(pool, name="kept", role=Role.AUDITOR, created_by="t")
    assert (await cache.authenticate(pool, secret)) is not None
    assert (await cache.authenticate(pool, other)) is not None
    assert cache.size == 2
    async with pool.connection() as conn:
        await conn.execute("UPDATE api_tokens SET role = 'admin' WHERE name = 'moved'")
    await until(lambda: cache.size == 1)  # only the changed token goes
    info = await cache.authenticate(pool, secret)
    assert info is not None and info.role is Role.ADMIN
    # last_used_at, which lookups write, announces nothing.
    async with pool.connection() as conn:
        await conn.execute("UPDATE api_tokens SET last_used_at = now() - interval '1 hour'")
    await asyncio.sleep(0.2)
    assert cache.size == 2
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM api_tokens WHERE name = 'kept'")
    await until(lambda: cache.size == 1)
    assert await cache.authenticate(pool, other) is None


async def test_lost_listener_reads_the_table_until_it_is_back(
    cache: TokenCache, pool: Pool, own_dbs: Databases
) -> None:
    secret = await tokens.create_token(pool, name="cut", role=Role.SUPERVISOR, created_by="t")
    assert await cache.authenticate(pool, secret) is not None and cache.size == 1
    with psycopg.connect(own_dbs.opsflow_admin_url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        ).fetchall()
    assert cut == [(True,)]
    await until(lambda: not cache.live or cache.reconnects > 0)
    # Whatever was cached went with the listener; nothing is answered from memory meanwhile.
    assert cache.size == 0
    await until(lambda: cache.live)
    assert cache.reconnects == 1
    hits = cache.hits
    assert await cache.authenticate(pool, secret) is not None
    assert await cache.authenticate(pool, secret) is not None
    assert cache.hits == hits + 1  # answered from memory again once the listener is back
