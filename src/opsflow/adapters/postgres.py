"""PostgreSQL connection pools (psycopg 3 + psycopg_pool), rows as dicts.

Only ``worker/`` and ``api/`` build pools; everything else receives one.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from opsflow.config import redact_url

#: The pool type the platform passes around (rows come back as ``dict[str, Any]``).
Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

_Conn = TypeVar("_Conn", bound=psycopg.AsyncConnection[Any])


def redacted(url: str) -> str:
    """Return ``url`` with its password hidden, safe for logs and error messages."""
    return redact_url(url)


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (``postgresql+psycopg://``) too, as libpq URLs."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


#: A connection back in the pool for less than this is handed out without a round trip.
CHECK_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


async def _returned(conn: psycopg.AsyncConnection[Any]) -> None:
    # The pool's ``reset`` hook: the connection is back, idle and healthy.
    _RETURNED_AT[conn] = time.monotonic()


async def _check_if_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """Check a connection at checkout unless it was in use a moment ago.

    A server restart breaks connections while they sit in the pool; checking every checkout
    finds them but costs a round trip per query on the hot paths (an API call, every
    activity). A connection returned less than ``CHECK_AFTER_IDLE_SECONDS`` ago was healthy
    then; one idle for longer - as every connection is after a restart - is checked, and a
    broken one replaced, as before.
    """
    last = _RETURNED_AT.get(conn)
    if last is not None and time.monotonic() - last < CHECK_AFTER_IDLE_SECONDS:
        return
    await AsyncConnectionPool.check_connection(conn)


async def open_pool(
    url: str,
    *,
    name: str,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 30.0,  # noqa: ASYNC109 - the pool's own timeout setting, passed on
) -> Pool:
    """Open a connection pool and wait until its first connections work.

    Connections carry ``application_name=opsflow-<name>`` (visible in ``pg_stat_activity``)
    and return rows as dicts. A connection that broke while idle (server restart) is replaced
    at checkout instead of failing the caller (connections idle for a second or more are
    checked, see :func:`_check_if_idle`).

    Args:
        url: libpq URL of the database.
        name: Pool name, for logs and ``application_name``.
        min_size: Connections kept open.
        max_size: Upper bound of connections.
        timeout: Seconds to wait for the first connections before giving up (also
            the default wait for a connection at checkout).

    Returns:
        The open pool; close it with ``await pool.close()``.

    Raises:
        ConnectionError: The database was not reachable in time (the message names the URL
            without its password).

    """
    kwargs: dict[str, Any] = {"row_factory": dict_row, "application_name": f"opsflow-{name}"}
    pool: Pool = AsyncConnectionPool(
        libpq_url(url),
        name=name,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        open=False,
        timeout=timeout,
        check=_check_if_idle,
        reset=_returned,
        connection_class=psycopg.AsyncConnection[DictRow],
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except PoolTimeout as exc:
        await pool.close()
        # PoolTimeout's own message names no URL; ours names the database, password hidden.
        raise ConnectionError(
            f"database pool {name!r} could not connect to {redacted(url)} within {timeout:g}s"
        ) from exc
    return pool


@asynccontextmanager
async def autocommit(conn: _Conn) -> AsyncIterator[_Conn]:
    """Use ``conn`` in autocommit for the block, then put it back as it came.

    A single statement then costs one round trip: no BEGIN before it, no COMMIT after it
    (it commits on its own). Only for a connection outside a transaction.
    """
    was = conn.autocommit
    if not was:
        await conn.set_autocommit(True)
    try:
        yield conn
    finally:
        if not was and not conn.closed:  # a broken connection is dropped by the pool anyway
            await conn.set_autocommit(False)
