"""Both Alembic environments: empty to head, re-run is a no-op, tables and grants in place."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from opsflow import db
from opsflow.adapters import idempotency, runs
from opsflow.adapters.postgres import open_pool
from opsflow.shared.common import RunRecord
from tests.fixtures.databases import Databases, create_databases, drop_databases

OPSFLOW_TABLES = {
    "audit_events",
    "runs",
    "api_tokens",
    "idempotency_keys",
    "notifications",
    "health_check_runs",
    "health_alerts",
    "dev_role_elevation_runs",
    "export_runs",  # audit-export-nightly (r0002_audit_export)
    "sla_watchlist",  # sla-escalation (r0002_sla)
    "alembic_version_opsflow",
}
APP_TABLES = {
    "organizations",
    "departments",
    "users",
    "sessions",
    "service_requests",
    "assignments",
    "request_timeline",
    "attachments",
    "communications",
    "activity_logs",
    "settings",
    "alembic_version_app",
}


def schema_snapshot(url: str) -> list[tuple[Any, ...]]:
    """Tables, columns, indexes, constraints, triggers and grants: what an upgrade may change."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            """
            SELECT 'col', table_name, column_name, data_type, is_nullable, column_default
              FROM information_schema.columns WHERE table_schema = 'public'
            UNION ALL
            SELECT 'idx', tablename, indexname, indexdef, NULL, NULL
              FROM pg_indexes WHERE schemaname = 'public'
            UNION ALL
            SELECT 'con', conrelid::regclass::text, conname, pg_get_constraintdef(oid), NULL, NULL
              FROM pg_constraint WHERE connamespace = 'public'::regnamespace
            UNION ALL
            SELECT 'trg', tgrelid::regclass::text, tgname, tgenabled::text, NULL, NULL
              FROM pg_trigger WHERE NOT tgisinternal
            UNION ALL
            SELECT 'acl', relname, coalesce(relacl::text, ''), NULL, NULL, NULL
              FROM pg_class WHERE relnamespace = 'public'::regnamespace
            ORDER BY 1, 2, 3
            """
        ).fetchall()


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


@pytest.fixture(scope="module")
def empty() -> Iterator[Databases]:
    """Brand-new empty databases (the session's are migrated already)."""
    dbs = create_databases(migrate=False)
    try:
        yield dbs
    finally:
        drop_databases(dbs)


def test_ensure_database_is_idempotent(empty: Databases) -> None:
    assert db.ensure_database(empty.server_admin_url, empty.opsflow_db) is False
    db.ensure_service_role(empty.server_admin_url)  # exists already: no error


def test_upgrade_from_empty_then_rerun_is_a_no_op(empty: Databases) -> None:
    settings = empty.settings()
    assert db.current("opsflow", settings) is None
    assert db.current("app", settings) is None
    assert tables(empty.opsflow_admin_url) == set()

    db.upgrade("all", settings)

    assert db.current("opsflow", settings) == db.head("opsflow") is not None
    assert db.current("app", settings) == db.head("app") is not None
    assert tables(empty.opsflow_admin_url) == OPSFLOW_TABLES
    assert tables(empty.app_url) == APP_TABLES
    before = (schema_snapshot(empty.opsflow_admin_url), schema_snapshot(empty.app_url))

    db.upgrade("all", settings)
    db.upgrade("opsflow", settings)

    after = (schema_snapshot(empty.opsflow_admin_url), schema_snapshot(empty.app_url))
    assert after == before
    assert db.current("opsflow", settings) == db.head("opsflow")


def test_session_databases_are_at_head(databases: Databases) -> None:
    settings = databases.settings()
    assert db.current("opsflow", settings) == db.head("opsflow")
    assert db.current("app", settings) == db.head("app")


def test_concurrent_upgrades_serialise() -> None:
    dbs = create_databases(migrate=False)
    try:
        settings = dbs.settings()
        # Processes, as in real life (worker and API starting together); Alembic's module
        # globals make it unusable from several threads of one process anyway.
        code = (
            "import sys; from opsflow import db; from opsflow.config import Settings; "
            "db.upgrade('all', Settings(database_url=sys.argv[1], database_admin_url=sys.argv[2],"
            " target_database_url=sys.argv[3]))"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, dbs.opsflow_url, dbs.opsflow_admin_url, dbs.app_url],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errors
        assert db.current("opsflow", settings) == db.head("opsflow")
        assert tables(dbs.app_url) == APP_TABLES
    finally:
        drop_databases(dbs)


def test_service_role_privileges(databases: Databases) -> None:
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        rows = conn.execute(
            """
            SELECT c.relname,
                   has_table_privilege(%(role)s, c.oid, 'SELECT'),
                   has_table_privilege(%(role)s, c.oid, 'INSERT'),
                   has_table_privilege(%(role)s, c.oid, 'UPDATE'),
                   has_table_privilege(%(role)s, c.oid, 'DELETE'),
                   has_table_privilege(%(role)s, c.oid, 'TRUNCATE')
            FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
              AND c.relname NOT LIKE 'alembic_version%%'
            """,
            {"role": databases.service_role},
        ).fetchall()
    privileges = {r[0]: r[1:] for r in rows}
    assert privileges.pop("audit_events") == (True, True, False, False, False)
    assert set(privileges) == OPSFLOW_TABLES - {"audit_events", "alembic_version_opsflow"}
    assert set(privileges.values()) == {(True, True, True, True, False)}


async def test_service_role_uses_runs_and_idempotency(databases: Databases) -> None:
    pool = await open_pool(databases.opsflow_url, name="test-migrations", max_size=2)
    try:
        wf = "test-migrations:run"
        start = datetime.now(UTC) - timedelta(minutes=5)
        rec = RunRecord(wf, "r1", "health-check", "token:ops", "running", input={"notify": False})
        await runs.upsert_run(pool, rec, started_at=start)
        await runs.upsert_run(
            pool,
            RunRecord(wf, "r1", "health-check", "token:ops", "completed", result={"status": "ok"}),
        )
        # A late "running" write (a retried activity) does not reopen the ended run.
        await runs.upsert_run(pool, rec)
        row = await runs.get_run(pool, wf)
        assert row is not None
        assert (row["status"], row["input"], row["result"]) == (
            "completed",
            {"notify": False},
            {"status": "ok"},
        )
        assert row["started_at"] == start and row["ended_at"] is not None
        page, total = await runs.list_runs(pool, runbook="health-check", actor="token:ops")
        assert total >= 1 and any(r["workflow_id"] == wf for r in page)
        none, zero = await runs.list_runs(pool, runbook="health-check", actor="nobody")
        assert (none, zero) == ([], 0)

        first = idempotency.IdempotencyRecord(
            "token:ops", "k-1", "health-check", "a" * 64, wf, "r1", {"id": wf}
        )
        stored = await idempotency.remember(pool, first)
        second = await idempotency.remember(
            pool,
            idempotency.IdempotencyRecord(
                "token:ops", "k-1", "health-check", "b" * 64, "other", None, {}
            ),
        )
        assert stored.request_sha256 == second.request_sha256 == "a" * 64  # first writer wins
        assert second.created_at is not None
        assert await idempotency.lookup(pool, "token:ops", "k-1") == stored
        assert await idempotency.lookup(pool, "token:other", "k-1") is None
    finally:
        await pool.close()
