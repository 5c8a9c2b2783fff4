"""triage-assignment through the API on the real stack: OP-001, OP-002 and every refusal."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.sla_world import (
    World,
    audit_rows,
    make_request,
    make_world,
    request_row,
    timeline,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(databases: Any) -> World:
    return make_world(databases.app_url, secrets.token_hex(3))


@pytest.fixture(scope="module")
def operator(stack: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.make_token('operator')}"}


def _assignments(app_url: str, rid: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(app_url) as conn:
        return conn.execute(
            """SELECT department_id, assignee_id, priority, sla_due_at, templates, assigned_by
               FROM assignments WHERE request_id = %s""",
            (rid,),
        ).fetchall()


def _triage(api: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return api.post("/runbooks/triage-assignment/runs", headers=headers, json=body)


def test_op001_valid_triage_assigns_and_starts_the_sla_workflow(
    stack: Any, databases: Any, world: World, operator: dict[str, str]
) -> None:
    due = datetime.now(UTC) + timedelta(hours=48)
    rid = make_request(databases.app_url, world, due=due)
    body = {
        "request_id": rid,
        "department_id": world.dept,
        "assignee_id": world.staff,
        "priority": "high",
        "templates": ["acknowledge-pothole"],
    }
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        r = _triage(api, operator, body)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == f"triage:request:{rid}"
        assert r.json()["status"] == "COMPLETED"
        row = request_row(databases.app_url, rid)
        assert row["status"] == "assigned" and row["priority"] == "high"
        assert row["department_id"] == world.dept
        rows = _assignments(databases.app_url, rid)
        assert len(rows) == 1
        assert rows[0][:3] == (world.dept, world.staff, "high")
        assert rows[0][4] == ["acknowledge-pothole"]
        assert rows[0][5].startswith("token:")
        kinds = [t[0] for t in timeline(databases.app_url, rid)]
        assert kinds == ["assigned"]
        events = audit_rows(databases.opsflow_admin_url, f"request:{rid}")
        assert [e[0] for e in events] == ["assign"]
        assert events[0][1].startswith("token:") and events[0][2]["status"] == "assigned"

        # The SLA workflow runs, due at the request's own due time.
        sla = f"sla:request:{rid}"
        state = wait_for(
            lambda: _sla_state(api, operator, sla), what="sla_state of the new workflow"
        )
        assert state["state"] == "ok"
        assert datetime.fromisoformat(state["due_at"]) == due.replace(microsecond=due.microsecond)
        # Triage again: the request is no longer new (409), nothing more is written, still one
        # SLA workflow.
        again = _triage(api, operator, body)
        assert again.status_code == 409, again.text
        assert "not new" in again.json()["detail"]
        assert len(_assignments(databases.app_url, rid)) == 1
        assert api.get(f"/runs/{sla}", headers=operator).json()["status"] == "RUNNING"


def _sla_state(api: httpx.Client, headers: dict[str, str], wid: str) -> dict[str, Any] | None:
    r = api.get(f"/runs/{wid}/queries/sla_state", headers=headers)
    if r.status_code != 200:
        return None
    body = r.json()
    result = body.get("result", body)
    return result if isinstance(result, dict) and result.get("due_at") else None


def test_op002_corrections_are_audited_as_updates_with_the_actor(
    stack: Any, databases: Any, world: World, operator: dict[str, str]
) -> None:
    rid = make_request(databases.app_url, world, due=datetime.now(UTC) + timedelta(hours=72))
    override = (datetime.now(UTC) + timedelta(hours=30)).replace(microsecond=0)
    body = {
        "request_id": rid,
        "department_id": world.dept,
        "assignee_id": world.staff,
        "sla_due_at": override.isoformat(),
        "corrections": {"channel": "phone", "reporter_phone": "+1 555 0199"},
    }
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        r = _triage(api, operator, body)
        assert r.status_code == 201, r.text
        row = request_row(databases.app_url, rid)
        assert row["channel"] == "phone" and row["reporter_phone"] == "+1 555 0199"
        assert row["sla_due_at"] == override and row["status"] == "assigned"
        events = audit_rows(databases.opsflow_admin_url, f"request:{rid}")
        updates = [e for e in events if e[0] == "update"]
        assert sorted(e[2]["field"] for e in updates) == ["channel", "reporter_phone"]
        channel = next(e for e in updates if e[2]["field"] == "channel")
        assert channel[2]["old"] == "web" and channel[2]["new"] == "phone"
        assert all(e[1] == events[-1][1] and e[1].startswith("token:") for e in updates)
        assert events[-1][0] == "assign"
        state = wait_for(lambda: _sla_state(api, operator, f"sla:request:{rid}"))
        assert datetime.fromisoformat(state["due_at"]) == override


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("unknown-department", 422, "unknown department"),
        ("unknown-assignee", 422, "unknown or inactive assignee"),
        ("assignee-outside-department", 422, "is not in department"),
        ("not-new", 409, "not new"),
        ("closed", 409, "is closed"),
        ("unknown-request", 404, "unknown request"),
        ("bad-correction", 422, "cannot correct"),
    ],
)
def test_refusals_answer_4xx_and_change_nothing(
    stack: Any,
    databases: Any,
    world: World,
    operator: dict[str, str],
    case: str,
    code: int,
    needle: str,
) -> None:
    status = {"not-new": "in_progress", "closed": "closed"}.get(case, "new")
    rid = make_request(databases.app_url, world, status=status)
    body: dict[str, Any] = {
        "request_id": rid,
        "department_id": world.dept,
        "assignee_id": world.staff,
    }
    if case == "unknown-department":
        body["department_id"] = 987654321
    elif case == "unknown-assignee":
        body["assignee_id"] = 987654321
    elif case == "assignee-outside-department":
        body["assignee_id"] = world.outsider
    elif case == "unknown-request":
        body["request_id"] = 987654321
    elif case == "bad-correction":
        body["corrections"] = {"status": "resolved"}
    before = request_row(databases.app_url, rid)
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        r = _triage(api, operator, body)
    assert r.status_code == code, r.text
    assert needle in r.json()["detail"]
    assert request_row(databases.app_url, rid) == before
    assert _assignments(databases.app_url, rid) == []
    assert timeline(databases.app_url, rid) == []
    assert [
        e
        for e in audit_rows(databases.opsflow_admin_url, f"request:{body['request_id']}")
        if e[0] in ("assign", "update")
    ] == []


def test_only_staff_roles_may_triage(stack: Any, databases: Any, world: World) -> None:
    auditor = {"Authorization": f"Bearer {stack.make_token('auditor')}"}
    rid = make_request(databases.app_url, world)
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = _triage(
            api,
            auditor,
            {"request_id": rid, "department_id": world.dept, "assignee_id": world.staff},
        )
    assert r.status_code == 403
    assert request_row(databases.app_url, rid)["status"] == "new"


def test_cli_run_triage_and_refusal(stack: Any, databases: Any, world: World) -> None:
    from tests.integration.test_cli import opsflow

    token = stack.make_token("operator")
    rid = make_request(databases.app_url, world, due=datetime.now(UTC) + timedelta(hours=50))
    args = ["run", "triage-assignment", "--param", f"request_id={rid}"]
    args += ["--param", f"department_id={world.dept}", "--param", f"assignee_id={world.staff}"]
    args += ["--param", "priority=high", "--param", 'corrections={"channel": "email"}']
    done = opsflow(stack, *args, "--json", token=token)
    assert done.returncode == 0, done.stderr
    assert request_row(databases.app_url, rid)["status"] == "assigned"
    assert request_row(databases.app_url, rid)["channel"] == "email"
    again = opsflow(stack, *args, token=token)
    assert again.returncode == 1 and "409" in again.stderr and "not new" in again.stderr
