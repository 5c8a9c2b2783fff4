"""The HTTP API against the real stack: Temporal dev server, PostgreSQL, SeaweedFS, worker.

Driven over HTTP as an operator would. Refused calls are checked to change nothing by counting
``audit_events`` and ``runs`` before and after; the role matrix is built from the catalog, so a
new runbook is covered without touching this file.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from opsflow.catalog import RUNBOOKS
from opsflow.shared.roles import Role

pytestmark = pytest.mark.integration

# A body every runbook refuses with 422 (unknown field): proves the role check passed without
# starting anything or sending a signal.
INVALID = {"__not_a_field__": 1}


@pytest.fixture(scope="module")
def api(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def tokens(stack: Any) -> dict[Role, str]:
    suffix = secrets.token_hex(3)
    return {
        role: stack.make_token(role.value, name=f"itest-{role.value}-{suffix}") for role in Role
    }


def auth(tokens: dict[Role, str], role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def counts(databases: Any) -> tuple[int, int]:
    """Audit events the API writes (``run.*``; the worker's own events race with tests) and
    rows of the runs read model (a new row only ever comes from a new start)."""
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        audit = conn.execute(
            "SELECT count(*) FROM audit_events WHERE action LIKE 'run.%'"
        ).fetchone()
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()
    assert audit is not None and runs is not None
    return int(audit[0]), int(runs[0])


def grant(api: httpx.Client, tokens: dict[Role, str], env: str, **extra: Any) -> httpx.Response:
    return api.post(
        "/runbooks/dev-role-elevation/runs",
        headers={**auth(tokens, Role.ADMIN), **extra.pop("headers", {})},
        json={"reason": f"itest {env}", "hours": 1, "environment": env, **extra},
    )


def end_grant(api: httpx.Client, tokens: dict[Role, str], wid: str) -> None:
    r = api.post(f"/runs/{wid}/signals/disable", headers=auth(tokens, Role.ADMIN), json={})
    assert r.status_code in (202, 409), r.text


def wait_closed(
    api: httpx.Client, tokens: dict[Role, str], wid: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.get(f"/runs/{wid}", headers=auth(tokens, Role.ADMIN)).json()
        if body["status"] != "RUNNING" or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


# --- refused input changes nothing --------------------------------------------------------------


def test_bad_input_matrix_changes_nothing(
    api: httpx.Client, tokens: dict[Role, str], databases: Any
) -> None:
    admin = auth(tokens, Role.ADMIN)
    json_h = {**admin, "Content-Type": "application/json"}
    start = "/runbooks/dev-role-elevation/runs"
    huge_int = b'{"reason": "ok ok", "hours": 1' + b"0" * 5000 + b"}"
    too_big = b'{"reason": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    bogus = {"Authorization": "Bearer opsf_bogus"}
    dev_role = "/settings/dev-role-production"
    cases: list[tuple[str, str, dict[str, str], bytes | None, int]] = [
        ("POST", start, json_h, b"{not json", 400),
        ("POST", start, json_h, b'{"reason": NaN}', 400),
        ("POST", start, json_h, huge_int, 400),  # Python refuses 5000-digit numbers
        ("POST", start, {}, b"{}", 401),
        ("POST", start, bogus, b"{}", 401),
        ("POST", start, auth(tokens, Role.OPERATOR), b"{}", 403),
        ("POST", "/runbooks/no-such-runbook/runs", json_h, b"{}", 404),
        ("GET", "/runs/no-such-run", admin, None, 404),
        ("POST", "/runs/no-such-run/signals/disable", json_h, b"{}", 404),
        ("GET", "/runs/no-such-run/queries/status", admin, None, 404),
        ("POST", "/runs/no-such-run/cancel", admin, None, 404),
        ("POST", start, json_h, b'{"hours": 5}', 422),
        ("POST", start, json_h, b'{"reason": "ok ok", "hours": 99}', 422),
        (
            "POST",
            start,
            json_h,
            b'{"reason": "ok ok", "hours": 123456789012345678901234567890}',
            422,
        ),
        ("POST", start, json_h, b'{"reason": "a\\u0000b"}', 422),
        ("POST", start, json_h, too_big, 413),
        ("PUT", dev_role, json_h, b'{"allow": true, "hours": 24}', 422),
        ("GET", "/runs?limit=abc", admin, None, 422),
        ("GET", "/runs?since=not-a-time", admin, None, 422),
        ("GET", "/audit?after_id=99999999999999999999999", auth(tokens, Role.AUDITOR), None, 422),
    ]
    before = counts(databases)
    for method, path, headers, body, expected in cases:
        r = api.request(method, path, headers=headers, content=body)
        assert r.status_code == expected, (
            method,
            path,
            body and body[:60],
            r.status_code,
            r.text[:300],
        )
        assert r.headers["content-type"].startswith("application/json")
        if expected == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
        if expected == 422 and isinstance(r.json()["detail"], list):
            assert r.json()["detail"][0]["loc"]
    assert counts(databases) == before


# --- every role against every route ----------------------------------------------------------


def test_role_matrix_has_no_unauthorised_success(
    api: httpx.Client, tokens: dict[Role, str], databases: Any
) -> None:
    # One running run per runbook that can wait: a dev-role grant in a test environment.
    env = f"itest-roles-{secrets.token_hex(2)}"
    started = grant(api, tokens, env)
    assert started.status_code == 201, started.text
    running = {"dev-role-elevation": started.json()["id"]}
    hc = api.post(
        "/runbooks/health-check/runs", headers=auth(tokens, Role.ADMIN), json={"notify": False}
    )
    assert hc.status_code in (200, 201), hc.text
    running["health-check"] = hc.json()["id"]

    for name, spec in RUNBOOKS.items():
        for role in Role:
            h = auth(tokens, role)
            r = api.post(f"/runbooks/{name}/runs", headers=h, json=INVALID)
            assert r.status_code == (422 if role in spec.start else 403), (name, role, r.text)
            wid = running.get(name)
            if wid is None:
                continue
            viewers = spec.start | spec.cancel | {Role.AUDITOR, Role.COMPLIANCE}
            for group in (spec.signals, spec.updates, spec.queries):
                for action in group.values():
                    viewers |= action.roles
            r = api.get(f"/runs/{wid}", headers=h)
            assert r.status_code == (200 if role in viewers else 403), (name, role, r.text)
            for sig, action in spec.signals.items():
                r = api.post(f"/runs/{wid}/signals/{sig}", headers=h, json=INVALID)
                allowed = role in action.roles
                # allowed: the argument is judged (422), or the run already ended (409)
                assert (r.status_code in (409, 422)) if allowed else r.status_code == 403, (
                    name, sig, role, r.text,
                )  # fmt: skip
            for upd, action in spec.updates.items():
                r = api.post(f"/runs/{wid}/updates/{upd}", headers=h, json=INVALID)
                assert (
                    (r.status_code in (409, 422)) if role in action.roles else r.status_code == 403
                )
            for query, action in spec.queries.items():
                r = api.get(f"/runs/{wid}/queries/{query}", headers=h)
                if role in action.roles:
                    assert r.status_code != 403 and r.status_code < 500, (name, query, role, r.text)
                else:
                    assert r.status_code == 403, (name, query, role, r.text)
        # Cancel last: the first allowed role cancels (202), later allowed roles find it ended.
        wid = running.get(name)
        if wid is not None:
            for role in Role:
                r = api.post(f"/runs/{wid}/cancel", headers=auth(tokens, role))
                if role in spec.cancel:
                    assert r.status_code in (202, 409), (name, role, r.text)
                else:
                    assert r.status_code == 403, (name, role, r.text)

    admins = {Role.ADMIN, Role.SUPERADMIN}
    fixed_routes = [
        ("GET", "/audit", {Role.AUDITOR, Role.COMPLIANCE, Role.SUPERADMIN}, None, 200),
        ("GET", "/health/report", set(Role) - {Role.COMPLIANCE}, None, 200),
        ("GET", "/settings/dev-role-production", admins | {Role.AUDITOR}, None, 200),
        ("PUT", "/settings/dev-role-production", admins, {"allow": "x"}, 422),
        ("GET", "/runbooks", set(Role), None, 200),
        ("GET", "/runs", set(Role), None, 200),
    ]  # fmt: skip
    for method, path, allowed, body, ok_status in fixed_routes:
        for role in Role:
            r = api.request(method, path, headers=auth(tokens, role), json=body)
            assert r.status_code == (ok_status if role in allowed else 403), (path, role, r.text)

    # The dev-role run was cancelled above: the worker turns the grant off and it closes.
    closed = wait_closed(api, tokens, running["dev-role-elevation"])
    assert closed["status"] in ("CANCELED", "COMPLETED"), closed


def test_revoked_token_fails_at_once(api: httpx.Client, stack: Any, databases: Any) -> None:
    from opsflow.adapters.postgres import open_pool
    from opsflow.adapters.tokens import revoke_token

    name = f"itest-revoke-{secrets.token_hex(3)}"
    token = stack.make_token("operator", name=name)
    h = {"Authorization": f"Bearer {token}"}
    assert api.get("/runbooks", headers=h).status_code == 200

    async def revoke() -> bool:
        pool = await open_pool(databases.opsflow_url, name="itest", max_size=1)
        try:
            return await revoke_token(pool, name, actor="itest")
        finally:
            await pool.close()

    # The API answers a verified token from memory while it listens for token changes: the
    # revocation must reach it through that channel.
    with psycopg.connect(databases.opsflow_admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN opsflow_api_tokens'"
        ).fetchone()
    assert row is not None and row[0] >= 1
    assert api.get("/runbooks", headers=h).status_code == 200  # from memory now
    metrics = api.get("/metrics").text
    assert "opsflow_api_token_cache_live 1.0" in metrics
    hits = re.search(r"^opsflow_api_token_cache_hits_total (\S+)$", metrics, re.M)
    assert hits is not None and float(hits.group(1)) >= 1

    assert asyncio.run(revoke())
    r = api.get("/runbooks", headers=h)
    assert r.status_code == 401
    assert token not in r.text


# --- starts: idempotency, conflicts, the seed's settings shape ---------------------------------


def test_idempotent_double_submit_starts_one_run(
    api: httpx.Client, tokens: dict[Role, str], databases: Any
) -> None:
    env = f"itest-idem-{secrets.token_hex(2)}"
    key = {"Idempotency-Key": f"itest-{secrets.token_hex(4)}"}
    first = grant(api, tokens, env, headers=key)
    second = grant(api, tokens, env, headers=key)
    assert first.status_code == 201, first.text
    assert second.status_code == 201 and second.json() == first.json()
    wid = first.json()["id"]
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        n = conn.execute("SELECT count(*) FROM runs WHERE workflow_id = %s", (wid,)).fetchone()
        starts = conn.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'run.start' AND workflow_id = %s",
            (wid,),
        ).fetchone()
    assert n is not None and n[0] == 1
    assert starts is not None and starts[0] == 1
    # The same key with another body is refused and starts nothing.
    other = grant(api, tokens, env + "x", headers=key)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    end_grant(api, tokens, wid)


def test_second_grant_conflicts_and_the_status_follows_the_run(
    api: httpx.Client, tokens: dict[Role, str], databases: Any
) -> None:
    admin = auth(tokens, Role.ADMIN)
    put = api.put(
        "/settings/dev-role-production",
        headers=admin,
        json={"allow": True, "hours": 2, "reason": "INC-itest: production grant"},
    )
    assert put.status_code == 201, put.text
    wid = put.json()["id"]
    assert wid == "dev-role-elevation:production"
    assert put.json()["ui_url"].startswith("http://")
    before = counts(databases)
    again = api.post(
        "/runbooks/dev-role-elevation/runs",
        headers=admin,
        json={"reason": "second grant", "hours": 1},
    )
    assert again.status_code == 409, again.text
    assert wid in again.json()["detail"]
    assert counts(databases) == before

    # The workflow sets the setting; the status answers the seed's shape.
    deadline = time.monotonic() + 30
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = api.get("/settings/dev-role-production", headers=auth(tokens, Role.AUDITOR)).json()
        if status["allowed"]:
            break
        time.sleep(0.3)
    assert status["allowed"] is True and status["expires_at"], status
    assert set(status) == {"allowed", "is_production", "expires_at"}

    run = api.get(f"/runs/{wid}", headers=admin).json()
    assert run["status"] == "RUNNING" and run["runbook"] == "dev-role-elevation"
    assert run["input"]["reason"] == "INC-itest: production grant"
    assert run["actor"] and run["actor"].startswith("token:")

    off = api.put("/settings/dev-role-production", headers=admin, json={"allow": False})
    assert off.status_code == 202, off.text
    closed = wait_closed(api, tokens, wid)
    assert closed["status"] == "COMPLETED", closed
    assert closed["result"]["ended_by"] == "disable"
    status = api.get("/settings/dev-role-production", headers=admin).json()
    assert status["allowed"] is False and status["expires_at"] is None
    again = api.put("/settings/dev-role-production", headers=admin, json={"allow": False})
    assert again.status_code == 404

    audit = api.get(
        "/audit", params={"target": f"run:{wid}"}, headers=auth(tokens, Role.AUDITOR)
    ).json()
    actions = [e["action"] for e in audit["items"]]
    assert "run.start" in actions and "run.signal" in actions
    for event in audit["items"]:
        assert "opsf_" not in str(event["details"])


def test_health_check_run_is_readable(api: httpx.Client, tokens: dict[Role, str]) -> None:
    r = api.post(
        "/runbooks/health-check/runs",
        headers={**auth(tokens, Role.OPERATOR), "Idempotency-Key": secrets.token_hex(8)},
        json={"notify": False},
    )
    assert r.status_code in (200, 201), r.text
    run = wait_closed(api, tokens, r.json()["id"], timeout=90)
    assert run["status"] == "COMPLETED", run
    assert run["result"]["status"] in ("ok", "degraded")
    listed = api.get(
        "/runs", params={"runbook": "health-check", "limit": 5}, headers=auth(tokens, Role.OPERATOR)
    ).json()
    assert listed["total"] >= 1 and any(i["workflow_id"] == run["id"] for i in listed["items"])
    report = api.get("/health/report", headers=auth(tokens, Role.OPERATOR))
    assert report.status_code == 200
    assert report.json()["latest"] is not None


# --- probes -----------------------------------------------------------------------------------


def test_healthz_reports_every_dependency_with_latency(api: httpx.Client) -> None:
    r = api.get("/healthz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert set(checks) == {"temporal", "opsflow_db", "app_db", "s3"}
    for check in checks.values():
        assert check["ok"] is True and check["latency_ms"] >= 0
    assert api.get("/api/health").json() == {"status": "ok"}


def test_metrics_expose_request_counters(api: httpx.Client, tokens: dict[Role, str]) -> None:
    api.get("/runbooks", headers=auth(tokens, Role.AUDITOR))
    r = api.get("/metrics")
    assert r.status_code == 200
    assert 'opsflow_api_requests_total{method="GET",route="/runbooks",status="200"}' in r.text
    assert "opsflow_api_request_duration_seconds_bucket" in r.text
    assert "opsf_" not in r.text


def test_openapi_docs_are_served(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    assert "/runbooks/{name}/runs" in doc["paths"]
    assert api.get("/docs").status_code == 200
