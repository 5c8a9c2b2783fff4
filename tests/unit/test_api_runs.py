"""Starting, reading, signalling, updating, querying and cancelling runs through the API."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from opsflow.shared.dev_role_elevation import DevRoleElevationInput, DisableSignal
from opsflow.shared.roles import Role
from tests.unit.api_fakes import FakeHandle, Harness, SetLevel, make_harness

GRANT = {"reason": "INC-2211: hot-fix the connector", "hours": 4}


@pytest.fixture
def h() -> Harness:
    return make_harness()


def start(h: Harness, runbook: str, body: object, role: Role = Role.ADMIN, **headers: str):  # type: ignore[no-untyped-def]
    return h.http.post(f"/runbooks/{runbook}/runs", headers={**h.auth(role), **headers}, json=body)


def test_start_answers_201_and_records_run_and_audit(h: Harness) -> None:
    r = start(h, "dev-role-elevation", GRANT)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "dev-role-elevation:production"
    assert body["runbook"] == "dev-role-elevation"
    assert body["status"] == "RUNNING"
    assert body["ui_url"] == (
        "http://ui.test/namespaces/default/workflows/"
        f"{quote('dev-role-elevation:production', safe='')}/{body['run_id']}/history"
    )
    run = h.temporal.runs[body["id"]][-1]
    assert run.inp == DevRoleElevationInput(reason=GRANT["reason"], hours=4)
    kw = run.start_kwargs
    assert kw["task_queue"] == h.settings.temporal_task_queue
    assert kw["memo"] == {"actor": "token:admin-1:admin", "runbook": "dev-role-elevation"}
    sa = kw["search_attributes"]
    assert sa.get(SearchAttributeKey.for_keyword("OpsRunbook")) == "dev-role-elevation"
    assert sa.get(SearchAttributeKey.for_keyword("OpsActor")) == "token:admin-1:admin"
    assert sa.get(SearchAttributeKey.for_keyword("OpsTenant")) == "-"
    assert sa.get(SearchAttributeKey.for_keyword("OpsState")) == "started"
    assert kw["static_summary"].startswith("developer role in production for 4 h")
    assert "| reason |" in kw["static_details"]
    rec, started_at = h.store.runs[-1]
    assert (rec.workflow_id, rec.run_id, rec.status) == (body["id"], body["run_id"], "running")
    assert rec.input == {"reason": GRANT["reason"], "hours": 4, "environment": "production"}
    assert started_at is not None
    ev = h.store.events[-1]
    assert (ev.action, ev.target, ev.outcome) == ("run.start", f"run:{body['id']}", "success")
    assert ev.details == {"runbook": "dev-role-elevation", "run_id": body["run_id"]}


def test_second_grant_is_409_naming_the_running_workflow(h: Harness) -> None:
    assert start(h, "dev-role-elevation", GRANT).status_code == 201
    before = h.changes()
    r = start(h, "dev-role-elevation", {**GRANT, "reason": "another reason"})
    assert r.status_code == 409
    assert "dev-role-elevation:production" in r.json()["detail"]
    assert h.changes() == before


def test_business_key_double_submit_returns_the_running_run(h: Harness) -> None:
    spec_body = {"name": "alpha", "level": 2}
    first = start(h, "level", spec_body)
    second = start(h, "level", spec_body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["run_id"] == second.json()["run_id"]
    assert len(h.temporal.started()) == 1
    assert [e.action for e in h.store.events] == ["run.start"]


def test_idempotency_key_replays_the_same_answer(h: Harness) -> None:
    a = start(h, "level", {"name": "a"}, **{"Idempotency-Key": "k-1"})
    # The run ended and the same key is sent again: the stored answer, no second run.
    h.temporal.runs["level:a"][-1].status = WorkflowExecutionStatus.COMPLETED
    b = start(h, "level", {"name": "a"}, **{"Idempotency-Key": "k-1"})
    assert a.status_code == b.status_code == 201
    assert a.json() == b.json()
    assert len(h.temporal.started()) == 1


def test_idempotency_key_with_other_body_is_422(h: Harness) -> None:
    assert start(h, "level", {"name": "a"}, **{"Idempotency-Key": "k-2"}).status_code == 201
    before = h.changes()
    r = start(h, "level", {"name": "b"}, **{"Idempotency-Key": "k-2"})
    assert r.status_code == 422
    assert "Idempotency-Key" in r.json()["detail"]
    assert h.changes() == before


def test_idempotency_keys_are_per_caller(h: Harness) -> None:
    a = start(h, "level", {"name": "a"}, Role.ADMIN, **{"Idempotency-Key": "same"})
    h.temporal.runs["level:a"][-1].status = WorkflowExecutionStatus.COMPLETED
    b = start(h, "level", {"name": "a"}, Role.OPERATOR, **{"Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 201
    assert a.json()["run_id"] != b.json()["run_id"]


def test_get_run_shows_input_progress_and_times(h: Harness) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    r = h.http.get(f"/runs/{wid}", headers=h.auth(Role.AUDITOR))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "RUNNING"
    assert body["input"]["reason"] == GRANT["reason"]
    assert body["progress"] == {"step": "waiting", "done": 1, "total": 3, "message": ""}
    assert body["actor"] == "token:admin-1:admin"
    assert body["closed_at"] is None and body["started_at"]
    assert body["result"] is None and body["failure"] is None


def test_get_run_tolerates_a_failing_progress_query(h: Harness) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    h.temporal.runs[wid][-1].progress = RuntimeError("no worker")
    r = h.http.get(f"/runs/{wid}", headers=h.auth(Role.ADMIN))
    assert r.status_code == 200
    assert r.json()["progress"] is None


def test_get_run_closed_shows_result_or_failure(h: Harness) -> None:
    wid = start(h, "level", {"name": "done"}).json()["id"]
    run = h.temporal.runs[wid][-1]
    run.status, run.result = WorkflowExecutionStatus.COMPLETED, {"level": 1}
    body = h.http.get(f"/runs/{wid}", headers=h.auth(Role.ADMIN)).json()
    assert body["status"] == "COMPLETED" and body["result"] == {"level": 1}
    assert body["progress"] is None and body["closed_at"]
    run.status, run.failure = WorkflowExecutionStatus.FAILED, "disk full"
    body = h.http.get(f"/runs/{wid}", headers=h.auth(Role.ADMIN)).json()
    assert body["status"] == "FAILED" and body["failure"] == "disk full"


def test_get_run_role_and_unknown(h: Harness) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    assert h.http.get(f"/runs/{wid}", headers=h.auth(Role.OPERATOR)).status_code == 403
    r = h.http.get("/runs/nope", headers=h.auth(Role.ADMIN))
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_runbook_found_by_memo_when_search_attribute_missing(h: Harness) -> None:
    from temporalio.common import TypedSearchAttributes

    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    h.temporal.runs[wid][-1].search_attributes = TypedSearchAttributes.empty
    assert h.http.get(f"/runs/{wid}", headers=h.auth(Role.ADMIN)).json()["runbook"] == (
        "dev-role-elevation"
    )


def test_signal_roles_unknown_signal_and_closed_run(h: Harness) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    before = h.changes()
    assert (
        h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.AUDITOR)).status_code == 403
    )
    r = h.http.post(f"/runs/{wid}/signals/explode", headers=h.auth(Role.ADMIN))
    assert r.status_code == 404 and "disable" in r.json()["detail"]
    assert h.http.post("/runs/ghost/signals/disable", headers=h.auth(Role.ADMIN)).status_code == 404
    r = h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.ADMIN), json={"reason": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reason"]
    assert h.changes() == before
    # An empty body is fine (every field has a default).
    assert (
        h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.ADMIN)).status_code == 202
    )
    signal = h.temporal.runs[wid][-1].signals[-1]
    assert signal == ("disable", DisableSignal(actor="token:admin-1:admin", reason=""))
    assert h.store.events[-1].action == "run.signal"
    h.temporal.runs[wid][-1].status = WorkflowExecutionStatus.COMPLETED
    before = h.changes()
    r = h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.ADMIN))
    assert r.status_code == 409 and "COMPLETED" in r.json()["detail"]
    assert h.changes() == before


def test_signal_is_audited_before_it_is_sent(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    run = h.temporal.runs[wid][-1]
    seen: list[int] = []  # audit rows already written when the signal went out
    real_signal = FakeHandle.signal

    async def signal(self: FakeHandle, name: str, arg: object = None) -> None:
        seen.append(len(h.store.events))
        await real_signal(self, name, arg)

    monkeypatch.setattr(FakeHandle, "signal", signal)
    events = len(h.store.events)
    r = h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.ADMIN))
    assert r.status_code == 202, r.text
    assert seen == [events + 1]  # its row was there first
    row = h.store.events[-1]
    assert (row.action, row.outcome, row.details["signal"]) == (
        "run.signal",
        "requested",
        "disable",
    )
    assert len(h.store.events) == events + 1 and len(run.signals) == 1

    # An audit write that fails answers 503 before anything is sent (a retry cannot send twice).
    async def audit_down(event: object) -> None:
        from opsflow.api.errors import ServiceUnavailable

        raise ServiceUnavailable("opsflow database")

    monkeypatch.setattr(h.store, "record_event", audit_down)
    r = h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.ADMIN))
    assert r.status_code == 503, r.text
    assert len(run.signals) == 1


def test_signal_that_fails_after_its_row_gets_a_failed_row(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]

    async def unavailable(self: FakeHandle, name: str, arg: object = None) -> None:
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    monkeypatch.setattr(FakeHandle, "signal", unavailable)
    r = h.http.post(f"/runs/{wid}/signals/disable", headers=h.auth(Role.ADMIN))
    assert r.status_code == 503, r.text
    requested, failed = h.store.events[-2:]
    assert (requested.action, requested.outcome) == ("run.signal", "requested")
    assert (failed.action, failed.outcome) == ("run.signal", "failed")
    assert failed.details["signal"] == "disable"
    assert failed.details["error"] == "RPCError: connection refused"
    assert failed.actor == requested.actor == "token:admin-1:admin"


def test_update_returns_result_or_validation_error(h: Harness) -> None:
    wid = start(h, "level", {"name": "u"}).json()["id"]
    r = h.http.post(f"/runs/{wid}/updates/set-level", headers=h.auth(Role.ADMIN), json={"level": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": wid,
        "update": "set-level",
        "result": {"level": 3, "by": "token:admin-1:admin"},
    }
    assert h.temporal.runs[wid][-1].updates == [
        ("set-level", SetLevel(level=3, actor="token:admin-1:admin"))
    ]
    r = h.http.post(f"/runs/{wid}/updates/set-level", headers=h.auth(Role.ADMIN), json={"level": 9})
    assert r.status_code == 422
    assert "level above 5 needs a ticket" in r.json()["detail"]
    assert [(e.action, e.outcome) for e in h.store.events[-2:]] == [
        ("run.update", "success"),
        ("run.update", "rejected"),
    ]
    r = h.http.post(
        f"/runs/{wid}/updates/set-level", headers=h.auth(Role.OPERATOR), json={"level": 1}
    )
    assert r.status_code == 403
    r = h.http.post(f"/runs/{wid}/updates/nope", headers=h.auth(Role.ADMIN), json={})
    assert r.status_code == 404
    r = h.http.post(f"/runs/{wid}/updates/set-level", headers=h.auth(Role.ADMIN), json={})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "level"]


def test_query_roles_and_answer(h: Harness) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    r = h.http.get(f"/runs/{wid}/queries/status", headers=h.auth(Role.AUDITOR))
    assert r.status_code == 200
    assert r.json() == {
        "id": wid,
        "query": "status",
        "result": {"state": "active", "environment": "production"},
    }
    assert (
        h.http.get(f"/runs/{wid}/queries/status", headers=h.auth(Role.OPERATOR)).status_code == 403
    )
    assert h.http.get(f"/runs/{wid}/queries/secret", headers=h.auth(Role.ADMIN)).status_code == 404
    assert (
        h.http.get(f"/runs/{wid}/queries/status?arg={{x", headers=h.auth(Role.ADMIN)).status_code
        == 400
    )


def test_cancel(h: Harness) -> None:
    wid = start(h, "dev-role-elevation", GRANT).json()["id"]
    assert h.http.post(f"/runs/{wid}/cancel", headers=h.auth(Role.OPERATOR)).status_code == 403
    assert not h.temporal.runs[wid][-1].cancel_requested
    r = h.http.post(f"/runs/{wid}/cancel", headers=h.auth(Role.SUPERADMIN))
    assert r.status_code == 202 and r.json() == {"id": wid, "cancel_requested": True}
    assert h.temporal.runs[wid][-1].cancel_requested
    assert h.store.events[-1].action == "run.cancel"


def test_list_runs_filters_pagination_and_hides_unreadable_inputs(h: Harness) -> None:
    start(h, "dev-role-elevation", GRANT)
    start(h, "level", {"name": "x"}, Role.OPERATOR)
    r = h.http.get("/runs?limit=1&offset=0", headers=h.auth(Role.OPERATOR))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 2 and body["limit"] == 1 and len(body["items"]) == 1
    r = h.http.get("/runs", headers=h.auth(Role.OPERATOR))
    rows = {row["runbook"]: row for row in r.json()["items"]}
    assert rows["dev-role-elevation"]["input"] is None  # operators may not read grants
    assert rows["level"]["input"] == {"name": "x", "level": 1}
    r = h.http.get(
        "/runs?runbook=level&since=2026-01-01T00:00:00&until=2027-01-01T00:00:00Z",
        headers=h.auth(Role.ADMIN),
    )
    assert r.status_code == 200 and r.json()["total"] == 1
    filters = h.store.calls[-1][1]
    assert filters["since"].tzinfo is not None  # naive times are read as UTC


def test_runbooks_catalog_lists_schemas_and_roles(h: Harness) -> None:
    r = h.http.get("/runbooks", headers=h.auth(Role.OPERATOR))
    assert r.status_code == 200
    by_name = {rb["name"]: rb for rb in r.json()}
    dev = by_name["dev-role-elevation"]
    assert dev["start_roles"] == ["admin", "superadmin"]
    assert dev["signals"]["disable"]["roles"] == ["admin", "superadmin"]
    assert dev["signals"]["disable"]["schema"]["properties"]["reason"]["type"] == "string"
    assert dev["queries"]["status"]["schema"] is None
    assert dev["on_conflict"] == "conflict"
    hours = dev["input_schema"]["properties"]["hours"]
    assert (hours["minimum"], hours["maximum"]) == (1, 72)
    assert dev["input_schema"]["required"] == ["reason"]
    assert dev["input_example"]["hours"] == 24
    hc = by_name["health-check"]
    assert hc["schedule"]["interval_seconds"] == 300
    assert hc["trigger"] == ["schedule", "api"]
    assert by_name["level"]["updates"]["set-level"]["roles"] == ["admin"]
    one = h.http.get("/runbooks/health-check", headers=h.auth(Role.AUDITOR))
    assert one.status_code == 200 and one.json()["name"] == "health-check"
    assert h.http.get("/runbooks/nope", headers=h.auth(Role.AUDITOR)).status_code == 404
