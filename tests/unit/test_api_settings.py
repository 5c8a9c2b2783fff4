"""``/settings/dev-role-production``: the seed's shape over the dev-role-elevation runbook."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowExecutionStatus

from opsflow.shared.dev_role_elevation import SETTING_KEY, DevRoleElevationInput, DisableSignal
from opsflow.shared.roles import Role
from tests.unit.api_fakes import NOW, Harness, make_harness


@pytest.fixture
def h() -> Harness:
    return make_harness()


def test_status_off_when_no_setting(h: Harness) -> None:
    r = h.http.get("/settings/dev-role-production", headers=h.auth(Role.AUDITOR))
    assert r.status_code == 200
    assert r.json() == {"allowed": False, "is_production": True, "expires_at": None}


def test_status_not_production() -> None:
    h = make_harness()
    h.settings.opsflow_env = "development"
    r = h.http.get("/settings/dev-role-production", headers=h.auth(Role.ADMIN))
    assert r.json()["is_production"] is False


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ({"allow": True, "expires_at": "2026-11-22T14:00:00+00:00"}, True),
        ({"allow": True, "expires_at": "2026-11-22T11:59:59+00:00"}, False),  # expired
        ({"allow": False, "expires_at": "2026-11-22T14:00:00+00:00"}, False),
        ({"allow": True, "expires_at": "not a time"}, False),
        ({"allow": True}, False),
        ("garbage", False),
    ],
)
def test_status_reads_the_app_setting(h: Harness, value: object, allowed: bool) -> None:
    h.store.settings[SETTING_KEY] = value
    body = h.http.get("/settings/dev-role-production", headers=h.auth(Role.ADMIN)).json()
    assert body["allowed"] is allowed
    assert body["expires_at"] == ("2026-11-22T14:00:00+00:00" if allowed else None)
    assert NOW.isoformat() < "2026-11-22T14:00:00+00:00"


def test_put_allow_starts_the_runbook_like_post(h: Harness) -> None:
    r = h.http.put(
        "/settings/dev-role-production",
        headers=h.auth(Role.ADMIN),
        json={"allow": True, "hours": 24, "reason": "INC-1: emergency"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "dev-role-elevation:production"
    run = h.temporal.started()[0]
    assert run.inp == DevRoleElevationInput(reason="INC-1: emergency", hours=24)
    assert h.store.events[-1].action == "run.start"
    again = h.http.put(
        "/settings/dev-role-production",
        headers=h.auth(Role.SUPERADMIN),
        json={"allow": True, "hours": 2, "reason": "INC-2: another"},
    )
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"allow": True, "hours": 24}, "reason"),
        ({"allow": True, "hours": 100, "reason": "abc"}, "hours"),
        ({"allow": True, "reason": "abc", "environment": "staging"}, "environment"),
        ({"hours": 1}, "allow"),
        ({"allow": "yes"}, "allow"),
    ],
)
def test_put_invalid_is_422_and_starts_nothing(h: Harness, body: object, field: str) -> None:
    r = h.http.put("/settings/dev-role-production", headers=h.auth(Role.ADMIN), json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == field
    assert h.changes() == (0, 0, 0, 0)


def test_put_disable_signals_the_running_grant(h: Harness) -> None:
    r = h.http.put(
        "/settings/dev-role-production", headers=h.auth(Role.ADMIN), json={"allow": False}
    )
    assert r.status_code == 404 and "no developer-role grant" in r.json()["detail"]
    h.http.put(
        "/settings/dev-role-production",
        headers=h.auth(Role.ADMIN),
        json={"allow": True, "hours": 5, "reason": "INC-3: fix"},
    )
    r = h.http.put(
        "/settings/dev-role-production",
        headers=h.auth(Role.SUPERADMIN),
        json={"allow": False, "reason": "fixed"},
    )
    assert r.status_code == 202, r.text
    run = h.temporal.started()[0]
    assert run.signals == [
        ("disable", DisableSignal(actor="token:superadmin-1:superadmin", reason="fixed"))
    ]
    assert h.store.events[-1].action == "run.signal"
    run.status = WorkflowExecutionStatus.COMPLETED
    r = h.http.put(
        "/settings/dev-role-production", headers=h.auth(Role.ADMIN), json={"allow": False}
    )
    assert r.status_code == 404
