"""The ``opsflow`` CLI as an operator runs it (a subprocess) against the real stack.

Each command runs as ``python -m opsflow`` with only the stack's environment, so these tests
also cover settings loading, the console entry point and the process exit codes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.integration

_OWN_PREFIXES = ("OPSFLOW_", "DATABASE_", "TARGET_DATABASE_", "TEMPORAL_", "S3_", "SMTP_")


def opsflow(
    stack: Any, *args: str, token: str | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with the stack's settings (and ``token`` as OPSFLOW_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update(stack.env)
    env["OPSFLOW_TOKEN"] = token if token is not None else stack.admin_token
    return subprocess.run(
        [sys.executable, "-m", "opsflow", *args],
        env=env,
        cwd=cwd or Path.cwd(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def wait_status(stack: Any, run_id: str, *, timeout: float = 60) -> dict[str, Any]:
    """Poll ``opsflow status --json`` until the run leaves RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = json.loads(ok(opsflow(stack, "status", run_id, "--json")).stdout)
        if run["status"] != "RUNNING" or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def test_runbooks_lists_the_catalog(stack: Any) -> None:
    catalog = json.loads(ok(opsflow(stack, "runbooks", "--json")).stdout)
    names = {spec["name"] for spec in catalog}
    assert {"health-check", "dev-role-elevation"} <= names
    table = ok(opsflow(stack, "runbooks")).stdout
    assert "health-check" in table and "disable" in table


def test_run_health_check_follows_to_completion(stack: Any) -> None:
    result = ok(opsflow(stack, "run", "health-check", "--param", "notify=false"))
    assert "COMPLETED" in result.stdout
    assert stack.ui_url in result.stdout  # the Web UI link of the run
    assert "started health-check:" in result.stderr or "already exists" in result.stderr

    as_json = ok(opsflow(stack, "run", "health-check", "--param", "notify=false", "--json"))
    run = json.loads(as_json.stdout)
    assert run["status"] == "COMPLETED"
    assert run["runbook"] == "health-check"


def test_detach_then_status_and_runs(stack: Any) -> None:
    run_id = ok(opsflow(stack, "run", "health-check", "-p", "notify=false", "--detach")).stdout
    run_id = run_id.strip()
    assert run_id.startswith("health-check:")
    assert "\n" not in run_id
    final = wait_status(stack, run_id)
    assert final["status"] == "COMPLETED"
    # The read model is written when the run ends; give it a moment.
    deadline = time.monotonic() + 20
    while True:
        listed = opsflow(
            stack, "runs", "--runbook", "health-check", "--status", "completed",
            "--since", "1h", "--json",
        )  # fmt: skip
        page = json.loads(ok(listed).stdout)
        ids = {row.get("id") or row.get("workflow_id") for row in page["items"]}
        if run_id in ids or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert run_id in ids
    assert all(row["runbook"] == "health-check" for row in page["items"])
    assert all(row["status"].upper() == "COMPLETED" for row in page["items"])
    table = ok(opsflow(stack, "runs", "--runbook", "health-check", "--limit", "5")).stdout
    assert "COMPLETED" in table and "of" in table


def test_dev_role_elevation_signal_query_and_cancel(stack: Any) -> None:
    env_name = f"cli-{secrets.token_hex(3)}"
    started = ok(
        opsflow(
            stack,
            "run",
            "dev-role-elevation",
            "-p",
            "reason=CLI integration test grant",
            "-p",
            "hours=1",
            "-p",
            f"environment={env_name}",
            "--detach",
        )
    )
    run_id = started.stdout.strip()
    assert run_id == f"dev-role-elevation:{env_name}"

    # A second grant for the same environment is refused with the API's message.
    again = opsflow(
        stack, "run", "dev-role-elevation", "-p", "reason=second grant", "-p",
        f"environment={env_name}", "--detach",
    )  # fmt: skip
    assert again.returncode == 1
    assert "409" in again.stderr

    deadline = time.monotonic() + 30
    while True:
        status = json.loads(ok(opsflow(stack, "query", run_id, "status", "--json")).stdout)
        if status["result"].get("state") == "active":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)

    unknown = opsflow(stack, "signal", run_id, "stop")
    assert unknown.returncode == 1
    assert "has no signal 'stop'" in unknown.stderr

    ok(opsflow(stack, "signal", run_id, "disable", "-p", "reason=done from the CLI"))
    final = wait_status(stack, run_id)
    assert final["status"] == "COMPLETED", final
    assert final["result"]["ended_by"] == "disable"

    # Cancellation through the CLI ends a second grant as CANCELED (it still revokes).
    env2 = f"cli-{secrets.token_hex(3)}"
    run2 = ok(
        opsflow(stack, "run", "dev-role-elevation", "-p", "reason=to be cancelled",
                "-p", f"environment={env2}", "--detach")
    ).stdout.strip()  # fmt: skip
    ok(opsflow(stack, "cancel", run2))
    assert wait_status(stack, run2)["status"] in {"CANCELED", "COMPLETED"}


