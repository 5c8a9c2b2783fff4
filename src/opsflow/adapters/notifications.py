"""The ``notifications`` ledger: one row per idempotency key, whatever the channel.

A sender claims the key before sending (``pending``), then records the outcome. A retry finds
``sent``/``suppressed`` and does nothing; a ``pending`` row means a crash between send and
record, and the resend carries the same key (Message-ID, Idempotency-Key) so the receiver can
drop the copy. ``health-check`` counts rows with a delivery error. Each write is one
statement in autocommit (one round trip): a worker writes two per notification.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from opsflow.adapters.postgres import autocommit

DONE = ("sent", "suppressed")


async def claim(
    pool: AsyncConnectionPool[Any], key: str, channel: str, recipients: list[str], subject: str
) -> str:
    """Create the key's row as ``pending`` unless it exists; return its current status."""
    async with pool.connection() as conn, autocommit(conn):
        cur = await conn.execute(
            """INSERT INTO notifications (idempotency_key, channel, recipients, subject, status)
               VALUES (%s, %s, %s, %s, 'pending')
               ON CONFLICT (idempotency_key) DO UPDATE SET attempts = notifications.attempts
               RETURNING status""",
            (key, channel, recipients, subject),
        )
        row = await cur.fetchone()
    if isinstance(row, dict):
        return str(row["status"])
    return str(row[0]) if row else ""


async def set_status(
    pool: AsyncConnectionPool[Any], key: str, status: str, error: str | None
) -> None:
    """Record an attempt's outcome (``sent``, ``suppressed`` or ``failed`` with its error)."""
    async with pool.connection() as conn, autocommit(conn):
        await conn.execute(
            """UPDATE notifications SET status = %s, attempts = attempts + 1,
                      last_error = COALESCE(%s, last_error),
                      sent_at = CASE WHEN %s IN ('sent', 'suppressed') THEN now() ELSE sent_at END
               WHERE idempotency_key = %s""",
            (status, error, status, key),
        )
