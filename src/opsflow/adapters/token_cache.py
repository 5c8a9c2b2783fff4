"""Verified API tokens kept in memory, dropped the moment the database announces a change.

Every API call authenticates its bearer token. Reading ``api_tokens`` for each one is a round
trip to PostgreSQL on every request's path, before anything else can happen; under load it
was a tenth of an escalation's time in the API. This cache answers a token it has verified in
the last ``ttl_s`` seconds from memory, and drops a revoked token as soon as the database's
announcement of the revocation reaches the process (milliseconds):

- A dedicated connection LISTENs on ``opsflow_api_tokens``, where a trigger on ``api_tokens``
  (migration ``r0002_token_notify``) announces the id of every token that is revoked,
  renamed, given another role or deleted, and ``*`` for a TRUNCATE.
- Before answering from memory, the cache reads whatever that connection has received
  (``PQconsumeInput``, a non-blocking read of its socket), so a revocation that reached this
  process drops the token before the request that follows it is answered.
- Only while that connection is up: until it has LISTENed, after it breaks, and while it
  reconnects, every call reads the table, and what was cached is dropped (changes announced
  meanwhile were missed). TCP keepalives find a connection that died silently.
- A lookup that raced an announcement does not store its result (a generation count), and an
  entry is read again from the table after ``ttl_s`` (which also refreshes ``last_used_at``,
  at most once a minute, as before).

Only positive answers are kept: an unknown or revoked token always reads the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from opsflow.adapters import tokens
from opsflow.adapters.postgres import libpq_url, redacted
from opsflow.adapters.tokens import TokenInfo

log = structlog.get_logger("opsflow.tokens")

CHANNEL = "opsflow_api_tokens"
ALL = "*"

# A connection that died without a word (a network cut) is declared dead after about
# 10 + 3 x 5 seconds of silence.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
               "keepalives_count": 3}  # fmt: skip


class TokenCache:
    """Tokens verified recently, valid while the change announcements are received.

    Args:
        url: The opsflow database (the listener's own connection).
        ttl_s: How long a verified token is answered from memory.
        max_entries: Most tokens kept (the least recently used go first).
        clock: Monotonic seconds (tests pass their own).

    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = libpq_url(url)
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[TokenInfo, float]] = OrderedDict()
        self._generation = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.hits = 0
        self.misses = 0
        self._connects = 0

    @property
    def live(self) -> bool:
        """True while the listener is connected: only then is anything answered from memory."""
        return self._conn is not None

    @property
    def reconnects(self) -> int:
        """How often the listener connected again after losing its connection."""
        return max(0, self._connects - 1)

    @property
    def size(self) -> int:
        """Tokens held now."""
        return len(self._entries)

    async def authenticate(self, pool: AsyncConnectionPool[Any], token: str) -> TokenInfo | None:
        """Return the active token's metadata, or None (see :func:`tokens.authenticate`)."""
        key = tokens.hash_token(token)
        if self._receive():
            hit = self._entries.get(key)
            if hit is not None and self._clock() - hit[1] < self._ttl_s:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit[0]
        self.misses += 1
        generation = self._generation
        info = await tokens.authenticate(pool, token)
        # Stored only if no announcement (or reconnect) came while the table was read: the
        # row read may predate it.
        if info is not None and self.live and generation == self._generation:
            self._entries[key] = (info, self._clock())
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return info

    def drop(self, payload: str) -> None:
        """Forget the token whose id is ``payload`` (``*``: all of them)."""
        self._generation += 1
        if payload == ALL:
            self._entries.clear()
            return
        try:
            token_id = int(payload)
        except ValueError:  # not ours to understand: be safe
            self._entries.clear()
            return
        for key in [k for k, (info, _) in self._entries.items() if info.id == token_id]:
            del self._entries[key]

    def _receive(self) -> bool:
        """Apply every announcement received so far; False when the listener is not live."""
        conn = self._conn
        if conn is None:
            return False
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error as exc:
            self._down(f"listener connection lost: {exc}")  # run() closes it and reconnects
            return False
        if pgconn.status != pq.ConnStatus.OK:
            self._down("listener connection lost")
            return False
        while (note := pgconn.notifies()) is not None:
            self.drop(note.extra.decode("utf-8", "replace"))
        return True

    def _readable(self, lost: asyncio.Event) -> None:
        if not self._receive():
            lost.set()

    def _down(self, reason: str, *, stopping: bool = False) -> None:
        """Stop answering from memory (``run`` closes the connection and reconnects)."""
        conn, self._conn = self._conn, None
        self.drop(ALL)
        if conn is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(conn.pgconn.socket)
        if not stopping:
            log.warning("token cache off: every call reads api_tokens", reason=reason)

    async def run(self, retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        """Listen for token changes until cancelled, reconnecting after a failure."""
        delay = retry_s
        loop = asyncio.get_running_loop()
        while True:
            lost = asyncio.Event()
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    make_conninfo(self._url, **_KEEPALIVES), autocommit=True
                )
                await conn.execute(f"LISTEN {CHANNEL}")
                self.drop(ALL)  # whatever was announced before the LISTEN is unknown
                self._conn = conn
                self._connects += 1
                loop.add_reader(conn.pgconn.socket, self._readable, lost)
                log.info("token cache on: revocations announced by the database")
                delay = retry_s
                await lost.wait()
            except asyncio.CancelledError:
                self._down("stopping", stopping=True)
                if conn is not None:
                    await _close(conn)
                raise
            except Exception as exc:
                self._down(str(exc))
                log.warning("token listener failed", url=redacted(self._url), error=str(exc))
            if conn is not None:
                await _close(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry_s)


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
