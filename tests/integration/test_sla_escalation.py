"""sla-escalation and the reconciler on the real stack: escalations, breach, watchlist, faults."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.runs import wait_run
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


def _auth(stack: Any, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.make_token(role)}"}


def _triage(stack: Any, databases: Any, world: World, due: datetime) -> int:
    rid = make_request(databases.app_url, world, due=due)
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        r = api.post(
            "/runbooks/triage-assignment/runs",
            headers=_auth(stack, "operator"),
            json={"request_id": rid, "department_id": world.dept, "assignee_id": world.staff},
        )
    assert r.status_code == 201, r.text
    wait_for(lambda: _watch_row(databases, rid), what="the SLA workflow's read-model row")
    return rid


def _watch_row(databases: Any, rid: int) -> tuple[Any, ...] | None:
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        return conn.execute(
            "SELECT state, sla_due_at, escalations FROM sla_watchlist WHERE request_id = %s",
            (rid,),
        ).fetchone()


def _mails_about(stack: Any, rid: int, word: str) -> list[Any]:
    return [m for m in stack.mails() if f"{word}: request {rid} " in str(m["Subject"]) + " "]


def _sms_about(stack: Any, rid: int) -> list[dict[str, Any]]:
    return [
        e
        for e in stack.sms()
        if e["channel"] == "sms" and f"sla:request:{rid}/" in str(e.get("idempotency_key"))
    ]


def _escalate(stack: Any, rid: int, reason: str) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = api.post(
            f"/sla/requests/{rid}/escalate",
            headers=_auth(stack, "supervisor"),
            json={"reason": reason},
        )
    assert r.status_code == 202, r.text


def _reconcile(stack: Any, world: World) -> dict[str, Any]:
    sup = _auth(stack, "supervisor")
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        r = api.post(
            "/runbooks/sla-reconciler/runs", headers=sup, json={"organization_id": world.org}
        )
        assert r.status_code in (200, 201), r.text
        run = wait_run(api, sup, r.json()["id"])
    assert run["status"] == "COMPLETED", run
    result: dict[str, Any] = run["result"]
    return result


def test_supervisor_escalation_notifies_once_operator_gets_403(stack: Any, databases: Any) -> None:
    world = make_world(databases.app_url, secrets.token_hex(3))
    rid = _triage(stack, databases, world, datetime.now(UTC) + timedelta(hours=30))
    operator, supervisor = _auth(stack, "operator"), _auth(stack, "supervisor")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        refused = api.post(
            f"/sla/requests/{rid}/escalate", headers=operator, json={"reason": "please hurry"}
        )
        assert refused.status_code == 403, refused.text
        before = request_row(databases.app_url, rid)
        assert before["priority"] == "normal" and before["expedited"] is False

        r = api.post(
            f"/sla/requests/{rid}/escalate",
            headers=supervisor,
            json={"reason": "Road flooded, crew needed", "actor": "forged"},
        )
        assert r.status_code == 202, r.text
        mails = wait_for(lambda: _mails_about(stack, rid, "ESCALATED"), what="escalation mail")
        sms = wait_for(lambda: _sms_about(stack, rid), what="escalation SMS")
        row = request_row(databases.app_url, rid)
        assert row["priority"] == "critical" and row["expedited"] is True
        steps = timeline(databases.app_url, rid)
        escalations = [t for t in steps if t[0] == "sla_escalation"]
        assert len(escalations) == 1
        assert escalations[0][1].startswith("token:") and "forged" not in escalations[0][1]
        assert "Road flooded" in escalations[0][2]
        events = audit_rows(databases.opsflow_admin_url, f"request:{rid}")
        assert [e[0] for e in events].count("sla.escalate") == 1

        note = api.post(
            f"/sla/requests/{rid}/notes", headers=operator, json={"text": "Called the crew"}
        )
        assert note.status_code == 202, note.text
        wait_for(lambda: [t for t in timeline(databases.app_url, rid) if t[0] == "note"])
        state = api.get(f"/runs/sla:request:{rid}/queries/sla_state", headers=operator).json()
        assert state["result"]["state"] == "escalated"
        assert [e["reason"] for e in state["result"]["escalations"]] == [
            "Road flooded, crew needed"
        ]
    # Exactly one mail and one SMS, to the department's supervisors only.
    assert len(_mails_about(stack, rid, "ESCALATED")) == 1 == len(mails)
    to = str(mails[0]["To"])
    assert all(addr in to for addr in world.supervisor_emails) and "parksup" not in to
    assert len(_sms_about(stack, rid)) == 1 == len(sms)
    assert sorted(sms[0]["body"]["to"]) == world.supervisor_phones
    assert "ESCALATED" in sms[0]["body"]["text"]
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        rows = conn.execute(
            """SELECT channel, status FROM notifications WHERE idempotency_key LIKE %s
               ORDER BY channel""",
            (f"sla:request:{rid}/escalate/%",),
        ).fetchall()
    assert rows == [("mail", "sent"), ("sms", "sent")]
    # Only the supervisor's signal was accepted, so only it is audited as a signal.
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        signals = conn.execute(
            """SELECT actor FROM audit_events WHERE action = 'run.signal'
               AND workflow_id = %s""",
            (f"sla:request:{rid}",),
        ).fetchall()
    assert len(signals) == 2  # escalate (supervisor) + add_note (operator)


def test_watchlist_lists_exactly_the_requests_due_within_24h_and_breach_is_once(
    stack: Any, databases: Any
) -> None:
    world = make_world(databases.app_url, secrets.token_hex(3))
    now = datetime.now(UTC)
    due = {
        "2h": now + timedelta(hours=2),
        "23h": now + timedelta(hours=23, minutes=30),
        "25h": now + timedelta(hours=25),
        "3d": now + timedelta(days=3),
        "overdue": now - timedelta(hours=1),
    }
    ids = {
        k: make_request(databases.app_url, world, status="assigned", due=v, assigned=True)
        for k, v in due.items()
    }
    closed = make_request(
        databases.app_url, world, status="closed", due=now + timedelta(hours=1), assigned=True
    )
    # The overdue request waits on the reporter: its breach moves it to waiting_external.
    with psycopg.connect(databases.app_url) as conn:
        conn.execute(
            """INSERT INTO communications (request_id, channel, direction, recipient, subject)
               VALUES (%s, 'email', 'outbound', 'ann@example.com', 'Which house number?')""",
            (ids["overdue"],),
        )
    result = _reconcile(stack, world)
    assert result["started"] == 5 and result["ended"] == 0
    for rid in ids.values():
        wait_for(lambda rid=rid: _watch_row(databases, rid), what=f"read model of {rid}")
    assert _watch_row(databases, closed) is None
    overdue = ids["overdue"]
    wait_for(lambda: request_row(databases.app_url, overdue)["status"] == "waiting_external")
    wait_for(lambda: _mails_about(stack, overdue, "SLA breached"), what="breach mail")

    operator = _auth(stack, "operator")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = api.get("/sla/watchlist", headers=operator, params={"department": world.dept_code})
        assert r.status_code == 200, r.text
        body = r.json()
        listed = {item["request_id"]: item for item in body["items"]}
        assert set(listed) == {ids["overdue"], ids["2h"], ids["23h"]}
        assert body["total"] == 3
        assert [i["request_id"] for i in body["items"]] == [ids["overdue"], ids["2h"], ids["23h"]]
        assert listed[overdue]["breached"] is True and listed[overdue]["state"] == "breached"
        assert listed[overdue]["seconds_left"] < 0
        assert listed[ids["2h"]]["state"] == "watch" and not listed[ids["2h"]]["breached"]
        assert 0 < listed[ids["2h"]]["seconds_left"] <= 2 * 3600
        assert listed[ids["2h"]]["department"] == world.dept_code
        assert listed[ids["2h"]]["assignee"] == f"staff-{world.tag}"
        page = api.get(
            "/sla/watchlist",
            headers=operator,
            params={"department": world.dept_code, "limit": 2, "offset": 2},
        ).json()
        assert page["total"] == 3 and [i["request_id"] for i in page["items"]] == [ids["23h"]]
        other = api.get("/sla/watchlist", headers=operator, params={"department": "NOPE"}).json()
        assert other["total"] == 0

    # The breach happened once, with its reason on the timeline and in the audit log.
    breaches = [t for t in timeline(databases.app_url, overdue) if t[0] == "sla_breach"]
    assert len(breaches) == 1 and "waiting on a reply" in breaches[0][2]
    events = audit_rows(databases.opsflow_admin_url, f"request:{overdue}")
    assert [e[0] for e in events].count("sla.breach") == 1
    assert len(_mails_about(stack, overdue, "SLA breached")) == 1
    # A second pass changes nothing: every open request already has its workflow.
    again = _reconcile(stack, world)
    assert again["started"] == 0 and again["ended"] == 0 and again["rearmed"] == 0
    assert len([t for t in timeline(databases.app_url, overdue) if t[0] == "sla_breach"]) == 1


def test_reconciler_ends_orphans_and_rearms_moved_due_times(stack: Any, databases: Any) -> None:
    world = make_world(databases.app_url, secrets.token_hex(3))
    now = datetime.now(UTC)
    resolved_outside = _triage(stack, databases, world, now + timedelta(hours=40))
    moved = _triage(stack, databases, world, now + timedelta(hours=40))
    new_due = (now + timedelta(hours=5)).replace(microsecond=0)
    with psycopg.connect(databases.app_url) as conn:
        conn.execute(
            "UPDATE service_requests SET status = 'resolved' WHERE id = %s", (resolved_outside,)
        )
        conn.execute("UPDATE service_requests SET sla_due_at = %s WHERE id = %s", (new_due, moved))
    result = _reconcile(stack, world)
    assert result["ended"] == 1 and result["rearmed"] == 1 and result["started"] == 0
    admin = _auth(stack, "admin")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        run = wait_run(api, admin, f"sla:request:{resolved_outside}")
        assert run["status"] == "COMPLETED" and run["result"]["ended_by"] == "request_resolved"
    row = wait_for(
        lambda: (r := _watch_row(databases, moved)) and r[1] == new_due and r,
        what="the re-armed due time",
    )
    assert row[0] == "watch"
    assert _watch_row(databases, resolved_outside)[0] == "resolved"  # type: ignore[index]

    # The escalate route signals without describing first; a run that ended answers 409 and
    # a request that never had one 404. Each attempt was audited before it was sent, and its
    # failure after: a row "requested" and a row "failed" with the answer, nothing else.
    sup = _auth(stack, "supervisor")
    never = make_request(databases.app_url, world, due=now + timedelta(hours=40))
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        ended = api.post(
            f"/sla/requests/{resolved_outside}/escalate", headers=sup, json={"reason": "late"}
        )
        assert ended.status_code == 409, ended.text
        assert "COMPLETED" in ended.json()["detail"]
        missing = api.post(
            f"/sla/requests/{never}/escalate", headers=sup, json={"reason": "urgent"}
        )
        assert missing.status_code == 404, missing.text
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        signals = conn.execute(
            """SELECT workflow_id, outcome, details->>'error' FROM audit_events
               WHERE action = 'run.signal' AND workflow_id = ANY(%s) ORDER BY id""",
            ([f"sla:request:{resolved_outside}", f"sla:request:{never}"],),
        ).fetchall()
    assert [(w, o) for w, o, _ in signals] == [
        (f"sla:request:{resolved_outside}", "requested"),
        (f"sla:request:{resolved_outside}", "failed"),
        (f"sla:request:{never}", "requested"),
        (f"sla:request:{never}", "failed"),
    ]
    assert signals[1][2] == ended.json()["detail"] and "COMPLETED" in signals[1][2]
    assert signals[3][2] == missing.json()["detail"]


def test_worker_killed_between_send_and_record_delivers_once(stack: Any, databases: Any) -> None:
    world = make_world(databases.app_url, secrets.token_hex(3))
    rid = _triage(stack, databases, world, datetime.now(UTC) + timedelta(hours=30))
    sms_key = f"sla:request:{rid}/escalate/%/sms"
    mail_key = f"sla:request:{rid}/escalate/%/mail"
    # The first attempt to record each notification (SMS and mail) as sent hangs, then fails:
    # the worker dies while the gateway and the mailbox already have the message and the
    # ledger still says pending. (Sequences, not a table, count the attempts: the failed update
    # rolls back everything else. SECURITY DEFINER: the service role may not use them itself.)
    with psycopg.connect(databases.opsflow_admin_url, autocommit=True) as conn:
        for channel in ("sms", "mail"):
            conn.execute(f"CREATE SEQUENCE itest_seq_{world.tag}_{channel}")
        conn.execute(
            f"""CREATE OR REPLACE FUNCTION itest_hang_{world.tag}() RETURNS trigger AS $$
                BEGIN
                  IF NEW.idempotency_key LIKE 'sla:request:{rid}/escalate/%'
                     AND NEW.status = 'sent'
                     AND nextval(('itest_seq_{world.tag}_' || NEW.channel)::regclass) = 1 THEN
                    PERFORM pg_sleep(6);
                    RAISE EXCEPTION 'itest: worker gone before recording';
                  END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql SECURITY DEFINER"""
        )
        conn.execute(
            f"""CREATE TRIGGER itest_hang_{world.tag} BEFORE UPDATE ON notifications
                FOR EACH ROW EXECUTE FUNCTION itest_hang_{world.tag}()"""
        )
    try:
        _escalate(stack, rid, "crash test")
        wait_for(lambda: _sms_about(stack, rid), what="the SMS at the gateway")
        wait_for(lambda: _mails_about(stack, rid, "ESCALATED"), what="the mail in the mailbox")
        stack.kill_worker()
        stack.restart_worker()
        with psycopg.connect(databases.opsflow_admin_url) as conn:
            for key in (sms_key, mail_key):
                wait_for(
                    lambda key=key: (
                        conn.execute(
                            "SELECT status FROM notifications WHERE idempotency_key LIKE %s",
                            (key,),
                        ).fetchone()
                        == ("sent",)
                    ),
                    timeout=90,
                    what=f"{key} recorded as sent after the retry",
                )
    finally:
        with psycopg.connect(databases.opsflow_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS itest_hang_{world.tag} ON notifications")
    # Each was sent again by the retry, and recognised by its key: one SMS (the gateway's
    # Idempotency-Key), one mail (the mailbox's Message-ID), both recorded sent.
    assert len(_sms_about(stack, rid)) == 1
    log = (stack.logs_dir / "worker.log").read_text(encoding="utf-8", errors="replace")
    assert "sms already delivered by the gateway; recording it" in log
    assert len(_mails_about(stack, rid, "ESCALATED")) == 1
    # The mail really was sent a second time, and the mailbox dropped the copy.
    assert stack.mail_sink is not None
    assert any(f"<sla.request.{rid}.escalate." in mid for mid in stack.mail_sink.duplicates())
    assert request_row(databases.app_url, rid)["priority"] == "critical"


def test_escalation_without_supervisor_phones_mails_and_records_the_sms_suppressed(
    stack: Any, databases: Any
) -> None:
    world = make_world(databases.app_url, secrets.token_hex(3))
    with psycopg.connect(databases.app_url) as conn:
        conn.execute(
            "UPDATE users SET phone = NULL WHERE department_id = %s AND role = 'supervisor'",
            (world.dept,),
        )
    rid = _triage(stack, databases, world, datetime.now(UTC) + timedelta(hours=30))
    _escalate(stack, rid, "nobody answers the radio")
    mails = wait_for(lambda: _mails_about(stack, rid, "ESCALATED"), what="escalation mail")
    key = f"sla:request:{rid}/escalate/%/sms"
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        row = wait_for(
            lambda: conn.execute(
                """SELECT status, recipients FROM notifications
                   WHERE idempotency_key LIKE %s AND status <> 'pending'""",
                (key,),
            ).fetchone(),
            what="the SMS ledger row",
        )
    # Nobody to text: the ledger says so and the gateway got nothing; the mail still went.
    assert row == ("suppressed", [])
    assert _sms_about(stack, rid) == []
    assert len(mails) == 1 and all(a in str(mails[0]["To"]) for a in world.supervisor_emails)
    log = (stack.logs_dir / "worker.log").read_text(encoding="utf-8", errors="replace")
    assert f"no supervisor phone to text for request {rid}" in log
    assert request_row(databases.app_url, rid)["priority"] == "critical"


def test_cli_watchlist_escalate_and_note(stack: Any, databases: Any) -> None:
    from tests.integration.test_cli import opsflow

    world = make_world(databases.app_url, secrets.token_hex(3))
    rid = _triage(stack, databases, world, datetime.now(UTC) + timedelta(hours=3))
    operator, supervisor = stack.make_token("operator"), stack.make_token("supervisor")
    listed = opsflow(
        stack, "sla", "watchlist", "--department", world.dept_code, "--json", token=operator
    )
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert body["total"] == 1 and body["items"][0]["request_id"] == rid
    table = opsflow(stack, "sla", "watchlist", "-d", world.dept_code, token=operator)
    assert table.returncode == 0 and str(rid) in table.stdout and "watch" in table.stdout

    refused = opsflow(stack, "sla", "escalate", str(rid), "--reason", "hurry", token=operator)
    assert refused.returncode == 1 and "403" in refused.stderr
    done = opsflow(stack, "sla", "escalate", str(rid), "--reason", "crew needed", token=supervisor)
    assert done.returncode == 0, done.stderr
    noted = opsflow(stack, "sla", "note", str(rid), "--text", "crew on site", token=operator)
    assert noted.returncode == 0, noted.stderr
    wait_for(lambda: request_row(databases.app_url, rid)["priority"] == "critical")
    notes = wait_for(lambda: [t for t in timeline(databases.app_url, rid) if t[0] == "note"])
    assert notes[0][2] == "crew on site" and notes[0][1].startswith("token:")


def test_failed_sms_is_retried_recorded_and_delivered_once(stack: Any, databases: Any) -> None:
    world = make_world(databases.app_url, secrets.token_hex(3))
    rid = _triage(stack, databases, world, datetime.now(UTC) + timedelta(hours=30))
    # The gateway refuses the next two posts (503): the ledger says failed, then sent.
    sink = f"http://127.0.0.1:{stack.ports.sms}"
    assert httpx.post(f"{sink}/_sink/faults", json={"fail_next": 2}).status_code == 200
    _escalate(stack, rid, "gateway flaky")
    wait_for(lambda: _sms_about(stack, rid), timeout=60, what="the SMS after two refusals")
    with psycopg.connect(databases.opsflow_admin_url) as conn:
        row = conn.execute(
            """SELECT status, attempts, last_error FROM notifications
               WHERE idempotency_key LIKE %s""",
            (f"sla:request:{rid}/escalate/%/sms",),
        ).fetchone()
    assert row is not None and row[0] == "sent"
    assert row[1] == 3 and "503" in row[2]
    assert len(_sms_about(stack, rid)) == 1

    async def attributes() -> dict[str, Any]:
        from temporalio.client import Client
        from temporalio.common import SearchAttributeKey

        client = await Client.connect(stack.temporal_address)
        desc = await client.get_workflow_handle(f"sla:request:{rid}").describe()
        sa = desc.typed_search_attributes
        return {
            "state": sa.get(SearchAttributeKey.for_keyword("OpsSlaState")),
            "request": sa.get(SearchAttributeKey.for_keyword("OpsRequestId")),
            "department": sa.get(SearchAttributeKey.for_keyword("OpsDepartment")),
            "due": sa.get(SearchAttributeKey.for_datetime("OpsSlaDueAt")),
        }

    # The Web UI's attributes follow the workflow's state.
    found = wait_for(
        lambda: (a := asyncio.run(attributes()))["state"] == "escalated" and a,
        what="OpsSlaState escalated",
    )
    assert found["request"] == str(rid) and found["department"] == world.dept_code
    assert found["due"] == request_row(databases.app_url, rid)["sla_due_at"]


def test_reconciler_schedule_every_5_minutes_starts_the_reconciler(stack: Any) -> None:
    from temporalio.client import Client, ScheduleState

    from opsflow.catalog import RUNBOOKS
    from opsflow.worker.schedules import build_schedule

    spec = RUNBOOKS["sla-reconciler"]
    assert spec.schedule is not None
    assert spec.schedule.interval == timedelta(minutes=5)
    schedule_id = f"sla-reconciler-itest-{secrets.token_hex(3)}"

    async def run_once() -> dict[str, Any]:
        client = await Client.connect(stack.temporal_address)
        schedule = build_schedule(spec, stack.settings)
        # Paused, so it never fires on its own during the suite; one manual trigger instead.
        schedule.state = ScheduleState(paused=True)
        handle = await client.create_schedule(schedule_id, schedule)
        try:
            desc = await handle.describe()
            intervals = desc.schedule.spec.intervals
            await handle.trigger()
            for _ in range(150):
                desc = await handle.describe()
                if desc.info.recent_actions:
                    break
                await asyncio.sleep(0.2)
            started = desc.info.recent_actions[0].action.workflow_id
            result = await client.get_workflow_handle(started).result()
        finally:
            await handle.delete()
        return {"intervals": intervals, "workflow_id": started, "result": result}

    out = asyncio.run(run_once())
    assert [i.every for i in out["intervals"]] == [timedelta(minutes=5)]
    assert out["workflow_id"].startswith("sla-reconciler-")  # + the scheduled time
    assert out["result"]["failed"] == 0 and out["result"]["open_requests"] >= 0
