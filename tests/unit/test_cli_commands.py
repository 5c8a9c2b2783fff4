"""The opsflow CLI against a fake API (an httpx MockTransport): output, exit codes, following."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from opsflow.cli.main import CliState, app
from opsflow.config import Settings

TOKEN = "opsf_unit_test_secret_token_value"
URL = "http://api.test:8080"

RUNBOOKS = [
    {
        "name": "dev-role-elevation",
        "title": "Developer role in production (emergency)",
        "description": "...",
        "trigger": ["api"],
        "start_roles": ["admin", "superadmin"],
        "signals": {
            "disable": {
                "roles": ["admin", "superadmin"],
                "schema": {
                    "type": "object",
                    "properties": {"actor": {"type": "string"}, "reason": {"type": "string"}},
                },
                "description": "End the window now.",
            }
        },
        "updates": {
            "extend": {
                "roles": ["admin"],
                "schema": {"type": "object", "properties": {"hours": {"type": "integer"}}},
            }
        },
        "queries": {"status": {"roles": ["admin"]}},
        "cancel_roles": ["admin"],
        "schedule": None,
        "input_schema": {
            "type": "object",
            "properties": {
                "reason": {"type": "string"},
                "hours": {"type": "integer"},
                "environment": {"type": "string"},
            },
            "required": ["reason"],
        },
    },
    {
        "name": "health-check",
        "title": "System health check",
        "description": "...",
        "trigger": ["schedule", "api"],
        "start_roles": ["operator", "admin"],
        "signals": {},
        "updates": {},
        "queries": {"progress": {"roles": ["operator"]}},
        "cancel_roles": ["admin"],
        "schedule": {"id": "health-check"},
        "input_schema": {"type": "object", "properties": {"notify": {"type": "boolean"}}},
    },
]


def run_doc(status: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "health-check:manual-1",
        "run_id": "r-1",
        "runbook": "health-check",
        "status": status,
        "input": {"notify": True},
        "result": None,
        "failure": None,
        "progress": None,
        "started_at": "2026-11-21T08:00:00Z",
        "closed_at": None,
        "ui_url": "http://ui.test/namespaces/default/workflows/health-check:manual-1/r-1",
        "actor": "token:ops",
        "tenant": "-",
    }
    doc.update(extra)
    return doc


@dataclass
class FakeApi:
    """Routes requests to per-test handlers and records what the CLI sent."""

    routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = field(
        default_factory=dict
    )
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Any, status: int = 200) -> None:
        """Answer with each JSON body in turn (the last one repeats)."""
        queue = list(answers)

        def handler(_req: httpx.Request) -> httpx.Response:
            body = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(body, httpx.Response):
                return body
            return httpx.Response(status, json=body)

        self.routes[(method, path)] = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, unquote(request.url.path))
        if key not in self.routes:
            return httpx.Response(404, json={"detail": f"no route {key}"})
        return self.routes[key](request)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and unquote(r.url.path) == path]


@pytest.fixture
def api() -> FakeApi:
    fake = FakeApi()
    fake.on("GET", "/runbooks", RUNBOOKS)
    return fake


def invoke(api: FakeApi, *args: str, transport: httpx.BaseTransport | None = None) -> Any:
    settings = Settings(opsflow_url=URL, opsflow_token=SecretStr(TOKEN))
    state = CliState(
        settings=settings,
        transport=transport or httpx.MockTransport(api),
        poll_interval=0,
        configure_logs=False,
    )
    result = CliRunner().invoke(app, list(args), obj=state)
    # The token is never printed by an API command, whatever happens.
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    return result


def test_runbooks_table_and_json(api: FakeApi) -> None:
    table = invoke(api, "runbooks")
    assert table.exit_code == 0, table.stderr
    assert "dev-role-elevation" in table.stdout and "health-check" in table.stdout
    assert "disable" in table.stdout
    as_json = invoke(api, "runbooks", "--json")
    assert json.loads(as_json.stdout) == RUNBOOKS
    # Global --json works as well as the command's own.
    assert json.loads(invoke(api, "--json", "runbooks").stdout) == RUNBOOKS
    assert api.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_run_follows_progress_to_completion(api: FakeApi) -> None:
    api.on(
        "POST",
        "/runbooks/health-check/runs",
        {
            "id": "health-check:manual-1",
            "run_id": "r-1",
            "runbook": "health-check",
            "status": "RUNNING",
            "ui_url": "http://ui.test/x",
        },
        status=201,
    )
    api.on(
        "GET",
        "/runs/health-check:manual-1",
        run_doc("RUNNING", progress={"step": "app", "done": 1, "total": 4, "message": "GET"}),
        run_doc("RUNNING", progress={"step": "databases", "done": 2, "total": 4, "message": ""}),
        run_doc(
            "COMPLETED",
            result={"alerts_raised": 0, "ok": True},
            progress={"step": "done", "done": 4, "total": 4, "message": ""},
        ),
    )
    result = invoke(api, "run", "health-check", "--param", "notify=false")
    assert result.exit_code == 0, result.stderr
    (post,) = api.sent("POST", "/runbooks/health-check/runs")
    assert json.loads(post.content) == {"notify": False}
    assert len(api.sent("GET", "/runs/health-check:manual-1")) == 3
    assert "COMPLETED" in result.stdout
    assert "alerts_raised" in result.stdout
    assert "http://ui.test/namespaces/default/workflows" in result.stdout
    # The bar's last state is drawn on stderr, never mixed into stdout.
    assert "4/4" in result.stderr and "4/4" not in result.stdout


def test_run_failure_exits_1_with_failure(api: FakeApi) -> None:
    api.on("POST", "/runbooks/health-check/runs", run_doc("RUNNING"), status=201)
    api.on(
        "GET",
        "/runs/health-check:manual-1",
        run_doc("FAILED", failure="activity check_app failed: boom"),
    )
    result = invoke(api, "run", "health-check")
    assert result.exit_code == 1
    assert "FAILED" in result.stdout
    assert "check_app failed: boom" in result.stdout


def test_run_json_prints_final_run_only(api: FakeApi) -> None:
    api.on("POST", "/runbooks/health-check/runs", run_doc("RUNNING"), status=201)
    api.on("GET", "/runs/health-check:manual-1", run_doc("RUNNING"), run_doc("CANCELED"))
    result = invoke(api, "run", "health-check", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "CANCELED"


def test_run_tolerates_a_brief_404_right_after_start(api: FakeApi) -> None:
    api.on("POST", "/runbooks/health-check/runs", run_doc("RUNNING"), status=201)
    api.on(
        "GET",
        "/runs/health-check:manual-1",
        httpx.Response(404, json={"detail": "run not found"}),
        run_doc("COMPLETED", result={}),
    )
    result = invoke(api, "run", "health-check")
    assert result.exit_code == 0, result.stderr


def test_completed_run_shows_a_full_bar(api: FakeApi) -> None:
    api.on("POST", "/runbooks/health-check/runs", run_doc("RUNNING"), status=201)
    api.on(
        "GET",
        "/runs/health-check:manual-1",
        run_doc("RUNNING", progress={"step": "app", "done": 1, "total": 3, "message": ""}),
        # Progress is read by a query; a closed run may report none at all.
        run_doc("COMPLETED", result={}, progress=None),
    )
    result = invoke(api, "run", "health-check")
    assert result.exit_code == 0, result.stderr
    assert "3/3" in result.stderr


def test_run_detach_prints_id_alone(api: FakeApi) -> None:
    api.on(
        "POST",
        "/runbooks/dev-role-elevation/runs",
        {
            "id": "dev-role-elevation:production",
            "run_id": "r",
            "runbook": "dev-role-elevation",
            "status": "RUNNING",
            "ui_url": "http://ui.test/y",
        },
        status=201,
    )
    result = invoke(
        api,
        "run",
        "dev-role-elevation",
        "-p",
        "reason=INC-1 fix",
        "-p",
        "hours=4",
        "--detach",
        "--idempotency-key",
        "k-1",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "dev-role-elevation:production\n"
    (post,) = api.sent("POST", "/runbooks/dev-role-elevation/runs")
    assert json.loads(post.content) == {"reason": "INC-1 fix", "hours": 4}
    assert post.headers["idempotency-key"] == "k-1"
    assert not api.sent("GET", "/runs/dev-role-elevation:production")


def test_run_input_file_merged_with_params(api: FakeApi, tmp_path: Any) -> None:
    api.on("POST", "/runbooks/dev-role-elevation/runs", run_doc("RUNNING"), status=200)
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"reason": "from file", "hours": 2}))
    result = invoke(
        api, "run", "dev-role-elevation", "--input", str(path), "-p", "hours=8", "--detach"
    )
    assert result.exit_code == 0, result.stderr
    (post,) = api.sent("POST", "/runbooks/dev-role-elevation/runs")
    assert json.loads(post.content) == {"reason": "from file", "hours": 8}
    # 200 = an existing run answered; the operator is told.
    assert "already exists" in result.stderr


def test_unknown_param_starts_nothing(api: FakeApi) -> None:
    result = invoke(api, "run", "dev-role-elevation", "-p", "hour=4")
    assert result.exit_code == 2
    assert "unknown parameter 'hour'" in result.stderr
    assert "hours" in result.stderr
    assert not api.sent("POST", "/runbooks/dev-role-elevation/runs")


def test_bad_param_type_starts_nothing(api: FakeApi) -> None:
    result = invoke(api, "run", "dev-role-elevation", "-p", "hours=many")
    assert result.exit_code == 2
    assert "hours: expected an integer" in result.stderr
    assert not api.sent("POST", "/runbooks/dev-role-elevation/runs")


def test_unknown_runbook_with_params(api: FakeApi) -> None:
    result = invoke(api, "run", "nope", "-p", "a=1")
    assert result.exit_code == 1
    assert "no runbook named 'nope'" in result.stderr
    assert "health-check" in result.stderr


def test_api_error_detail_is_printed(api: FakeApi) -> None:
    api.on(
        "POST",
        "/runbooks/dev-role-elevation/runs",
        {"detail": "role operator may not start dev-role-elevation"},
        status=403,
    )
    result = invoke(api, "run", "dev-role-elevation")
    assert result.exit_code == 1
    assert "403" in result.stderr
    assert "role operator may not start dev-role-elevation" in result.stderr
    assert result.stdout == ""


def test_validation_error_names_the_field(api: FakeApi) -> None:
    api.on(
        "POST",
        "/runbooks/dev-role-elevation/runs",
        {
            "detail": [
                {
                    "loc": ["body", "hours"],
                    "msg": "Input should be less than or equal to 72",
                    "type": "less_than_equal",
                }
            ],
            "message": "invalid input",
        },
        status=422,
    )
    result = invoke(api, "run", "dev-role-elevation", "-p", "reason=x y z", "-p", "hours=99")
    assert result.exit_code == 1
    assert "invalid input" in result.stderr
    assert "hours: Input should be less than or equal to 72" in result.stderr


def test_401_suggests_a_token(api: FakeApi) -> None:
    api.on("GET", "/runbooks", {"detail": "missing or invalid token"}, status=401)
    result = invoke(api, "runbooks")
    assert result.exit_code == 1
    assert "missing or invalid token" in result.stderr
    assert "OPSFLOW_TOKEN" in result.stderr


def test_connection_refused_names_url_and_make_dev(api: FakeApi) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = invoke(api, "runbooks", transport=httpx.MockTransport(refuse))
    assert result.exit_code == 3
    assert URL in result.stderr
    assert "make dev" in result.stderr


def test_url_and_token_overrides(api: FakeApi) -> None:
    state = CliState(
        settings=Settings(opsflow_url="http://wrong:1", opsflow_token=SecretStr("wrong")),
        transport=httpx.MockTransport(api),
        configure_logs=False,
    )
    result = CliRunner().invoke(
        app,
        ["--url", "http://other.test:9", "--token", "opsf_other", "runbooks", "--json"],
        obj=state,
    )
    assert result.exit_code == 0, result.stderr
    req = api.requests[0]
    assert str(req.url) == "http://other.test:9/runbooks"
    assert req.headers["authorization"] == "Bearer opsf_other"


def test_status_shows_run(api: FakeApi) -> None:
    api.on(
        "GET",
        "/runs/health-check:manual-1",
        run_doc(
            "RUNNING", progress={"step": "storage", "done": 3, "total": 4, "message": "buckets"}
        ),
    )
    result = invoke(api, "status", "health-check:manual-1")
    assert result.exit_code == 0, result.stderr
    assert "storage (3/4): buckets" in result.stdout
    assert "RUNNING" in result.stdout
    as_json = invoke(api, "status", "health-check:manual-1", "--json")
    assert json.loads(as_json.stdout)["progress"]["done"] == 3


def test_status_of_unknown_run(api: FakeApi) -> None:
    result = invoke(api, "status", "nope")
    assert result.exit_code == 1
    assert "404" in result.stderr


def test_runs_passes_filters(api: FakeApi) -> None:
    api.on(
        "GET", "/runs", {"items": [run_doc("COMPLETED")], "total": 31, "limit": 10, "offset": 20}
    )
    result = invoke(
        api,
        "runs",
        "--runbook",
        "health-check",
        "--status",
        "completed",
        "--actor",
        "token:ops",
        "--since",
        "2h",
        "--limit",
        "10",
        "--offset",
        "20",
    )
    assert result.exit_code == 0, result.stderr
    (req,) = api.sent("GET", "/runs")
    query = parse_qs(req.url.query.decode())
    assert query["runbook"] == ["health-check"]
    assert query["status"] == ["completed"]  # the read model's spelling
    assert query["actor"] == ["token:ops"]
    assert query["limit"] == ["10"] and query["offset"] == ["20"]
    assert query["since"][0].endswith("+00:00")
    assert "tenant" not in query
    assert "21-21 of 31" in result.stdout


def test_signal_typed_by_signal_schema(api: FakeApi) -> None:
    api.on(
        "GET",
        "/runs/dev-role-elevation:production",
        run_doc("RUNNING", id="dev-role-elevation:production", runbook="dev-role-elevation"),
    )
    api.on(
        "POST",
        "/runs/dev-role-elevation:production/signals/disable",
        {"id": "dev-role-elevation:production", "signal": "disable", "accepted": True},
        status=202,
    )
    result = invoke(
        api, "signal", "dev-role-elevation:production", "disable", "-p", "reason=done early"
    )
    assert result.exit_code == 0, result.stderr
    (post,) = api.sent("POST", "/runs/dev-role-elevation:production/signals/disable")
    assert json.loads(post.content) == {"reason": "done early"}
    assert "signal 'disable' sent" in result.stdout

    # Without params, a signal that takes an argument still gets an object (its defaults).
    invoke(api, "signal", "dev-role-elevation:production", "disable")
    last = api.sent("POST", "/runs/dev-role-elevation:production/signals/disable")[-1]
    assert json.loads(last.content) == {}


def test_signal_unknown_name_or_param(api: FakeApi) -> None:
    api.on(
        "GET",
        "/runs/dev-role-elevation:production",
        run_doc("RUNNING", runbook="dev-role-elevation"),
    )
    bad_name = invoke(api, "signal", "dev-role-elevation:production", "stop")
    assert bad_name.exit_code == 1
    assert "has no signal 'stop'" in bad_name.stderr and "disable" in bad_name.stderr
    bad_key = invoke(api, "signal", "dev-role-elevation:production", "disable", "-p", "why=x")
    assert bad_key.exit_code == 2
    assert "unknown parameter 'why' for signal 'disable'" in bad_key.stderr
    assert not api.sent("POST", "/runs/dev-role-elevation:production/signals/disable")


def test_update_prints_result_and_validation_error(api: FakeApi) -> None:
    api.on(
        "GET",
        "/runs/dev-role-elevation:production",
        run_doc("RUNNING", runbook="dev-role-elevation"),
    )
    api.on(
        "POST",
        "/runs/dev-role-elevation:production/updates/extend",
        {
            "id": "dev-role-elevation:production",
            "update": "extend",
            "result": {"expires_at": "2026-11-22T00:00:00Z"},
        },
    )
    result = invoke(api, "update", "dev-role-elevation:production", "extend", "-p", "hours=3")
    assert result.exit_code == 0, result.stderr
    (post,) = api.sent("POST", "/runs/dev-role-elevation:production/updates/extend")
    assert json.loads(post.content) == {"hours": 3}
    assert "2026-11-22T00:00:00Z" in result.stdout

    api.on(
        "POST",
        "/runs/dev-role-elevation:production/updates/extend",
        {"detail": "hours must keep the window under 72 h"},
        status=422,
    )
    refused = invoke(api, "update", "dev-role-elevation:production", "extend", "-p", "hours=99")
    assert refused.exit_code == 1
    assert "hours must keep the window under 72 h" in refused.stderr


def test_query_and_cancel(api: FakeApi) -> None:
    api.on(
        "GET",
        "/runs/x:1/queries/status",
        {"id": "x:1", "query": "status", "result": {"state": "active"}},
    )
    api.on("POST", "/runs/x:1/cancel", {"id": "x:1", "cancel_requested": True}, status=202)
    query = invoke(api, "query", "x:1", "status", "--json")
    assert query.exit_code == 0, query.stderr
    assert json.loads(query.stdout)["result"] == {"state": "active"}
    human = invoke(api, "query", "x:1", "status")
    assert '"state": "active"' in human.stdout
    cancel = invoke(api, "cancel", "x:1")
    assert cancel.exit_code == 0
    assert "cancel requested for x:1" in cancel.stdout
    assert len(api.sent("POST", "/runs/x:1/cancel")) == 1


def test_ids_with_slashes_are_quoted(api: FakeApi) -> None:
    api.on("POST", "/runs/a/b:c/cancel", {"id": "a/b:c", "cancel_requested": True}, status=202)
    result = invoke(api, "cancel", "a/b:c")
    assert result.exit_code == 0, result.stderr
    assert b"/runs/a%2Fb%3Ac/cancel" in api.requests[-1].url.raw_path


def test_health_report(api: FakeApi) -> None:
    api.on(
        "GET",
        "/health/report",
        {
            "latest": {"id": 7, "checked_at": "2026-11-21T08:00:00Z", "ok": False},
            "open_alerts": [
                {
                    "rule": "storage_pct",
                    "raised_at": "2026-11-21T07:55:00Z",
                    "message": "storage at 93%",
                }
            ],
        },
    )
    result = invoke(api, "health")
    assert result.exit_code == 0, result.stderr
    assert "storage_pct" in result.stdout and "storage at 93%" in result.stdout
    assert "checked_at" in result.stdout
    api.on("GET", "/health/report", {"latest": None, "open_alerts": []})
    empty = invoke(api, "health")
    assert "no health check has run yet" in empty.stdout
    assert "no open alerts" in empty.stdout


def audit_row(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "occurred_at": "2026-11-21T08:00:00Z",
        "actor": "token:ops",
        "action": "run.start",
        "target": f"health-check:{i}",
        "outcome": "success",
        "details": {},
        "workflow_id": None,
        "run_id": None,
        "hash": "h",
        "prev_hash": "p",
    }


def test_audit_tail_filters_and_json(api: FakeApi) -> None:
    api.on("GET", "/audit", {"items": [audit_row(1), audit_row(2)], "next_after_id": 2})
    result = invoke(
        api,
        "audit",
        "tail",
        "--actor",
        "token:ops",
        "--action",
        "run.start",
        "--limit",
        "5",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)["items"]] == [1, 2]
    query = parse_qs(api.sent("GET", "/audit")[0].url.query.decode())
    assert query["actor"] == ["token:ops"] and query["action"] == ["run.start"]
    assert query["limit"] == ["5"]
    table = invoke(api, "audit", "tail")
    assert "health-check:2" in table.stdout


def test_audit_tail_follow_asks_after_the_last_id(api: FakeApi) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(
                200, json={"items": [audit_row(1), audit_row(2)], "next_after_id": 2}
            )
        if calls["n"] == 2:
            assert parse_qs(request.url.query.decode())["after_id"] == ["2"]
            return httpx.Response(200, json={"items": [audit_row(3)], "next_after_id": 3})
        # Stands in for the operator's Ctrl-C.
        raise KeyboardInterrupt

    api.routes[("GET", "/audit")] = handler
    result = invoke(api, "audit", "tail", "--follow", "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == [1, 2, 3]
    assert calls["n"] == 3
