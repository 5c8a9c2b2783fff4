"""Bad input changes nothing and never answers 5xx; outages answer 503; bodies over 1 MiB 413."""

from __future__ import annotations

import json

import pytest

from opsflow.api.middleware import MAX_BODY_BYTES
from opsflow.shared.roles import Role
from tests.unit.api_fakes import Harness, make_harness


@pytest.fixture
def h() -> Harness:
    return make_harness()


def post_raw(h: Harness, path: str, body: bytes, role: Role = Role.ADMIN):  # type: ignore[no-untyped-def]
    return h.http.post(
        path, headers={**h.auth(role), "Content-Type": "application/json"}, content=body
    )


@pytest.mark.parametrize(
    "body",
    [b"{", b"{'a': 1}", b"[1,", b"\xff\xfe\x00", b'{"reason": NaN}', b'{"hours": Infinity}',
     b"[" * 100_000 + b"]" * 100_000],
)  # fmt: skip
def test_malformed_json_is_400(h: Harness, body: bytes) -> None:
    before = h.changes()
    r = post_raw(h, "/runbooks/dev-role-elevation/runs", body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("malformed JSON")
    assert h.changes() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hours": 5}, "reason"),
        ({"reason": "x"}, "reason"),
        ({"reason": "valid reason", "hours": 0}, "hours"),
        ({"reason": "valid reason", "hours": 73}, "hours"),
        ({"reason": "valid reason", "hours": 10**400}, "hours"),
        ({"reason": "valid reason", "hours": "many"}, "hours"),
        ({"reason": "valid reason", "hours": 2.5}, "hours"),
        ({"reason": "valid reason", "environment": "Prod!"}, "environment"),
        ({"reason": "valid reason", "hour": 5}, "hour"),
        ({"reason": "a\u0000b"}, "reason"),
        ({"reason": "r" * 501}, "reason"),
        ([1, 2, 3], None),
        ("just a string", None),
    ],
)
def test_schema_violations_are_422_naming_the_field(
    h: Harness, body: object, field: str | None
) -> None:
    before = h.changes()
    r = post_raw(h, "/runbooks/dev-role-elevation/runs", json.dumps(body).encode())
    assert r.status_code == 422, r.text
    payload = r.json()
    assert isinstance(payload["detail"], list) and payload["message"].startswith("invalid input")
    if field is not None:
        assert any(e["loc"][-1] == field for e in payload["detail"]), payload
    assert "input" not in payload["detail"][0]  # the offending value is never echoed
    assert h.changes() == before


def test_lone_surrogate_is_422(h: Harness) -> None:
    r = post_raw(h, "/runbooks/dev-role-elevation/runs", b'{"reason": "bad \\ud800 text"}')
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "reason"]


def test_unicode_reason_is_fine(h: Harness) -> None:
    body = {"reason": "Störung 🚒 — 紧急修复", "hours": 1}
    r = post_raw(h, "/runbooks/dev-role-elevation/runs", json.dumps(body).encode())
    assert r.status_code == 201, r.text
    assert h.temporal.started()[0].inp.reason == body["reason"]


def test_empty_body_means_defaults(h: Harness) -> None:
    r = post_raw(h, "/runbooks/health-check/runs", b"")
    assert r.status_code == 201, r.text


def test_unknown_runbook_is_404_before_anything(h: Harness) -> None:
    r = post_raw(h, "/runbooks/nope/runs", b"{not json")
    assert r.status_code == 404
    assert "health-check" in r.json()["detail"]


def test_body_over_limit_by_content_length_is_413(h: Harness) -> None:
    before = h.changes()
    big = b'{"reason": "' + b"a" * MAX_BODY_BYTES + b'"}'
    r = post_raw(h, "/runbooks/dev-role-elevation/runs", big)
    assert r.status_code == 413
    assert "1048576" in r.json()["detail"]
    assert h.changes() == before


def test_body_over_limit_streamed_is_413(h: Harness) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"reason": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}'

    before = h.changes()
    r = h.http.post(
        "/runbooks/dev-role-elevation/runs",
        headers={**h.auth(Role.ADMIN), "Content-Type": "application/json"},
        content=chunks(),
    )
    assert r.status_code == 413, r.text
    assert h.changes() == before


def test_body_just_under_limit_is_judged_by_schema(h: Harness) -> None:
    body = b'{"reason": "' + b"a" * (MAX_BODY_BYTES - 20) + b'"}'
    r = post_raw(h, "/runbooks/dev-role-elevation/runs", body)
    assert r.status_code == 422  # too long for the field, but not refused for size


