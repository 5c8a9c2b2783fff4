"""health-check against the real stack: alert mail once when raised, once when resolved."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any

import httpx
import psycopg
import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from opsflow.shared import ids
from tests.integration.runs import wait_run

pytestmark = pytest.mark.integration


def _check(api: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    r = api.post("/runbooks/health-check/runs", headers=headers, json={"notify": True})
    assert r.status_code == 201, r.text
    run = wait_run(api, headers, r.json()["id"])
    assert run["status"] == "COMPLETED", run
    return run


def _alert_mails(stack: Any, key: str) -> list[str]:
    return [str(m["Subject"]) for m in stack.mails() if str(m["Subject"]).endswith(f": {key}")]


def test_errors_raise_one_alert_then_one_resolved_mail(stack: Any, databases: Any) -> None:
    tag = secrets.token_hex(3)
    headers = {"Authorization": f"Bearer {stack.make_token('operator', name=f'hc-{tag}')}"}
    with psycopg.connect(databases.app_url) as conn:
        conn.execute(
            """INSERT INTO activity_logs (username, role, action, target, level, occurred_at)
               SELECT 'svc-' || %s, 'service', 'error', 'job:' || g, 'error', now()
               FROM generate_series(1, 12) g""",
            (tag,),
        )
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        first = _check(api, headers)
        assert "app_errors" in first["result"]["raised"]
        assert first["result"]["status"] == "degraded"
        second = _check(api, headers)
        assert "app_errors" in second["result"]["firing"]
        assert "app_errors" not in second["result"]["raised"]
        report = api.get("/health/report", headers=headers).json()
        assert any(a["key"] == "app_errors" for a in report["open_alerts"]), report
        assert report["latest"]["run_id"] == second["run_id"]

        # The errors age out of the hour window: the alert clears, once.
        with psycopg.connect(databases.app_url) as conn:
            conn.execute(
                """UPDATE activity_logs SET occurred_at = now() - interval '2 hours'
                   WHERE username = 'svc-' || %s""",
                (tag,),
            )
        third = _check(api, headers)
        assert "app_errors" in third["result"]["resolved"]
        fourth = _check(api, headers)
        assert "app_errors" not in fourth["result"]["resolved"] + fourth["result"]["raised"]
        report = api.get("/health/report", headers=headers).json()
        assert not any(a["key"] == "app_errors" for a in report["open_alerts"])
        # The runs read model filters by status in either case.
        by_status = {
            spelling: {
                i["run_id"]
                for i in api.get(
                    "/runs",
                    params={"runbook": "health-check", "status": spelling, "limit": 100},
                    headers=headers,
                ).json()["items"]
            }
            for spelling in ("COMPLETED", "completed")
        }
        assert fourth["run_id"] in by_status["COMPLETED"]
        assert by_status["COMPLETED"] == by_status["completed"]

    assert _alert_mails(stack, "app_errors") == [
        "[opsflow] ALERT: app_errors",
        "[opsflow] RESOLVED: app_errors",
    ]
    mail = next(m for m in stack.mails() if str(m["Subject"]) == "[opsflow] ALERT: app_errors")
    assert "oncall@example.com" in str(mail["To"])
    assert "12 application errors" in mail.get_content()

    with psycopg.connect(databases.opsflow_admin_url) as conn:
        rows = conn.execute(
            """SELECT status, app_ok, observation->'hour'->>'app_errors'
               FROM health_check_runs WHERE run_id = ANY(%s) ORDER BY checked_at""",
            ([first["run_id"], third["run_id"]],),
        ).fetchall()
        audit = conn.execute(
            """SELECT action, actor FROM audit_events WHERE target = 'alert:app_errors'
               ORDER BY id"""
        ).fetchall()
    assert len(rows) == 2 and rows[0][0] == "degraded"
    assert rows[0][1] is True and int(rows[0][2]) >= 12 and int(rows[1][2]) < 12
    assert [tuple(a) for a in audit][-2:] == [
        ("alert.raise", "system:health-check"),
        ("alert.resolve", "system:health-check"),
    ]

    async def attributes() -> tuple[str | None, str | None, str | None]:
        client = await Client.connect(stack.temporal_address)
        desc = await client.get_workflow_handle(first["id"]).describe()
        sa = desc.typed_search_attributes
        return (
            sa.get(SearchAttributeKey.for_keyword(ids.SA_RUNBOOK)),
            sa.get(SearchAttributeKey.for_keyword(ids.SA_STATE)),
            sa.get(SearchAttributeKey.for_keyword(ids.SA_ACTOR)),
        )

    runbook, state, actor = asyncio.run(attributes())
    assert runbook == "health-check" and state == "degraded"
    assert actor is not None and actor.startswith(f"token:hc-{tag}")


def test_worker_serves_sdk_metrics_and_histories_hold_no_secret(stack: Any) -> None:
    metrics = httpx.get(
        f"http://127.0.0.1:{stack.settings.worker_metrics_port}/metrics", timeout=10
    )
    assert metrics.status_code == 200
    assert "temporal_" in metrics.text  # the SDK's own Prometheus metrics

    token = stack.make_token("operator", name=f"hist-{secrets.token_hex(3)}")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        run = _check(api, {"Authorization": f"Bearer {token}"})

    async def history_text() -> str:
        client = await Client.connect(stack.temporal_address)
        history = await client.get_workflow_handle(run["id"], run_id=run["run_id"]).fetch_history()
        return history.to_json()

    raw = asyncio.run(history_text())
    # Payloads are base64 in the JSON form: decode every one so the search sees plaintext.
    decoded: list[str] = [raw]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    decoded.append(base64.b64decode(value).decode("utf-8", "replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(raw))
    text = "\n".join(decoded)
    assert "token:hist-" in text  # the actor is there, decoded: the search can see payloads
    secrets_in_play = [
        token,
        stack.settings.s3_secret_access_key.get_secret_value(),
        stack.settings.s3_access_key_id.get_secret_value(),
    ]
    assert all(s and s not in text for s in secrets_in_play)
    assert "opsf_" not in text
