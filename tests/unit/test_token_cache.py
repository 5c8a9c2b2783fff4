"""TokenCache's rules without a database: races, expiry, size, when nothing is kept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import pq

from opsflow.adapters import tokens
from opsflow.adapters.token_cache import TokenCache
from opsflow.adapters.tokens import TokenInfo
from opsflow.shared.roles import Role


class FakePgConn:
    """The listener's libpq connection: announcements waiting to be read."""

    status = pq.ConnStatus.OK

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.broken = False

    def consume_input(self) -> None:
        if self.broken:
            raise psycopg.OperationalError("server closed the connection")

    def notifies(self) -> Any:
        return self.pending.pop(0) if self.pending else None


class Note:
    def __init__(self, payload: str) -> None:
        self.extra = payload.encode()


class FakeConn:
    def __init__(self) -> None:
        self.pgconn = FakePgConn()


def info(token_id: int, role: Role = Role.SUPERVISOR) -> TokenInfo:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return TokenInfo(token_id, f"t{token_id}", role, now, "test", None, now)


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """api_tokens as tokens.authenticate reads it; counts the reads."""
    rows: dict[str, Any] = {"reads": 0, "during_read": None}

    async def authenticate(_pool: Any, token: str) -> TokenInfo | None:
        rows["reads"] += 1
        if rows["during_read"] is not None:
            rows["during_read"]()
        found: TokenInfo | None = rows.get(token)
        return found

    monkeypatch.setattr(tokens, "authenticate", authenticate)
    return rows


def live_cache(**kwargs: Any) -> tuple[TokenCache, FakeConn]:
    cache = TokenCache("postgresql://x@127.0.0.1/x", **kwargs)
    conn = FakeConn()
    cache._conn = conn  # type: ignore[assignment] # the listener, as run() sets it
    return cache, conn


async def test_not_live_reads_the_table_every_time(table: dict[str, Any]) -> None:
    table["opsf_a"] = info(1)
    cache = TokenCache("postgresql://x@127.0.0.1/x")
    for _ in range(3):
        assert await cache.authenticate(None, "opsf_a") == info(1)  # type: ignore[arg-type]
    assert table["reads"] == 3 and cache.size == 0


async def test_live_answers_from_memory_and_drops_on_announcement(table: dict[str, Any]) -> None:
    table["opsf_a"], table["opsf_b"] = info(1), info(2)
    cache, conn = live_cache()
    for _ in range(3):
        assert await cache.authenticate(None, "opsf_a") == info(1)  # type: ignore[arg-type]
    assert await cache.authenticate(None, "opsf_b") == info(2)  # type: ignore[arg-type]
    assert table["reads"] == 2 and cache.hits == 2
    # Token 1 is revoked: the announcement is read before the next answer from memory.
    del table["opsf_a"]
    conn.pgconn.pending.append(Note("1"))
    assert await cache.authenticate(None, "opsf_a") is None  # type: ignore[arg-type]
    assert await cache.authenticate(None, "opsf_b") == info(2)  # type: ignore[arg-type]
    assert table["reads"] == 3 and cache.size == 1
    conn.pgconn.pending.append(Note("*"))  # TRUNCATE
    await cache.authenticate(None, "opsf_b")  # type: ignore[arg-type]
    assert table["reads"] == 4


async def test_a_read_that_raced_an_announcement_is_not_kept(table: dict[str, Any]) -> None:
    table["opsf_a"] = info(1)
    cache, _ = live_cache()
    # The row was read before the revocation committed; its announcement came meanwhile.
    table["during_read"] = lambda: cache.drop("1")
    assert await cache.authenticate(None, "opsf_a") == info(1)  # type: ignore[arg-type]
    assert cache.size == 0
    table["during_read"] = None
    await cache.authenticate(None, "opsf_a")  # type: ignore[arg-type]
    assert cache.size == 1 and table["reads"] == 2


async def test_entries_expire_and_the_least_recent_go_first(table: dict[str, Any]) -> None:
    now = [100.0]
    for i in range(1, 4):
        table[f"opsf_{i}"] = info(i)
    cache, _ = live_cache(ttl_s=60, max_entries=2, clock=lambda: now[0])
    await cache.authenticate(None, "opsf_1")  # type: ignore[arg-type]
    await cache.authenticate(None, "opsf_2")  # type: ignore[arg-type]
    await cache.authenticate(None, "opsf_1")  # type: ignore[arg-type] # 1 is now the recent one
    await cache.authenticate(None, "opsf_3")  # type: ignore[arg-type] # 2 goes
    assert table["reads"] == 3 and cache.size == 2
    await cache.authenticate(None, "opsf_2")  # type: ignore[arg-type]
    assert table["reads"] == 4
    now[0] += 60  # ttl over: read again (which refreshes last_used_at in the table)
    await cache.authenticate(None, "opsf_2")  # type: ignore[arg-type]
    assert table["reads"] == 5


async def test_broken_listener_turns_the_cache_off(table: dict[str, Any]) -> None:
    table["opsf_a"] = info(1)
    cache, conn = live_cache()
    await cache.authenticate(None, "opsf_a")  # type: ignore[arg-type]
    conn.pgconn.broken = True
    await cache.authenticate(None, "opsf_a")  # type: ignore[arg-type]
    assert not cache.live and cache.size == 0 and table["reads"] == 2
    await cache.authenticate(None, "opsf_a")  # type: ignore[arg-type]
    assert table["reads"] == 3 and cache.size == 0  # nothing kept until it is back


def test_unreadable_payload_drops_everything() -> None:
    cache, _ = live_cache()
    cache._entries["h"] = (info(1), 0.0)
    cache.drop("not-an-id")
    assert cache.size == 0
