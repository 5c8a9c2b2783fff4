"""Authentication and role checks of the API, with fakes behind every dependency."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from opsflow.catalog import RUNBOOKS
from opsflow.shared.roles import Role
from tests.unit.api_fakes import Harness, make_harness


@pytest.fixture
def h() -> Harness:
    return make_harness()


PROTECTED = [
    ("GET", "/runbooks"),
    ("GET", "/runbooks/health-check"),
    ("POST", "/runbooks/health-check/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/x"),
    ("POST", "/runs/x/signals/disable"),
    ("POST", "/runs/x/updates/set-level"),
    ("GET", "/runs/x/queries/progress"),
    ("POST", "/runs/x/cancel"),
    ("GET", "/audit"),
    ("GET", "/health/report"),
    ("GET", "/settings/dev-role-production"),
    ("PUT", "/settings/dev-role-production"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_token_is_401_with_challenge(h: Harness, method: str, path: str) -> None:
    before = h.changes()
    r = h.http.request(method, path, json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "missing bearer token" in r.json()["detail"]
    assert h.changes() == before


@pytest.mark.parametrize(
    "header",
    [
        "Bearer opsf_nope",
        "Bearer " + "x" * 5000,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer opsf_\u00e9t\u00e9",
    ],
)
def test_bad_tokens_are_401_and_never_echoed(h: Harness, header: str) -> None:
    r = h.http.get("/runbooks", headers={"Authorization": header.encode("utf-8")})
    assert r.status_code == 401
    assert "opsf_nope" not in r.text


def test_revoked_token_fails_at_once(h: Harness) -> None:
    headers = h.auth(Role.ADMIN)
    assert h.http.get("/runbooks", headers=headers).status_code == 200
    h.store.tokens[h.tokens[Role.ADMIN]].revoked_at = datetime.now(UTC)
    assert h.http.get("/runbooks", headers=headers).status_code == 401


def test_wrong_role_is_403_naming_the_needed_roles(h: Harness) -> None:
    before = h.changes()
    r = h.http.post(
        "/runbooks/dev-role-elevation/runs",
        headers=h.auth(Role.OPERATOR),
        json={"reason": "INC-1: fix", "hours": 2},
    )
    assert r.status_code == 403
    detail = r.json()["detail"]
    assert "admin or superadmin" in detail and "operator" in detail
    assert h.changes() == before


def test_forbidden_caller_gets_403_even_with_malformed_body(h: Harness) -> None:
    r = h.http.post(
        "/runbooks/dev-role-elevation/runs",
        headers={**h.auth(Role.AUDITOR), "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 403


# Runbooks whose input has required fields (the others start with {}).
REQUIRED_INPUT: dict[str, dict[str, object]] = {
    "triage-assignment": {"request_id": 1, "department_id": 1, "assignee_id": 1},
    "sla-escalation": {"request_id": 1, "sla_due_at": "2026-11-23T12:00:00+00:00"},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_start_allowed_exactly_for_declared_roles(h: Harness, role: Role, runbook: str) -> None:
    spec = RUNBOOKS[runbook]
    body = {"reason": "INC-7: emergency fix", "hours": 1} if runbook == "dev-role-elevation" else {}
    body = REQUIRED_INPUT.get(runbook, body)
    r = h.http.post(f"/runbooks/{runbook}/runs", headers=h.auth(role), json=body)
    if role in spec.start:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 403, r.text
        assert h.store.events == []


@pytest.mark.parametrize("role", list(Role))
def test_audit_readers(h: Harness, role: Role) -> None:
    r = h.http.get("/audit", headers=h.auth(role))
    allowed = {Role.AUDITOR, Role.COMPLIANCE, Role.SUPERADMIN}
    assert r.status_code == (200 if role in allowed else 403)


@pytest.mark.parametrize("role", list(Role))
def test_health_report_readers(h: Harness, role: Role) -> None:
    r = h.http.get("/health/report", headers=h.auth(role))
    denied = {Role.COMPLIANCE}
    assert r.status_code == (403 if role in denied else 200)


@pytest.mark.parametrize("role", list(Role))
def test_dev_role_setting_roles(h: Harness, role: Role) -> None:
    get = h.http.get("/settings/dev-role-production", headers=h.auth(role))
    assert get.status_code == (200 if role in {Role.ADMIN, Role.SUPERADMIN, Role.AUDITOR} else 403)
    put = h.http.put(
        "/settings/dev-role-production",
        headers=h.auth(role),
        content=json.dumps({"allow": True, "hours": 1, "reason": f"INC-{role}: test"}),
    )
    if role in {Role.ADMIN, Role.SUPERADMIN}:
        # The first grant starts; the second (same environment) conflicts.
        assert put.status_code in (201, 409), put.text
    else:
        assert put.status_code == 403


def test_actor_is_bound_to_the_token_not_the_body(h: Harness) -> None:
    r = h.http.post(
        "/runbooks/dev-role-elevation/runs",
        headers=h.auth(Role.ADMIN),
        json={"reason": "INC-9: fix", "hours": 3},
    )
    assert r.status_code == 201
    wid = r.json()["id"]
    r = h.http.post(
        f"/runs/{wid}/signals/disable",
        headers=h.auth(Role.SUPERADMIN),
        json={"actor": "someone-else", "reason": "done"},
    )
    assert r.status_code == 202, r.text
    name, arg = h.temporal.runs[wid][-1].signals[0]
    assert name == "disable"
    assert arg.actor == "token:superadmin-1:superadmin"
    assert arg.reason == "done"
    assert h.store.events[-1].actor == "token:superadmin-1:superadmin"