@pytest.mark.parametrize(
    "query",
    [
        "limit=0", "limit=100000", "limit=abc", "offset=-1", "offset=99999999999999999999999",
        "since=yesterday", "since=99999999999999999999999999", "until=2026-13-45",
        "runbook=a%00b", "status=" + "x" * 300,
    ],
)  # fmt: skip
def test_bad_query_parameters_are_422(h: Harness, query: str) -> None:
    r = h.http.get(f"/runs?{query}", headers=h.auth(Role.ADMIN))
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "query", ["after_id=-5", "after_id=9223372036854775808", "limit=5000", "actor=%00"]
)
def test_bad_audit_query_parameters_are_422(h: Harness, query: str) -> None:
    r = h.http.get(f"/audit?{query}", headers=h.auth(Role.AUDITOR))
    assert r.status_code == 422, r.text


def test_idempotency_key_must_be_sane(h: Harness) -> None:
    r = h.http.post(
        "/runbooks/health-check/runs",
        headers={**h.auth(Role.ADMIN), "Idempotency-Key": "k" * 500},
        json={},
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_temporal_down_is_503_without_trace(h: Harness) -> None:
    h.temporal.down = True
    r = h.http.post("/runbooks/health-check/runs", headers=h.auth(Role.ADMIN), json={})
    assert r.status_code == 503
    body = r.json()
    assert body["service"] == "temporal" and "Traceback" not in r.text
    assert r.headers["retry-after"]
    r = h.http.get("/runs/some-id", headers=h.auth(Role.ADMIN))
    assert r.status_code == 503


def test_database_down_is_503_naming_it(h: Harness) -> None:
    h.store.down.add("opsflow database")
    r = h.http.get("/runbooks", headers=h.auth(Role.ADMIN))
    assert r.status_code == 503
    assert r.json()["service"] == "opsflow database"


def test_app_database_down_is_503_for_the_setting(h: Harness) -> None:
    h.store.down.add("app database")
    r = h.http.get("/settings/dev-role-production", headers=h.auth(Role.ADMIN))
    assert r.status_code == 503 and r.json()["service"] == "app database"


def test_unexpected_error_is_500_json_with_request_id(h: Harness) -> None:
    async def broken(**_: object) -> object:
        raise RuntimeError("postgresql://svc:hunter2@db/opsflow exploded")

    h.store.list_runs = broken  # type: ignore[assignment, method-assign]
    r = h.http.get("/runs", headers={**h.auth(Role.ADMIN), "X-Request-ID": "req-42"})
    assert r.status_code == 500
    assert r.json()["request_id"] == "req-42"
    assert "hunter2" not in r.text and "Traceback" not in r.text
    assert r.headers["x-request-id"] == "req-42"


def test_unknown_path_is_404_json(h: Harness) -> None:
    r = h.http.get("/nowhere", headers=h.auth(Role.ADMIN))
    assert r.status_code == 404 and r.json()["detail"]


def test_wrong_method_is_405(h: Harness) -> None:
    r = h.http.delete("/runbooks", headers=h.auth(Role.ADMIN))
    assert r.status_code == 405


FUZZ_BODIES = [
    b"null", b"true", b"0", b"-1", b'""', b"{}", b"[]", b'{"":""}', b'{"reason": null}',
    b'{"reason": {"nested": [1, 2, {"deep": true}]}}',
    b'{"reason": "ok ok", "hours": -99999999999999999999}',
    b'{"reason": "ok ok", "hours": 1e308}', b'{"reason": "ok ok", "hours": true}',
    b'{"reason": "\\u0000"}', "{\"reason\": \"\u202e\u0301\u200b\"}".encode(),
    b'{"allow": "yes"}', b'{"allow": true, "environment": "staging", "reason": "abc"}',
    b'{"allow": false, "unexpected": 1}', b'{"actor": "forged", "reason": "abc"}',
]  # fmt: skip
FUZZ_PATHS = [
    ("POST", "/runbooks/dev-role-elevation/runs"),
    ("POST", "/runbooks/health-check/runs"),
    ("PUT", "/settings/dev-role-production"),
    ("POST", "/runs/dev-role-elevation:production/signals/disable"),
    ("POST", "/runs/level:x/updates/set-level"),
    ("POST", "/runs/%00%ff/signals/disable"),
]


@pytest.mark.parametrize(("method", "path"), FUZZ_PATHS)
def test_no_5xx_for_any_client_input(h: Harness, method: str, path: str) -> None:
    # Give signals and updates a running target, so the body parsing is reached.
    h.http.post("/runbooks/level/runs", headers=h.auth(Role.ADMIN), json={"name": "x"})
    for role in (Role.ADMIN, Role.OPERATOR):
        for body in FUZZ_BODIES:
            r = h.http.request(
                method, path, headers={**h.auth(role), "Content-Type": "application/json"},
                content=body,
            )  # fmt: skip
            assert r.status_code < 500, (body, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
