"""``Idempotency-Key`` records: the first request with a key wins, repeats get its response.

Keys are scoped by actor, so two callers cannot collide on (or probe) each other's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

_COLUMNS = "actor, key, runbook, request_sha256, workflow_id, run_id, response, created_at"


@dataclass
class IdempotencyRecord:
    """What a request with an idempotency key started, and what it answered."""

    actor: str
    key: str
    runbook: str
    request_sha256: str
    workflow_id: str
    run_id: str | None
    response: dict[str, Any]
    created_at: datetime | None = None  # set by the database when None


def _record(row: dict[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(**row)


async def lookup(pool: AsyncConnectionPool[Any], actor: str, key: str) -> IdempotencyRecord | None:
    """Return the record stored for (actor, key), or None.

    Args:
        pool: Pool of the opsflow database.
        actor: The caller.
        key: The ``Idempotency-Key`` header value.

    """
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM idempotency_keys WHERE actor = %s AND key = %s",
            (actor, key),
        )
        row = await cur.fetchone()
    return _record(row) if row else None


async def remember(pool: AsyncConnectionPool[Any], rec: IdempotencyRecord) -> IdempotencyRecord:
    """Store ``rec`` unless (actor, key) is already stored; return the stored record.

    Two concurrent requests with the same key both get the first writer's record, so the
    caller can compare ``request_sha256`` and ``workflow_id`` with its own.

    Args:
        pool: Pool of the opsflow database.
        rec: The record to store.

    Returns:
        The record now in the table (``rec`` itself, or the earlier one).

    """
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO idempotency_keys ({_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, COALESCE(%s, now()))"
            f" ON CONFLICT (actor, key) DO NOTHING RETURNING {_COLUMNS}",
            (
                rec.actor,
                rec.key,
                rec.runbook,
                rec.request_sha256,
                rec.workflow_id,
                rec.run_id,
                Jsonb(rec.response),
                rec.created_at,
            ),
        )
        row = await cur.fetchone()
        if row is None:
            # The conflicting row is committed (ON CONFLICT waited for it), so it is visible.
            await cur.execute(
                f"SELECT {_COLUMNS} FROM idempotency_keys WHERE actor = %s AND key = %s",
                (rec.actor, rec.key),
            )
            row = await cur.fetchone()
    assert row is not None
    return _record(row)
