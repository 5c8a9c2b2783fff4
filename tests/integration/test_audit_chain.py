"""The audit chain against a real PostgreSQL: concurrent writers, privileges, tampering.

These tests break the chain on purpose, so they use databases of their own, not the
session's (whose chain other tests verify).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg.types.json import Jsonb

from opsflow.adapters import audit, tokens
from opsflow.adapters.postgres import Pool, open_pool
from opsflow.shared.common import AuditEventIn
from opsflow.shared.roles import Role
from tests.fixtures.databases import Databases, create_databases, drop_databases

WRITERS = 8
EVENTS_PER_WRITER = 50


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(own_dbs: Databases) -> AsyncIterator[Pool]:
    # The service role, as the API and worker connect.
    p = await open_pool(own_dbs.opsflow_url, name="test-audit", min_size=2, max_size=WRITERS)
    yield p
    await p.close()


def admin_conn(dbs: Databases) -> psycopg.Connection[Any]:
    return psycopg.connect(dbs.opsflow_admin_url, autocommit=True)


async def test_concurrent_writers_never_fork_the_chain(pool: Pool, own_dbs: Databases) -> None:
    async def writer(w: int) -> list[int]:
        ids = []
        for i in range(EVENTS_PER_WRITER):
            rec = await audit.record_event(
                pool,
                AuditEventIn(
                    actor=f"writer:{w}",
                    action="test.append",
                    target=f"item:{i}",
                    details={"writer": w, "i": i, "note": "ünïcode ✓", "f": 0.1},
                    workflow_id=f"wf-{w}",
                ),
            )
            ids.append(rec.id)
        return ids

    results = await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    all_ids = sorted(i for ids in results for i in ids)
    total = WRITERS * EVENTS_PER_WRITER
    assert all_ids == list(range(1, total + 1))  # contiguous, none lost, none doubled

    async with pool.connection() as conn:
        result = await audit.verify_chain(conn, batch_size=37)  # several server round trips
    assert result == audit.ChainVerification(True, total, None, None)

    with admin_conn(own_dbs) as admin:
        row = admin.execute(
            "SELECT count(*), count(DISTINCT prev_hash),"
            " (SELECT prev_hash FROM audit_events WHERE id = 1) FROM audit_events"
        ).fetchone()
    assert row == (total, total, audit.GENESIS_HASH)  # one successor per row: no fork


async def test_append_joins_the_callers_transaction(pool: Pool) -> None:
    async with pool.connection() as conn:
        before = await audit.query_events(conn, limit=1)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await audit.append_event(conn, AuditEventIn("t", "test.rollback", "x"))
                raise RuntimeError("caller fails after auditing")
        after = await audit.query_events(conn, limit=1)
        assert after == before  # rolled back with the caller
        assert (await audit.verify_chain(conn)).ok


async def test_record_once_writes_a_key_once_and_returns_the_stored_row(pool: Pool) -> None:
    """Retried activities: attempts racing with one key write one row; the record is the row."""

    def event(workflow_id: str) -> AuditEventIn:
        return AuditEventIn(
            "worker", "test.once", "request:1", details={"n": 1}, workflow_id=workflow_id
        )

    appended = await asyncio.gather(
        *(audit.record_event_once(pool, event("wf-once"), "k-1") for _ in range(WRITERS))
    )
    assert sorted(appended) == [False] * (WRITERS - 1) + [True]
    assert await audit.record_event_once(pool, event("wf-other"), "k-1")  # another workflow
    assert not await audit.record_event_once(pool, event("wf-other"), "k-1")

    record = await audit.record_event(pool, AuditEventIn("t", "test.returned", "x", "denied"))
    async with pool.connection() as conn:
        rows = await audit.query_events(conn, action="test.once", after_id=0)
        assert [(r.workflow_id, r.details) for r in rows] == [
            ("wf-once", {"n": 1, "key": "k-1"}),
            ("wf-other", {"n": 1, "key": "k-1"}),
        ]
        assert await audit.query_events(conn, after_id=record.id - 1, limit=1) == [record]
        assert (await audit.verify_chain(conn)).ok


async def test_retry_safe_append_reads_only_its_workflows_rows(own_dbs: Databases) -> None:
    """The key check of every retried activity must not read the whole table (it only grows).

    200 events of the same action in other workflows are there; the session's own counters
    (``pg_stat_xact_user_tables``) tell how many rows the append read. Rolled back: the
    events are made up.
    """
    with admin_conn(own_dbs) as conn, conn.transaction(force_rollback=True):
        conn.execute(
            "INSERT INTO audit_events (id, occurred_at, actor, action, target, outcome, details,"
            " workflow_id, prev_hash, hash)"
            " SELECT 1000000 + i, now(), 'a', 'test.index', 't', 'success',"
            " jsonb_build_object('key', 'k-' || i), 'other-' || i,"
            " lpad(to_hex(1000000 + i), 64, '0'), lpad(to_hex(2000000 + i), 64, '0')"
            " FROM generate_series(1, 200) AS i"
        )
        conn.execute("ANALYZE audit_events")
        before = _rows_read(conn)
        conn.execute(
            "SELECT * FROM opsflow_audit_append('{', ',', '}', 'a', 'test.index', 't',"
            " 'success', '{}'::jsonb, 'wf-index', NULL, 'k-index')"
        )
        read = _rows_read(conn) - before
    assert read <= 2, f"{read} rows read to append one event"  # the chain's end, at most


def _rows_read(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
        " WHERE relname = 'audit_events'"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_query_filters_and_paging(pool: Pool) -> None:
    async with pool.connection() as conn:
        tail = await audit.query_events(conn, actor="writer:3", limit=5)
        assert [r.target for r in tail] == [f"item:{i}" for i in range(45, 50)]
        assert [r.id for r in tail] == sorted(r.id for r in tail)
        first = await audit.query_events(conn, actor="writer:3", after_id=0, limit=10)
        assert [r.target for r in first] == [f"item:{i}" for i in range(10)]
        nxt = await audit.query_events(conn, actor="writer:3", after_id=first[-1].id, limit=10)
        assert [r.target for r in nxt] == [f"item:{i}" for i in range(10, 20)]
        one = await audit.query_events(conn, action="test.append", target="item:7", limit=100)
        assert len(one) == WRITERS and {r.target for r in one} == {"item:7"}
        cutoff = first[5].occurred_at
        since = await audit.query_events(conn, actor="writer:3", since=cutoff, after_id=0)
        until = await audit.query_events(conn, actor="writer:3", until=cutoff, after_id=0)
        assert len(since) + len(until) == EVENTS_PER_WRITER
        assert all(r.occurred_at >= cutoff for r in since)
        assert one[0].details["note"] == "ünïcode ✓"


async def test_service_role_cannot_rewrite_history(own_dbs: Databases) -> None:
    with psycopg.connect(own_dbs.opsflow_url, autocommit=True) as conn:
        for stmt in (
            "UPDATE audit_events SET actor = 'mallory' WHERE id = 1",
            "DELETE FROM audit_events WHERE id = 1",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
        # Still allowed: reading and appending (through the adapter).
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone() is not None


async def test_trigger_refuses_even_the_owner(own_dbs: Databases) -> None:
    with admin_conn(own_dbs) as conn:
        for stmt in (
            "UPDATE audit_events SET actor = 'mallory' WHERE id = 1",
            "DELETE FROM audit_events WHERE id = 1",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(stmt)


async def test_tampering_is_detected_at_the_exact_row(pool: Pool, own_dbs: Databases) -> None:
    victim = 123
    with admin_conn(own_dbs) as conn:
        original = conn.execute(
            "SELECT actor, details FROM audit_events WHERE id = %s", (victim,)
        ).fetchone()
        assert original is not None

        def edit(stmt: str, *params: Any) -> None:
            # The owner can only edit with the trigger disabled: a deliberate act.
            with conn.transaction():
                conn.execute(
                    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete"
                )
                conn.execute(stmt, params)
                conn.execute(
                    "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete"
                )

        async def verify() -> audit.ChainVerification:
            async with pool.connection() as c:
                return await audit.verify_chain(c)

        # 1. Content changed: the row itself no longer matches its hash.
        edit("UPDATE audit_events SET actor = 'mallory' WHERE id = %s", victim)
        result = await verify()
        assert (result.ok, result.first_bad_id, result.rows_checked) == (False, victim, victim - 1)
        assert "hash" in (result.reason or "")

        # Putting the original back repairs the chain.
        edit("UPDATE audit_events SET actor = %s WHERE id = %s", original[0], victim)
        assert (await verify()).ok

        # 2. Changed and re-hashed: the next row's prev_hash gives it away.
        edit(
            "UPDATE audit_events SET details = '{\"forged\": true}', hash = repeat('a', 64)"
            " WHERE id = %s",
            victim,
        )
        result = await verify()
        assert result.first_bad_id == victim  # its own hash no longer matches its content
        rows = conn.execute(
            "SELECT id, hash FROM audit_events WHERE id IN (%s, %s) ORDER BY id",
            (victim - 1, victim),
        ).fetchall()
        assert rows[1][1] == "a" * 64
        # Re-hash consistently with the forged content: the break moves to the next row.
        forged = audit.compute_hash(
            **{
                **_row_fields(conn, victim),
                "details": {"forged": True},
            }
        )
        edit("UPDATE audit_events SET hash = %s WHERE id = %s", forged, victim)
        result = await verify()
        assert (result.ok, result.first_bad_id) == (False, victim + 1)
        assert "prev_hash" in (result.reason or "")

        # 3. A row deleted: the gap is named at the row after it.
        edit(
            "UPDATE audit_events SET details = %s, hash = %s WHERE id = %s",
            Jsonb(original[1]),
            audit.compute_hash(**{**_row_fields(conn, victim), "details": original[1]}),
            victim,
        )
        assert (await verify()).ok
        edit("DELETE FROM audit_events WHERE id = %s", victim)
        result = await verify()
        assert (result.ok, result.first_bad_id) == (False, victim + 1)
        assert "missing" in (result.reason or "")


def _row_fields(conn: psycopg.Connection[Any], row_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, occurred_at, actor, action, target, outcome, details, workflow_id, run_id,"
        " prev_hash FROM audit_events WHERE id = %s",
        (row_id,),
    ).fetchone()
    assert row is not None
    names = (
        "id occurred_at actor action target outcome details workflow_id run_id prev_hash".split()
    )
    return dict(zip(names, row, strict=True))


async def test_tokens_are_audited_and_authenticated() -> None:
    # A chain of its own: the one above is broken on purpose.
    dbs = create_databases()
    try:
        p = await open_pool(dbs.opsflow_url, name="test-tokens", max_size=2)
        try:
            secret = await tokens.create_token(
                p, name="ci", role=Role.AUDITOR, created_by="admin:x"
            )
            assert secret.startswith("opsf_") and len(secret) > 40
            with pytest.raises(tokens.TokenNameTaken):
                await tokens.create_token(p, name="ci", role=Role.ADMIN, created_by="admin:x")
            info = await tokens.authenticate(p, secret)
            assert info is not None and info.role is Role.AUDITOR and info.last_used_at
            again = await tokens.authenticate(p, secret)
            assert again is not None and again.last_used_at == info.last_used_at  # < 1 min
            assert await tokens.authenticate(p, secret + "x") is None
            assert await tokens.authenticate(p, "not-a-token") is None
            listed = await tokens.list_tokens(p)
            assert [(t.name, t.role, t.revoked_at) for t in listed] == [("ci", Role.AUDITOR, None)]
            assert await tokens.revoke_token(p, "ci", actor="admin:x") is True
            assert await tokens.authenticate(p, secret) is None  # revoked: fails at once
            assert await tokens.revoke_token(p, "ci", actor="admin:x") is False
            # The name is free again once revoked.
            await tokens.create_token(p, name="ci", role=Role.OPERATOR, created_by="admin:x")
            with psycopg.connect(dbs.opsflow_admin_url) as conn:
                hashes = [r[0] for r in conn.execute("SELECT token_hash FROM api_tokens")]
                assert secret not in str(hashes) and tokens.hash_token(secret) in hashes
            async with p.connection() as conn:
                events = await audit.query_events(conn, after_id=0)
                assert [(e.action, e.target, e.actor) for e in events] == [
                    ("token.create", "token:ci", "admin:x"),
                    ("token.revoke", "token:ci", "admin:x"),
                    ("token.create", "token:ci", "admin:x"),
                ]
                assert secret not in str(events)
                assert (await audit.verify_chain(conn)).ok
        finally:
            await p.close()
    finally:
        drop_databases(dbs)
