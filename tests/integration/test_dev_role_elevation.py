"""dev-role-elevation against the real stack: settings, audit, admin mail, review, faults."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from opsflow.activities.dev_role_elevation import setting_key
from opsflow.adapters.audit import verify_chain
from opsflow.binaries import find
from opsflow.shared.dev_role_elevation import DevRoleElevationInput
from opsflow.workflows.dev_role_elevation import DevRoleElevation
from tests.integration.runs import wait_run

pytestmark = pytest.mark.integration


def _admin_users(app_url: str, tag: str) -> tuple[list[str], str]:
    """Two active admins, one inactive admin; returns (active emails, inactive email)."""
    active = [f"admin-{tag}-{i}@example.com" for i in range(2)]
    inactive = f"gone-{tag}@example.com"
    with psycopg.connect(app_url) as conn:
        org = conn.execute(
            "INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id",
            (f"org-{tag}", f"Org {tag}"),
        ).fetchone()
        assert org is not None
        for i, email in enumerate([*active, inactive]):
            conn.execute(
                """INSERT INTO users (organization_id, username, email, full_name, role,
                                      is_active, created_at)
                   VALUES (%s, %s, %s, %s, 'admin', %s, now())""",
                (org[0], f"adm-{tag}-{i}", email, f"Admin {i}", email != inactive),
            )
    return active, inactive


def _setting(app_url: str, env: str) -> dict[str, Any] | None:
    with psycopg.connect(app_url) as conn:
        row = conn.execute(
            "SELECT value FROM settings WHERE key = %s", (setting_key(env),)
        ).fetchone()
    return None if row is None else dict(row[0])


def _wait(pred: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def _audit(ops_url: str, wid: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(ops_url) as conn:
        rows = conn.execute(
            "SELECT action, actor, outcome FROM audit_events WHERE workflow_id = %s ORDER BY id",
            (wid,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_grant_disable_review_and_admin_mail(stack: Any, databases: Any) -> None:
    tag = secrets.token_hex(3)
    env = f"itest-{tag}"
    active, inactive = _admin_users(databases.app_url, tag)
    admin = {"Authorization": f"Bearer {stack.make_token('admin', name=f'adm-{tag}')}"}
    other_admin = {"Authorization": f"Bearer {stack.make_token('admin', name=f'adm2-{tag}')}"}
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = api.post(
            "/runbooks/dev-role-elevation/runs",
            headers=admin,
            json={"reason": "INC-7 connector hot fix", "hours": 24, "environment": env},
        )
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        assert wid == f"dev-role-elevation:{env}"
        value = _wait(lambda: _setting(databases.app_url, env))
        assert value["allow"] is True and value["workflow_id"] == wid
        expires = datetime.fromisoformat(value["expires_at"])
        granted = datetime.fromisoformat(value["granted_at"])
        assert expires - granted == timedelta(hours=24)

        # A developer acts during the window; one action before it does not count.
        with psycopg.connect(databases.app_url) as conn:
            conn.execute(
                """INSERT INTO activity_logs (username, role, action, target, level, occurred_at)
                   VALUES ('dev-' || %s, 'developer', 'pipeline.update', 'pipeline:42', 'info',
                           now()),
                          ('dev-' || %s, 'developer', 'connector.delete', 'connector:1', 'info',
                           now() - interval '2 days')""",
                (tag, tag),
            )
        sig = api.post(
            f"/runs/{wid}/signals/disable",
            headers=other_admin,
            json={"actor": "forged", "reason": "done"},
        )
        assert sig.status_code == 202, sig.text
        run = wait_run(api, admin, wid, timeout=60)
    assert run["status"] == "COMPLETED", run
    result = run["result"]
    assert result["ended_by"] == "disable"
    # The API put the caller's identity in the signal, not what the client sent.
    assert result["disabled_by"].startswith("token:adm2-") and "forged" not in result["disabled_by"]
    mine = [a for a in result["developer_actions"] if a["user"] == f"dev-{tag}"]
    assert [a["action"] for a in mine] == ["pipeline.update"]

    value = _setting(databases.app_url, env)
    assert value is not None and value["allow"] is False and value["ended_by"] == "disable"

    actions = _audit(databases.opsflow_admin_url, wid)
    names = [a[0] for a in actions]
    for expected in (
        "run.start",
        "dev_role.grant",
        "run.signal",
        "dev_role.revoke",
        "dev_role.review",
    ):
        assert names.count(expected) == 1, (expected, actions)
    revoke = next(a for a in actions if a[0] == "dev_role.revoke")
    assert revoke[1].startswith("token:adm2-") and revoke[2] == "success"

    with psycopg.connect(databases.opsflow_admin_url) as conn:
        row = conn.execute(
            """SELECT ended_by, developer_action_count FROM dev_role_elevation_runs
               WHERE workflow_id = %s""",
            (wid,),
        ).fetchone()
    assert row is not None and row[0] == "disable" and row[1] >= 1

    mails = [m for m in stack.mails() if env in str(m["Subject"])]
    subjects = sorted(str(m["Subject"]) for m in mails)
    assert len(mails) == 2, subjects
    assert "ENABLED" in subjects[1] and "DISABLED" in subjects[0]
    for m in mails:
        to = str(m["To"])
        assert all(a in to for a in active) and inactive not in to

    async def chain_ok() -> bool:
        async with await psycopg.AsyncConnection.connect(databases.opsflow_admin_url) as conn:
            return (await verify_chain(conn)).ok

    assert asyncio.run(chain_ok())


def test_terminated_grant_is_turned_off_by_health_check(stack: Any, databases: Any) -> None:
    tag = secrets.token_hex(3)
    env = f"term-{tag}"
    admin = {"Authorization": f"Bearer {stack.make_token('admin', name=f'term-{tag}')}"}
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = api.post(
            "/runbooks/dev-role-elevation/runs",
            headers=admin,
            json={"reason": "terminated later", "hours": 1, "environment": env},
        )
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        _wait(lambda: (_setting(databases.app_url, env) or {}).get("allow"))

        async def terminate() -> None:
            client = await Client.connect(stack.temporal_address)
            await client.get_workflow_handle(wid).terminate("itest: simulate a lost workflow")

        asyncio.run(terminate())
        # The hour passes while nobody is there to revoke it.
        with psycopg.connect(databases.app_url) as conn:
            value = _setting(databases.app_url, env)
            assert value is not None and value["allow"] is True
            value["expires_at"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            conn.execute(
                "UPDATE settings SET value = %s WHERE key = %s", (Jsonb(value), setting_key(env))
            )
        check = api.post("/runbooks/health-check/runs", headers=admin, json={"notify": False})
        assert check.status_code in (200, 201), check.text
        cid = check.json()["id"]
        run = wait_run(api, admin, cid)
    assert run["status"] == "COMPLETED", run
    value = _setting(databases.app_url, env)
    assert value is not None and value["allow"] is False and value["ended_by"] == "health-check"
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        rows = conn.execute(
            """SELECT actor FROM audit_events WHERE action = 'dev_role.expire'
               AND target = %s""",
            (f"setting:{setting_key(env)}",),
        ).fetchall()
    assert [r[0] for r in rows] == ["system:health-check"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_worker_killed_while_active_still_ends_on_time(stack: Any, databases: Any) -> None:
    """A real worker process against the time-skipping server: kill it mid-window, start a new
    one; the grant still ends by its timer, exactly at expires_at, revoked once."""
    tag = secrets.token_hex(3)
    env_name = f"kill-{tag}"
    ts = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find("temporal-test-server")
    )
    target = ts.client.service_client.config.target_host
    worker_env = {
        **os.environ,
        **stack.env,
        "TEMPORAL_ADDRESS": target,
        "WORKER_METRICS_PORT": str(_free_port()),
        "PYTHONUNBUFFERED": "1",
        # The test server never moves a dead worker's sticky tasks back to the shared queue.
        "WORKER_MAX_CACHED_WORKFLOWS": "0",
    }
    log = open(stack.logs_dir / f"kill-worker-{tag}.log", "ab")  # noqa: ASYNC230 (closed in finally)
    procs: list[subprocess.Popen[bytes]] = []

    def start_worker() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [sys.executable, "-m", "opsflow.worker"], env=worker_env, stdout=log, stderr=log
        )
        procs.append(p)
        return p

    try:
        start_worker()
        handle = await ts.client.start_workflow(
            DevRoleElevation.run,
            DevRoleElevationInput(reason="kill test", hours=1, environment=env_name),
            id=f"dev-role-elevation:{env_name}",
            task_queue=stack.settings.temporal_task_queue,
            memo={"actor": "token:itest:admin"},
        )
        value = await asyncio.to_thread(
            _wait, lambda: (_setting(databases.app_url, env_name) or {}).get("allow"), 60
        )
        assert value is True
        # Kill it once the window is open and the workflow waits on its timer.
        for _ in range(200):
            status = await handle.query(DevRoleElevation.status)
            progress = await handle.query(DevRoleElevation.progress)
            if status.state == "active" and progress.step == "active":
                break
            await asyncio.sleep(0.1)
        assert status.state == "active"
        procs[0].kill()
        procs[0].wait()
        # Nothing revokes the grant while no worker runs...
        await asyncio.sleep(1)
        assert (_setting(databases.app_url, env_name) or {}).get("allow") is True
        # ...and a new worker picks the window up from its history; waiting on the result lets
        # the test server skip the rest of the hour.
        start_worker()
        result = await asyncio.wait_for(handle.result(), 120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        log.close()
        await ts.shutdown()
    assert result.ended_by == "timer"
    ended = datetime.fromisoformat(result.ended_at)
    expires = datetime.fromisoformat(result.expires_at)
    # The timer fired at expires_at (workflow time), not when the new worker arrived.
    assert timedelta(0) <= ended - expires < timedelta(minutes=1)
    value = _setting(databases.app_url, env_name)
    assert value is not None and value["allow"] is False and value["ended_by"] == "timer"
    actions = [a[0] for a in _audit(databases.opsflow_admin_url, handle.id)]
    assert actions.count("dev_role.grant") == 1 and actions.count("dev_role.revoke") == 1
