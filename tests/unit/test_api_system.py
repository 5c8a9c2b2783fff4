"""Probes, metrics, request ids and the OpenAPI document."""

from __future__ import annotations

import pytest

from opsflow.shared.roles import Role
from tests.unit.api_fakes import Harness, make_harness


@pytest.fixture
def h() -> Harness:
    return make_harness()


def test_healthz_all_up_with_latencies(h: Harness) -> None:
    r = h.http.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["down"] == []
    assert set(body["checks"]) == {"temporal", "opsflow_db", "app_db", "s3"}
    for check in body["checks"].values():
        assert check["ok"] is True and check["latency_ms"] >= 0


@pytest.mark.parametrize("what", ["temporal", "opsflow_db", "app_db", "s3"])
def test_healthz_names_what_is_down(h: Harness, what: str) -> None:
    if what == "temporal":
        h.temporal.down = True
    elif what == "s3":
        h.s3.down = True
    else:
        h.store.down.add("opsflow database" if what == "opsflow_db" else "app database")
    r = h.http.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["down"] == [what]
    assert what in body["status"]
    assert body["checks"][what]["ok"] is False
    assert body["checks"][what]["error"].startswith("unreachable")


def test_liveness_in_the_seed_shape(h: Harness) -> None:
    h.temporal.down = True
    r = h.http.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_metrics_count_requests_by_route_template(h: Harness) -> None:
    h.http.get("/runs/abc", headers=h.auth(Role.ADMIN))
    h.http.get("/runs/def", headers=h.auth(Role.ADMIN))
    h.http.get("/runbooks")  # 401
    h.http.get("/no/such/path")
    r = h.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'opsflow_api_requests_total{method="GET",route="/runs/{id}",status="404"} 2.0' in text
    assert 'opsflow_api_requests_total{method="GET",route="/runbooks",status="401"} 1.0' in text
    assert 'route="<unmatched>"' in text and "/no/such/path" not in text
    assert (
        'opsflow_api_request_duration_seconds_bucket{le="0.005",method="GET",route="/runs/{id}"}'
        in text
    )
    assert 'opsflow_api_auth_failures_total{reason="missing"} 1.0' in text
    assert "opsf_" not in text


def test_metrics_count_5xx_as_errors(h: Harness) -> None:
    h.temporal.down = True
    h.http.post("/runbooks/health-check/runs", headers=h.auth(Role.ADMIN), json={})
    text = h.http.get("/metrics").text
    assert 'opsflow_api_errors_total{kind="http_503",route="/runbooks/{name}/runs"} 1.0' in text


def test_runs_started_counter(h: Harness) -> None:
    h.http.post("/runbooks/health-check/runs", headers=h.auth(Role.ADMIN), json={})
    h.http.post("/runbooks/health-check/runs", headers=h.auth(Role.ADMIN), json={})
    text = h.http.get("/metrics").text
    assert 'opsflow_api_runs_started_total{outcome="started",runbook="health-check"} 1.0' in text
    assert 'opsflow_api_runs_started_total{outcome="existing",runbook="health-check"} 1.0' in text


def test_request_id_is_generated_or_echoed_if_safe(h: Harness) -> None:
    assert len(h.http.get("/api/health").headers["x-request-id"]) == 32
    assert (
        h.http.get("/api/health", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"]
        == "abc-1"
    )
    unsafe = h.http.get("/api/health", headers={"X-Request-ID": 'a b"<script>'})
    assert unsafe.headers["x-request-id"] != 'a b"<script>'


def test_openapi_documents_every_route_with_examples(h: Harness) -> None:
    doc = h.http.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("/runbooks", "/runbooks/{name}/runs", "/runs", "/runs/{id}", "/runs/{id}/cancel",
                 "/runs/{id}/signals/{name}", "/runs/{id}/updates/{name}",
                 "/runs/{id}/queries/{name}", "/healthz", "/metrics", "/audit", "/health/report",
                 "/settings/dev-role-production", "/api/health"):  # fmt: skip
        assert path in paths, path
    body = paths["/runbooks/{name}/runs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["dev-role-elevation"]["value"]["hours"] == 24
    assert {s["title"] for s in body["schema"]["oneOf"]} >= {
        "DevRoleElevationInput",
        "HealthCheckInput",
    }
    signal = paths["/runs/{id}/signals/{name}"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    assert "dev-role-elevation.disable" in signal["examples"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert h.http.get("/docs").status_code == 200


def test_probe_routes_need_no_token_and_leak_nothing(h: Harness) -> None:
    for path in ("/healthz", "/api/health", "/metrics", "/openapi.json"):
        r = h.http.get(path)
        assert r.status_code == 200, path
        assert "opsf_test" not in r.text
