"""``opsflow.logs``: JSON lines on stderr, secrets redacted everywhere."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from opsflow.config import Settings
from opsflow.logs import configure_logging, redact_text
from opsflow.shared.roles import Role
from tests.unit.api_fakes import make_harness


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://svc:s3cr%40t@db:5432/opsflow", "s3cr%40t"),
        ("postgresql://svc:p@ss@db/opsflow", "p@ss"),
        ("Authorization: Bearer opsf_AbCdEf123456", "AbCdEf123456"),
        ("token opsf_ZZZZyyyy1234 leaked", "ZZZZyyyy1234"),
        ("host=db password=hunter2 user=x", "hunter2"),
        ("aws_secret_access_key='wJalrXUtnFEMI'", "wJalrXUtnFEMI"),
        # Any case: the one-scan check before the four patterns must not let these through.
        ("PASSWORD=Hunter3 in capitals", "Hunter3"),
        ("authorization: BEARER abc.def-ghi", "abc.def-ghi"),
        ("HTTPS://u:pw9x@host/x", "pw9x"),
        ("client_Secret: xyz123", "xyz123"),
        ("API_KEY=k-998877", "k-998877"),
        ("Access_Key='AKIAXYZ'", "AKIAXYZ"),
    ],
)
def test_redact_text(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_plain_text() -> None:
    assert redact_text("started run health-check:1 for token_name=alice") == (
        "started run health-check:1 for token_name=alice"
    )


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_configure_logging_json_with_component_and_redaction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_level="DEBUG"), "worker")
    log = structlog.get_logger("opsflow.test")
    log.info(
        "connecting", url="postgresql://u:pw1@h/db", password="pw2", token_name="bob",
        nested={"api_key": "pw3", "list": ["Bearer opsf_pw4pw4pw4"]},
    )  # fmt: skip
    logging.getLogger("uvicorn.error").warning("dsn %s", "postgres://a:pw5@h/d")
    try:
        raise RuntimeError("cannot reach postgresql://u:pw6@h/db")
    except RuntimeError:
        log.exception("failed")
    err = capsys.readouterr().err
    for secret in ("pw1", "pw2", "pw3", "pw4", "pw5", "pw6"):
        assert secret not in err, secret
    records = lines(err)
    first = records[0]
    assert first["event"] == "connecting" and first["component"] == "worker"
    assert first["level"] == "info" and str(first["timestamp"]).endswith("Z")
    assert first["token_name"] == "bob" and first["password"] == "***"
    assert records[1]["logger"] == "uvicorn.error"
    assert "RuntimeError" in str(records[2]["exception"])


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_level="WARNING"), "cli")
    structlog.get_logger("x").info("hidden")
    structlog.get_logger("x").warning("shown")
    events = [r["event"] for r in lines(capsys.readouterr().err)]
    assert events == ["shown"]


def test_request_log_has_route_status_actor_but_never_the_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    h = make_harness()
    capsys.readouterr()
    h.http.get("/runs/abc", headers={**h.auth(Role.ADMIN), "X-Request-ID": "rid-7"})
    h.http.get("/runbooks", headers={"Authorization": "Bearer opsf_wrongwrongwrong"})
    err = capsys.readouterr().err
    assert h.tokens[Role.ADMIN] not in err and "opsf_wrongwrongwrong" not in err
    requests = [r for r in lines(err) if r["event"] == "request"]
    first = requests[0]
    assert first["route"] == "/runs/{id}" and first["status"] == 404
    assert first["actor"] == "token:admin-1:admin" and first["request_id"] == "rid-7"
    assert isinstance(first["latency_ms"], float)
    assert requests[1]["status"] == 401 and requests[1]["actor"] is None


def test_redact_key_value_forms_but_not_actor_ids() -> None:
    assert "s1" not in redact_text('{"password": "s1"}')
    assert "s2" not in redact_text("password: s2")
    assert redact_text("actor token:alice:admin") == "actor token:alice:admin"
