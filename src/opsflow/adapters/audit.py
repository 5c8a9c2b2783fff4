"""The append-only, hash-chained ``audit_events`` table.

Each row stores ``hash = sha256(canonical_bytes(row without hash))``, and the canonical bytes
include ``prev_hash``, the hash of the row before it (64 zeros for the first row). Changing,
inserting or deleting any row therefore breaks the chain at that row, which
:func:`verify_chain` finds.

A writer calls the database function ``opsflow_audit_append`` (migration
``r0002_audit_append``): it takes a transaction-scoped advisory lock, reads the last row and
inserts ``id = last id + 1``, hashing the canonical JSON that Python built around the id, the
time and the previous hash. Concurrent writers queue instead of forking the chain, and the
table's ``UNIQUE (prev_hash)`` would refuse a fork even from a writer that skipped the lock.
The lock is held until the caller's transaction ends, so keep audit writes at the end of
short transactions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from opsflow.adapters.postgres import autocommit
from opsflow.shared.common import AuditEventIn

GENESIS_HASH = "0" * 64

# How canonical_bytes encodes each value.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)

_APPEND = (
    "SELECT id, occurred_at, prev_hash, hash FROM opsflow_audit_append("
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

_COLUMNS = (
    "id, occurred_at, actor, action, target, outcome, details, workflow_id, run_id, prev_hash, hash"
)


@dataclass
class AuditRecord:
    """One stored audit event."""

    id: int
    occurred_at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]
    workflow_id: str | None
    run_id: str | None
    prev_hash: str
    hash: str


@dataclass
class ChainVerification:
    """Result of :func:`verify_chain`: ``first_bad_id`` names the first row that breaks it."""

    ok: bool
    rows_checked: int
    first_bad_id: int | None = None
    reason: str | None = None


def _utc_iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(
    id: int,
    occurred_at: datetime,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    details: dict[str, Any],
    workflow_id: str | None,
    run_id: str | None,
    prev_hash: str,
) -> bytes:
    """Return the bytes a row's hash covers.

    Compact JSON with sorted keys (nested ones too), UTF-8 without escaping, and the time in
    UTC with microseconds (``2026-11-22T01:02:03.000004Z``), so the same row always gives the
    same bytes whatever the session time zone or dict order.

    Args:
        id: Row id.
        occurred_at: Timezone-aware time of the event.
        actor: Who acted.
        action: What was done.
        target: What it was done to.
        outcome: ``success``, ``denied``, ``failure``...
        details: JSON-compatible details.
        workflow_id: Workflow id, if the event belongs to a run.
        run_id: Run id, if the event belongs to a run.
        prev_hash: Hash of the previous row (64 zeros for the first).

    Returns:
        The canonical encoding.

    """
    doc = {
        "id": id,
        "occurred_at": _utc_iso(occurred_at),
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "details": details,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "prev_hash": prev_hash,
    }
    return _CANONICAL.encode(doc).encode("utf-8")


def compute_hash(**fields: Any) -> str:
    """Return the SHA-256 hex digest of :func:`canonical_bytes` over ``fields``."""
    return hashlib.sha256(canonical_bytes(**fields)).hexdigest()


def _normalise_details(details: dict[str, Any]) -> dict[str, Any]:
    """Make details exactly what jsonb will give back (so the stored hash verifies later).

    Tuples become lists, dates become strings (``str()``), keys become strings. NaN and
    infinities are refused: jsonb cannot store them.
    """
    out = json.loads(json.dumps(details, default=str, allow_nan=False), parse_float=_pg_number)
    if not isinstance(out, dict):
        raise TypeError("audit details must be a JSON object")
    if "\\u0000" in json.dumps(out):
        raise ValueError("audit details may not contain NUL characters")
    return out


def _pg_number(text: str) -> float | int:
    """Parse a JSON number the way a jsonb round trip returns it.

    jsonb keeps numbers as ``numeric``: ``1e+16`` (how Python writes large floats) comes back
    as ``10000000000000000``, which reads as an int. Doing the same here keeps the hash of
    what was written equal to the hash of what is read.
    """
    if "e" in text or "E" in text:
        exponent = Decimal(text).as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(Decimal(text))
    return float(text)


def _record(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        details=row["details"],
        workflow_id=row["workflow_id"],
        run_id=row["run_id"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _fragments(event: AuditEventIn, details: dict[str, Any]) -> tuple[str, str, str]:
    """Return the canonical JSON of ``event`` around the three values the database fills in.

    :func:`canonical_bytes` of a row is ``head + id + ',"occurred_at":"' + time + tail +
    prev_hash + end`` (keys sorted: action, actor, details, id, occurred_at, outcome,
    prev_hash, run_id, target, workflow_id). ``opsflow_audit_append`` (migration
    ``r0002_audit_append``) joins them with the id, time and previous hash it reads under the
    chain's lock.
    """
    enc = _CANONICAL.encode
    head = (
        f'{{"action":{enc(event.action)},"actor":{enc(event.actor)},"details":{enc(details)},"id":'
    )
    tail = f'","outcome":{enc(event.outcome)},"prev_hash":"'
    end = (
        f'","run_id":{enc(event.run_id)},"target":{enc(event.target)},'
        f'"workflow_id":{enc(event.workflow_id)}}}'
    )
    return head, tail, end


async def _call_append(conn: AsyncConnection[Any], params: tuple[Any, ...]) -> Any:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_APPEND, params)
        return await cur.fetchone()


async def _append(
    conn: AsyncConnection[Any], event: AuditEventIn, key: str | None = None
) -> AuditRecord | None:
    """Append ``event`` in one statement; None if ``key`` is given and already recorded.

    Outside a transaction the call runs in autocommit: one round trip, and the chain's lock
    is held inside the server only, for the call and its commit. It used to be held across
    a round trip and the writer's own scheduling (with 20 escalations in flight the API
    waited 136 ms at p50 for it). Inside the caller's transaction it is one statement of it.
    """
    details = _normalise_details(event.details)
    head, tail, end = _fragments(event, details)
    params = (
        head,
        tail,
        end,
        event.actor,
        event.action,
        event.target,
        event.outcome,
        Jsonb(details),
        event.workflow_id,
        event.run_id,
        key,
    )
    if conn.info.transaction_status == TransactionStatus.IDLE:
        async with autocommit(conn):
            row = await _call_append(conn, params)
    else:
        row = await _call_append(conn, params)
    if row is None:
        return None
    # The event as stored: its own fields, the details as jsonb keeps them, and what the
    # database filled in (id, time, previous hash, hash).
    return _record({**vars(event), "details": details, **row})


async def append_event(conn: AsyncConnection[Any], event: AuditEventIn) -> AuditRecord:
    """Append one event to the chain inside the caller's transaction.

    If ``conn`` is already in a transaction the event commits or rolls back with it (an
    error aborts that transaction), and the chain's lock is held until it ends; otherwise
    the event commits at once.

    Args:
        conn: Connection to the opsflow database.
        event: The event.

    Returns:
        The stored row.

    """
    record = await _append(conn, event)
    assert record is not None  # without a key the function always inserts
    return record


async def record_event(pool: AsyncConnectionPool[Any], event: AuditEventIn) -> AuditRecord:
    """Append one event in a transaction of its own.

    Args:
        pool: Pool of the opsflow database.
        event: The event.

    Returns:
        The stored row.

    """
    async with pool.connection() as conn:
        return await append_event(conn, event)


async def record_event_once(pool: AsyncConnectionPool[Any], event: AuditEventIn, key: str) -> bool:
    """Append ``event`` unless one with the same workflow id, action and key exists.

    Activities retry; this makes their audit events retry-safe. The key is stored in
    ``details.key``; writers of the same key are serialised (an advisory lock on the key,
    taken by ``opsflow_audit_append`` before it looks), so two attempts cannot both miss
    the row.

    Args:
        pool: Pool of the opsflow database.
        event: The event (its ``details`` gain ``key``).
        key: What makes the event unique for its workflow and action (e.g. run id and target).

    Returns:
        True if the event was appended, False if it was there already.

    """
    event.details = {**event.details, "key": key}
    async with pool.connection() as conn:
        return await _append(conn, event, key) is not None


async def verify_chain(conn: AsyncConnection[Any], *, batch_size: int = 2000) -> ChainVerification:
    """Recompute the whole chain and name the first row that breaks it.

    Rows are streamed in id order through a server-side cursor, so memory stays flat however
    long the table is. A row breaks the chain when its id is not the previous id + 1 (a row
    is missing before it), its ``prev_hash`` is not the previous row's hash, or its ``hash``
    is not the hash of its content.

    Args:
        conn: Connection to the opsflow database (read access is enough).
        batch_size: Rows fetched per round trip.

    Returns:
        ``ok`` and the number of rows checked, or the first bad row's id and why.

    """
    checked = 0
    expected_id = 1
    prev_hash = GENESIS_HASH
    # A named cursor lives in a transaction; a repeatable-read snapshot is not needed since
    # rows are only ever appended after the ones already read.
    async with (
        conn.transaction(),
        conn.cursor(name="opsflow_audit_verify", row_factory=dict_row) as cur,
    ):
        cur.itersize = batch_size
        await cur.execute(f"SELECT {_COLUMNS} FROM audit_events ORDER BY id")
        async for row in cur:
            rec = _record(row)
            if rec.id != expected_id:
                return ChainVerification(
                    False,
                    checked,
                    rec.id,
                    f"row {rec.id} follows row {expected_id - 1}: rows are missing"
                    if rec.id > expected_id
                    else f"row {rec.id} is out of order (expected {expected_id})",
                )
            if rec.prev_hash != prev_hash:
                return ChainVerification(
                    False,
                    checked,
                    rec.id,
                    f"row {rec.id}: prev_hash does not match the hash of row {rec.id - 1}",
                )
            try:
                digest = compute_hash(
                    id=rec.id,
                    occurred_at=rec.occurred_at,
                    actor=rec.actor,
                    action=rec.action,
                    target=rec.target,
                    outcome=rec.outcome,
                    details=rec.details,
                    workflow_id=rec.workflow_id,
                    run_id=rec.run_id,
                    prev_hash=rec.prev_hash,
                )
            except (TypeError, ValueError) as exc:
                return ChainVerification(
                    False, checked, rec.id, f"row {rec.id}: cannot encode ({exc})"
                )
            if digest != rec.hash:
                return ChainVerification(
                    False, checked, rec.id, f"row {rec.id}: content does not match its hash"
                )
            checked += 1
            expected_id += 1
            prev_hash = rec.hash
    return ChainVerification(True, checked)


async def query_events(
    conn: AsyncConnection[Any],
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """Read events matching all given filters, always returned in ascending id order.

    Without ``after_id`` it returns the *latest* ``limit`` matching events (a tail); with
    ``after_id`` it returns the first ``limit`` matching events whose id is greater (follow or
    page forward by passing the last id seen).

    Args:
        conn: Connection to the opsflow database.
        actor: Exact actor.
        action: Exact action.
        target: Exact target.
        since: Events at or after this time.
        until: Events before this time.
        after_id: Only events with a greater id.
        limit: At most this many events (1 to 10,000).

    Returns:
        The events, oldest first.

    """
    limit = max(1, min(int(limit), 10_000))
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("actor", actor), ("action", action), ("target", target)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if since is not None:
        where.append(sql.SQL("occurred_at >= %s"))
        params.append(since)
    if until is not None:
        where.append(sql.SQL("occurred_at < %s"))
        params.append(until)
    if after_id is not None:
        where.append(sql.SQL("id > %s"))
        params.append(after_id)
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    order = sql.SQL("ASC" if after_id is not None else "DESC")
    query = sql.SQL("SELECT {cols} FROM audit_events{where} ORDER BY id {order} LIMIT %s").format(
        cols=sql.SQL(_COLUMNS), where=clause, order=order
    )
    params.append(limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = [_record(r) for r in await cur.fetchall()]
    if after_id is None:
        rows.reverse()
    return rows