def test_errors_carry_the_api_message(stack: Any) -> None:
    operator = stack.make_token("operator")
    forbidden = opsflow(
        stack, "run", "dev-role-elevation", "-p", "reason=not allowed", token=operator
    )
    assert forbidden.returncode == 1
    assert "403" in forbidden.stderr
    assert operator not in forbidden.stderr + forbidden.stdout

    unknown = opsflow(stack, "run", "no-such-runbook")
    assert unknown.returncode == 1
    assert "404" in unknown.stderr

    bad_param = opsflow(stack, "run", "dev-role-elevation", "-p", "hours=many")
    assert bad_param.returncode == 2
    assert "hours: expected an integer" in bad_param.stderr

    invalid = opsflow(stack, "run", "dev-role-elevation", "-p", "reason=x", "-p", "hours=99")
    assert invalid.returncode == 1
    assert "422" in invalid.stderr and "hours" in invalid.stderr

    down = opsflow(stack, "--url", "http://127.0.0.1:9", "runbooks")
    assert down.returncode == 3
    assert "http://127.0.0.1:9" in down.stderr and "make dev" in down.stderr


def test_token_create_list_revoke(stack: Any) -> None:
    name = f"cli-it-{secrets.token_hex(4)}"
    created = ok(opsflow(stack, "token", "create", "--role", "auditor", "--name", name))
    token = created.stdout.strip()
    assert created.stdout == token + "\n"  # the token alone on stdout
    assert token.startswith("opsf_")
    assert token not in created.stderr

    # The new token works at once.
    ok(opsflow(stack, "runbooks", "--json", token=token))
    audit = json.loads(
        ok(
            opsflow(stack, "audit", "tail", "--action", "token.create", "--json", token=token)
        ).stdout
    )
    assert any(row["target"] == f"token:{name}" for row in audit["items"])

    listed = json.loads(ok(opsflow(stack, "token", "list", "--json")).stdout)
    mine = [row for row in listed if row["name"] == name]
    assert len(mine) == 1 and mine[0]["role"] == "auditor" and mine[0]["revoked_at"] is None
    assert token not in json.dumps(listed)
    assert all("hash" not in key for row in listed for key in row)

    duplicate = opsflow(stack, "token", "create", "--role", "auditor", "--name", name)
    assert duplicate.returncode == 1 and duplicate.stdout == ""

    ok(opsflow(stack, "token", "revoke", name))
    refused = opsflow(stack, "runbooks", token=token)
    assert refused.returncode == 1
    assert "401" in refused.stderr
    assert token not in refused.stderr

    again = opsflow(stack, "token", "revoke", name)
    assert again.returncode == 1
    assert f"no active token named '{name}'" in again.stderr


def _set_outcome(admin_url: str, row_id: int, outcome: str) -> str:
    """Edit one audit row as the table owner (triggers off for that one statement)."""
    with psycopg.connect(admin_url, autocommit=False) as conn:
        old = conn.execute("SELECT outcome FROM audit_events WHERE id = %s", (row_id,)).fetchone()
        assert old is not None
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
        conn.execute("UPDATE audit_events SET outcome = %s WHERE id = %s", (outcome, row_id))
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")
        conn.commit()
        return str(old[0])


def test_audit_verify_detects_an_edit(stack: Any) -> None:
    intact = ok(opsflow(stack, "audit", "verify"))
    assert "rows checked" in intact.stdout
    checked = json.loads(ok(opsflow(stack, "audit", "verify", "--json")).stdout)
    assert checked["ok"] is True and checked["rows_checked"] >= 1

    admin_url = stack.database.database_admin_url
    original = _set_outcome(admin_url, 1, "tampered")
    try:
        broken = opsflow(stack, "audit", "verify")
        assert broken.returncode == 1
        assert "row id 1" in broken.stderr
    finally:
        _set_outcome(admin_url, 1, original)
    ok(opsflow(stack, "audit", "verify"))
