"""The ``runs`` read model: one row per workflow run, written at start and at end.

Writes are upserts keyed by (workflow_id, run_id), so an activity retried by Temporal writes
the same row again instead of a second one, and a late "started" write can never turn an
ended run back into a running one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from opsflow.adapters.postgres import autocommit
from opsflow.shared.common import RunRecord

#: Statuses after which a run does not change any more (Temporal's closed states).
TERMINAL_STATUSES = frozenset(
    {"completed", "failed", "canceled", "cancelled", "terminated", "timed_out", "continued_as_new"}
)

_COLUMNS = (
    "workflow_id, run_id, runbook, actor, tenant, status, input, result, failure, figures,"
    " started_at, ended_at, updated_at"
)

_UPSERT = """
INSERT INTO runs (workflow_id, run_id, runbook, actor, tenant, status, input, result, failure,
                  figures, started_at, ended_at)
VALUES (%(workflow_id)s, %(run_id)s, %(runbook)s, %(actor)s, %(tenant)s, %(status)s, %(input)s,
        %(result)s, %(failure)s, %(figures)s, COALESCE(%(started_at)s, now()),
        COALESCE(%(ended_at)s, CASE WHEN %(end_now)s THEN now() END))
ON CONFLICT (workflow_id, run_id) DO UPDATE SET
    -- once ended, only another end write may change the status
    status = CASE WHEN runs.ended_at IS NOT NULL AND EXCLUDED.ended_at IS NULL
                  THEN runs.status ELSE EXCLUDED.status END,
    runbook = EXCLUDED.runbook,
    actor = EXCLUDED.actor,
    tenant = EXCLUDED.tenant,
    input = CASE WHEN EXCLUDED.input = '{}'::jsonb THEN runs.input ELSE EXCLUDED.input END,
    result = COALESCE(EXCLUDED.result, runs.result),
    failure = COALESCE(EXCLUDED.failure, runs.failure),
    figures = runs.figures || EXCLUDED.figures,
    started_at = COALESCE(%(started_at)s, runs.started_at),
    -- an explicit end time wins; "ended now" keeps an end time already recorded
    ended_at = CASE WHEN %(ended_at)s::timestamptz IS NOT NULL THEN EXCLUDED.ended_at
                    ELSE COALESCE(runs.ended_at, EXCLUDED.ended_at) END,
    updated_at = now()
"""


async def upsert_run(
    pool: AsyncConnectionPool[Any],
    rec: RunRecord,
    *,
    started_at: datetime | None = None,
    ended_at: datetime | None = None,
) -> None:
    """Insert or update a run's row.

    A new row starts at ``started_at`` (now if omitted). A terminal status (see
    :data:`TERMINAL_STATUSES`) without ``ended_at`` ends the run now. Empty ``input``, missing
    ``result``/``failure`` keep what the row already has; ``figures`` are merged.

    Args:
        pool: Pool of the opsflow database.
        rec: The run's current state.
        started_at: When the run started (Temporal's start time), if known.
        ended_at: When it ended, if it has.

    """
    params = {
        "workflow_id": rec.workflow_id,
        "run_id": rec.run_id,
        "runbook": rec.runbook,
        "actor": rec.actor,
        "tenant": rec.tenant,
        "status": rec.status,
        "input": Jsonb(rec.input or {}),
        "result": Jsonb(rec.result) if rec.result is not None else None,
        "failure": rec.failure,
        "figures": Jsonb(rec.figures or {}),
        "started_at": started_at,
        "ended_at": ended_at,
        # Ending "now" uses the database's clock, like every other time of the row.
        "end_now": ended_at is None and rec.status.lower() in TERMINAL_STATUSES,
    }
    async with pool.connection() as conn, autocommit(conn):  # one statement, one round trip
        await conn.execute(_UPSERT, params)


# Statuses of a run that has started and not ended: their rows get started_at.
OPEN_STATUSES = frozenset({"running", "started"})


async def record(pool: AsyncConnectionPool[Any], rec: RunRecord) -> None:
    """Write a run's row as its workflow reports it: an open status starts it, others end it."""
    now = datetime.now(UTC)
    if rec.status in OPEN_STATUSES:
        await upsert_run(pool, rec, started_at=now)
    else:
        await upsert_run(pool, rec, ended_at=now)


async def get_run(pool: AsyncConnectionPool[Any], workflow_id: str) -> dict[str, Any] | None:
    """Return the latest run of a workflow id, or None if there is none.

    Args:
        pool: Pool of the opsflow database.
        workflow_id: The workflow id (business key).

    """
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM runs WHERE workflow_id = %s"
            " ORDER BY started_at DESC, updated_at DESC LIMIT 1",
            (workflow_id,),
        )
        row: dict[str, Any] | None = await cur.fetchone()
        return row


async def list_runs(
    pool: AsyncConnectionPool[Any],
    *,
    runbook: str | None = None,
    status: str | None = None,
    actor: str | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Return one page of runs, newest first, and how many match in total.

    Args:
        pool: Pool of the opsflow database.
        runbook: Exact runbook name.
        status: Status, any case (``completed`` and ``COMPLETED`` match the same runs).
        actor: Exact actor.
        tenant: Exact tenant.
        since: Runs started at or after this time.
        until: Runs started before this time.
        limit: Page size (1 to 1000).
        offset: Rows to skip.

    Returns:
        (rows, total matching rows).

    """
    limit = max(1, min(int(limit), 1000))
    offset = max(0, int(offset))
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (
        ("runbook", runbook),
        ("status", status),
        ("actor", actor),
        ("tenant", tenant),
    ):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            # Statuses are stored lower case; GET /runs/{id} shows Temporal's upper case, so
            # either spelling filters.
            params.append(value.lower() if column == "status" else value)
    if since is not None:
        where.append(sql.SQL("started_at >= %s"))
        params.append(since)
    if until is not None:
        where.append(sql.SQL("started_at < %s"))
        params.append(until)
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    page = sql.SQL(
        "SELECT {cols} FROM runs{where}"
        " ORDER BY started_at DESC, workflow_id, run_id LIMIT %s OFFSET %s"
    ).format(cols=sql.SQL(_COLUMNS), where=clause)
    count = sql.SQL("SELECT count(*) AS n FROM runs{where}").format(where=clause)
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(page, [*params, limit, offset])
        rows = await cur.fetchall()
        if offset == 0 and len(rows) < limit:
            total = len(rows)  # the page holds every match: no need to count
        else:
            await cur.execute(count, params)
            counted = await cur.fetchone()
            total = int(counted["n"]) if counted else 0
    return rows, total
