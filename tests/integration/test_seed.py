"""``opsflow seed`` on a small N: counts, distributions, PII, refusal and reset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from opsflow import seed as seeding
from opsflow.config import Settings
from opsflow.db import ensure_database, upgrade
from tests.fixtures.databases import Databases, create_databases, drop_databases

N = 5_000
TENANTS = 12


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[str, seeding.SeedReport, list[tuple[str, int, int]]]]:
    # An app database of its own: the session's is shared with the platform tests.
    dbs: Databases = create_databases(migrate=False)
    try:
        ensure_database(dbs.server_admin_url, dbs.app_db)
        upgrade("app", Settings(target_database_url=dbs.app_url))
        SCHEMA_BEFORE.extend(schema(dbs.app_url))
        calls: list[tuple[str, int, int]] = []
        report = seeding.seed(
            dbs.app_url,
            requests=N,
            tenants=TENANTS,
            random_seed=7,
            progress=lambda t, d, n: calls.append((t, d, n)),
        )
        yield dbs.app_url, report, calls
    finally:
        drop_databases(dbs)


SCHEMA_BEFORE: list[tuple[Any, ...]] = []


def schema(url: str) -> list[tuple[Any, ...]]:
    """Constraints (with their validation state) and indexes of the app schema."""
    return q(
        url,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        " UNION ALL SELECT tablename, indexname, indexdef, true FROM pg_indexes"
        " WHERE schemaname = 'public' ORDER BY 1, 2, 3",
    )


def q(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def test_counts_match_the_report(app: Any) -> None:
    url, report, calls = app
    assert report.rows["service_requests"] == N
    assert report.rows["organizations"] == TENANTS
    for table, n in report.rows.items():
        assert q(url, f"SELECT count(*) FROM {table}")[0][0] == n, table
    assert report.rows["users"] >= TENANTS * 8
    assert report.rows["assignments"] > N // 2
    assert report.rows["activity_logs"] >= N // 4
    assert report.seconds > 0 and report.rows_per_second > 0
    assert ("service_requests", N, N) in calls  # progress reached the end


def test_requests_are_spread_realistically(app: Any) -> None:
    url, _, _ = app
    statuses = dict(q(url, "SELECT status, count(*) FROM service_requests GROUP BY 1"))
    assert set(statuses) == {
        "new", "triaged", "assigned", "in_progress", "waiting_external", "resolved", "closed"
    }  # fmt: skip
    assert statuses["closed"] + statuses["resolved"] > N * 0.6  # most are done
    assert len(dict(q(url, "SELECT priority, count(*) FROM service_requests GROUP BY 1"))) == 4
    assert len(dict(q(url, "SELECT channel, count(*) FROM service_requests GROUP BY 1"))) == 6
    past, future, missing = q(
        url,
        "SELECT count(*) FILTER (WHERE sla_due_at < now()),"
        " count(*) FILTER (WHERE sla_due_at >= now()), count(*) FILTER (WHERE sla_due_at IS NULL)"
        " FROM service_requests WHERE status NOT IN ('resolved', 'closed')",
    )[0]
    assert past > 0 and future > past and missing == 0
    lo, hi = q(
        url,
        "SELECT min(sla_due_at - now()), max(sla_due_at - now()) FROM service_requests"
        " WHERE status NOT IN ('resolved', 'closed')",
    )[0]
    assert lo.days >= -4 and hi.days <= 7
    bad = q(
        url,
        "SELECT count(*) FROM service_requests WHERE"
        " (status = 'closed' AND (closed_at IS NULL OR resolved_at IS NULL))"
        " OR (status IN ('new', 'triaged') AND resolved_at IS NOT NULL)"
        " OR updated_at < created_at",
    )[0][0]
    assert bad == 0
    placements = dict(q(url, "SELECT placement, count(*) FROM organizations GROUP BY 1"))
    assert set(placements) <= {"shared", "dedicated"} and placements["shared"] > 0
    tenants_used = q(url, "SELECT count(DISTINCT organization_id) FROM service_requests")[0][0]
    assert tenants_used > TENANTS // 2


def test_reporter_pii_is_present(app: Any) -> None:
    url, _, _ = app
    rows = q(
        url, "SELECT reporter_name, reporter_email, reporter_phone, address FROM service_requests"
    )
    assert all(all(v for v in row) for row in rows)
    name, email, phone, address = rows[0]
    assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", name)
    assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@(mail\.)?example\.(com|org|net)", email)
    assert re.fullmatch(r"\+1-\d{3}-555-01\d{2}", phone)
    assert re.fullmatch(r"\d+ [A-Z][a-z]+ [A-Za-z]+, [A-Z][a-z]+", address)
    assert len({r[1] for r in rows}) > N // 2  # varied, not one repeated person


def test_users_and_activity(app: Any) -> None:
    url, _, _ = app
    roles = dict(q(url, "SELECT role, count(*) FROM users GROUP BY 1"))
    assert {"staff", "inspector", "supervisor", "admin", "developer"} <= set(roles)
    assert roles["admin"] >= TENANTS and roles["developer"] >= 3
    active_admins = q(url, "SELECT count(DISTINCT organization_id) FROM users"
                      " WHERE role = 'admin' AND is_active")[0][0]  # fmt: skip
    assert active_admins == TENANTS
    actions = dict(q(url, "SELECT action, count(*) FROM activity_logs GROUP BY 1"))
    assert actions["login_failed"] > 0 and actions["error"] > 0 and actions["user_login"] > 0
    dev = q(url, "SELECT count(*) FROM activity_logs WHERE role = 'developer'")[0][0]
    assert dev > 0
    # Nothing in the last hour: a fresh stack's health check starts without alerts.
    assert q(url, "SELECT max(occurred_at) < now() - interval '1 hour' FROM activity_logs")[0][0]
    orphans = q(
        url,
        "SELECT count(*) FROM assignments a JOIN service_requests r ON r.id = a.request_id"
        " JOIN users u ON u.id = a.assignee_id WHERE u.organization_id <> r.organization_id",
    )[0][0]
    assert orphans == 0  # assignees work for the request's tenant


def test_constraints_indexes_and_sequences_restored(app: Any) -> None:
    url, _, _ = app
    # The load drops foreign keys and indexes; all come back, validated.
    assert schema(url) == SCHEMA_BEFORE
    fks = q(url, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated")[0][0]
    assert fks >= 10
    idx = {r[0] for r in q(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"service_requests_open_sla_idx", "activity_logs_role_occurred_at_idx"} <= idx
    with psycopg.connect(url) as conn:
        # The next row gets an id after the seeded ones.
        new_id = conn.execute(
            "INSERT INTO organizations (slug, name) VALUES ('after-seed', 'After') RETURNING id"
        ).fetchone()
        assert new_id == (TENANTS + 1,)
        conn.rollback()


def test_rerun_is_refused_unless_reset(app: Any) -> None:
    url, _, _ = app
    with pytest.raises(seeding.SeedRefused, match="empty"):
        seeding.seed(url, requests=10, tenants=2)
    assert q(url, "SELECT count(*) FROM service_requests")[0][0] == N  # untouched
    again = seeding.seed(url, requests=100, tenants=3, random_seed=7, reset=True)
    assert again.rows["service_requests"] == 100
    assert q(url, "SELECT count(*), min(id) FROM service_requests")[0] == (100, 1)
    assert q(url, "SELECT count(*) FROM settings")[0][0] == len(seeding._SETTINGS)
