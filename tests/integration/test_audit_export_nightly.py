"""audit-export-nightly against the real stack: package contents, snapshot, rerun, link, roles."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
import threading
import time
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from opsflow.adapters import audit_package
from opsflow.adapters.crypto import DEV_KEYRING_FILE, Keyring, decrypt_bytes, load_dev_keyring
from opsflow.shared import audit_export_nightly as ae
from tests.integration.runs import wait_run

pytestmark = pytest.mark.integration

RUNBOOK = "/runbooks/audit-export-nightly/runs"


def _model_sql(name: str) -> str:
    # The same SELECTs as the shipped dbt models (the test compares against the source).
    if name == "audit_case_snapshot":
        return (
            "select id, reference, organization_id, department_id, title, status, priority, "
            "channel, sla_due_at, expedited, created_at, updated_at, resolved_at, closed_at "
            "from service_requests order by id"
        )
    return (
        "select id, request_id, department_id, assignee_id, assigned_by, priority, sla_due_at, "
        "templates::text as templates, created_at from assignments order by id"
    )


def _copy_rows(conn: psycopg.Connection[Any], name: str) -> dict[str, list[str]]:
    buf = io.BytesIO()
    with conn.cursor().copy(
        f"COPY ({_model_sql(name)}) TO STDOUT WITH (FORMAT csv, HEADER true)"
    ) as cp:
        for data in cp:
            buf.write(bytes(data))
    rows = list(csv.reader(io.StringIO(buf.getvalue().decode())))
    return {r[0]: r for r in rows[1:]}


def _source(app_url: str) -> dict[str, dict[str, list[str]]]:
    with psycopg.connect(app_url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return {m: _copy_rows(conn, m) for m in ae.MODELS}


def _fill(app_url: str, tag: str, n: int) -> None:
    with psycopg.connect(app_url) as conn:
        org = conn.execute(
            "INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id",
            (f"ae-{tag}", f"Audit {tag}"),
        ).fetchone()
        assert org is not None
        conn.execute(
            """INSERT INTO service_requests (organization_id, reference, title, status, priority,
                 channel, created_at)
               SELECT %s, %s || '-' || g, 'case, "quoted" ' || g || E'\\nline2', 'assigned',
                      'normal', 'web', now() - g * interval '1 minute'
               FROM generate_series(1, %s) g""",
            (org[0], f"AE-{tag}", n),
        )
        conn.execute(
            """INSERT INTO assignments (request_id, assigned_by, priority, templates)
               SELECT id, 'alice', 'high', '["t1"]'::jsonb FROM service_requests
               WHERE reference LIKE %s""",
            (f"AE-{tag}-%",),
        )


class Writer(threading.Thread):
    """Commits small write transactions until stopped; remembers each one's xid."""

    def __init__(self, app_url: str, tag: str, ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.app_url, self.tag, self.ids = app_url, tag, ids
        self.stop = threading.Event()
        self.txns: list[dict[str, Any]] = []

    def run(self) -> None:
        with psycopg.connect(self.app_url) as conn:
            i = 0
            while not self.stop.is_set() and i < 2000:
                i += 1
                with conn.transaction():
                    xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
                    target = self.ids[i % len(self.ids)]
                    title = f"changed-{self.tag}-{i}"
                    conn.execute(
                        "UPDATE service_requests SET title = %s WHERE id = %s", (title, target)
                    )
                    new = conn.execute(
                        """INSERT INTO service_requests (organization_id, reference, title)
                           SELECT organization_id, %s, 'late' FROM service_requests
                           WHERE id = %s RETURNING id""",
                        (f"LATE-{self.tag}-{i}", target),
                    ).fetchone()
                    asg = conn.execute(
                        """INSERT INTO assignments (request_id, assigned_by) VALUES (%s, 'late')
                           RETURNING id""",
                        (new[0] if new else target,),
                    ).fetchone()
                assert xid is not None and new is not None and asg is not None
                self.txns.append(
                    {
                        "xid": xid[0],
                        "update": (str(target), title),
                        "case": str(new[0]),
                        "assignment": str(asg[0]),
                    }
                )
                time.sleep(0.005)


def _package(stack: Any, key: str) -> bytes:
    body = stack.s3.get_object(Bucket=stack.settings.s3_audit_bucket, Key=key)["Body"].read()
    return bytes(body)


def _keyring(stack: Any) -> Keyring:
    # The worker's development keyring (created by whichever of the two needs it first).
    return load_dev_keyring(stack.state_dir / DEV_KEYRING_FILE)


def _export_rows(plain: bytes) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
    zf = zipfile.ZipFile(io.BytesIO(plain))
    manifest = json.loads(zf.read("manifest.json"))
    out: dict[str, dict[str, list[str]]] = {}
    for m in ae.MODELS:
        rows = list(csv.reader(io.StringIO(zf.read(f"{m}.csv").decode())))
        out[m] = {r[0]: r for r in rows[1:]}
    return manifest, out


def _visible(app_url: str, snapshot: str, xids: list[str]) -> list[bool]:
    with psycopg.connect(app_url) as conn:
        return [
            bool(
                conn.execute(
                    "SELECT pg_visible_in_snapshot(%s::xid8, %s::pg_snapshot)", (x, snapshot)
                ).fetchone()[0]  # type: ignore[index]
            )
            for x in xids
        ]


def _stray_uploads(stack: Any) -> list[str]:
    resp = stack.s3.list_multipart_uploads(Bucket=stack.settings.s3_audit_bucket)
    return [u["Key"] for u in resp.get("Uploads", [])]


def test_export_decrypts_to_the_snapshot_and_reruns_are_noops(stack: Any, databases: Any) -> None:
    tag = secrets.token_hex(3)
    _fill(databases.app_url, tag, 3000)
    export_date = "2026-01-15"
    before = _source(databases.app_url)
    base_ids = [int(i) for i, r in before["audit_case_snapshot"].items() if r[1].startswith("AE-")]
    auditor = {"Authorization": f"Bearer {stack.make_token('auditor', name=f'aud-{tag}')}"}
    writer = Writer(databases.app_url, tag, base_ids[:50])
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        writer.start()
        try:
            r = api.post(RUNBOOK, headers=auditor, json={"date": export_date})
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            assert wid == f"audit-export:{export_date}"
            run = wait_run(api, auditor, wid, timeout=120)
        finally:
            writer.stop.set()
            writer.join(10)
        assert run["status"] == "COMPLETED", run
        result = run["result"]
        assert result["noop"] is False and result["version"] == 1
        key = result["object_key"]
        assert key == "2026/01/15/audit-export-2026-01-15.zip.ofae"

        blob = _package(stack, key)
        head = stack.s3.head_object(Bucket=stack.settings.s3_audit_bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256"
        plain = decrypt_bytes(blob, _keyring(stack))
        manifest, exported = _export_rows(plain)

        # Expected = the rows before the writer, plus exactly the writer's transactions the
        # snapshot saw; the ones committed after it appear in neither file.
        visible = _visible(
            databases.app_url, manifest["pg_snapshot"], [t["xid"] for t in writer.txns]
        )
        assert not all(visible), "no write happened after the snapshot: test proves nothing"
        now = _source(databases.app_url)
        expected = {m: dict(before[m]) for m in ae.MODELS}
        for txn, seen in zip(writer.txns, visible, strict=True):
            if not seen:
                continue
            case_id, title = txn["update"]
            row = list(expected["audit_case_snapshot"][case_id])
            row[4] = title
            expected["audit_case_snapshot"][case_id] = row
            expected["audit_case_snapshot"][txn["case"]] = now["audit_case_snapshot"][txn["case"]]
            expected["audit_assignment_snapshot"][txn["assignment"]] = now[
                "audit_assignment_snapshot"
            ][txn["assignment"]]
        for m in ae.MODELS:
            assert exported[m] == expected[m], m
        late_cases = {t["case"] for t, seen in zip(writer.txns, visible, strict=True) if not seen}
        assert not late_cases & set(exported["audit_case_snapshot"])

        # The manifest and export_runs agree with the bytes.
        counts = {m: len(exported[m]) for m in ae.MODELS}
        assert {e["model"]: e["rows"] for e in manifest["entries"]} == counts
        assert result["row_counts"] == counts
        assert manifest["dbt_version"].startswith("1.10.")
        assert manifest["models_revision"]
        with psycopg.connect(databases.opsflow_admin_url) as conn:
            db_row = conn.execute(
                """SELECT status, ciphertext_sha256, ciphertext_bytes, plaintext_sha256, key_id,
                          row_counts, snapshot_at FROM export_runs
                   WHERE export_date = %s AND version = 1""",
                (export_date,),
            ).fetchone()
            audits = conn.execute(
                """SELECT actor, outcome, target FROM audit_events
                   WHERE action = 'export' AND workflow_id = %s""",
                (wid,),
            ).fetchall()
        assert db_row is not None
        assert db_row[0] == "succeeded"
        assert db_row[1] == hashlib.sha256(blob).hexdigest() and db_row[2] == len(blob)
        assert db_row[3] == hashlib.sha256(plain).hexdigest()
        assert db_row[4] == _keyring(stack).active and db_row[5] == counts
        assert db_row[6] == datetime.fromisoformat(manifest["snapshot_at"])
        assert (
            len(audits) == 1 and audits[0][0].startswith("token:aud-") and audits[0][1] == "success"
        )

        # The distribution mail: a 7-day SigV4 link that downloads the same bytes.
        mails = [
            m for m in stack.mails() if m["Subject"] == f"[opsflow] Audit export {export_date}"
        ]
        assert len(mails) == 1
        text = mails[0].get_content() if not mails[0].is_multipart() else str(mails[0])
        url = re.search(r"https?://\S+", text)
        assert url is not None
        link = url.group(0)
        q = parse_qs(urlsplit(link).query)
        assert q["X-Amz-Expires"] == ["604800"] and q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert db_row[1] in text and str(counts["audit_case_snapshot"]) in text
        got = httpx.get(link, timeout=30)
        assert got.status_code == 200 and got.content == blob
        # Any change to a signed part of the link is refused: longer life, other object.
        longer = link.replace("X-Amz-Expires=604800", "X-Amz-Expires=604799")
        assert httpx.get(longer, timeout=30).status_code == 403
        other_key = link.replace("audit-export-2026-01-15.zip", "audit-export-2026-01-15x.zip")
        assert httpx.get(other_key, timeout=30).status_code == 403

        # Re-running the date changes nothing: no second object, row, audit event or mail.
        r = api.post(RUNBOOK, headers=auditor, json={"date": export_date})
        assert r.status_code == 201, r.text
        again = wait_run(api, auditor, wid, timeout=60)
        assert again["status"] == "COMPLETED" and again["result"]["noop"] is True
        listing = stack.s3.list_objects_v2(
            Bucket=stack.settings.s3_audit_bucket, Prefix="2026/01/15/"
        )
        assert [o["Key"] for o in listing.get("Contents", [])] == [key]
        with psycopg.connect(databases.opsflow_admin_url) as conn:
            n_rows = conn.execute(
                "SELECT count(*) FROM export_runs WHERE export_date = %s", (export_date,)
            ).fetchone()
            n_audit = conn.execute(
                "SELECT count(*) FROM audit_events WHERE action = 'export' AND target = %s",
                (f"s3://{stack.settings.s3_audit_bucket}/{key}",),
            ).fetchone()
        assert n_rows == (1,) and n_audit == (1,)
        assert (
            len(
                [
                    m
                    for m in stack.mails()
                    if m["Subject"] == f"[opsflow] Audit export {export_date}"
                ]
            )
            == 1
        )
        assert _stray_uploads(stack) == []

    # The CLI: verify checks the stored package against export_runs; fetch writes the zip.
    from tests.integration.test_cli import opsflow

    verified = opsflow(stack, "audit-export", "verify", "--date", export_date, "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and {c["what"] for c in report["checks"]} >= {
        "ciphertext sha256",
        "row counts",
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/pkg.zip"
        fetched = opsflow(stack, "audit-export", "fetch", "--date", export_date, "--out", out)
        assert fetched.returncode == 0, fetched.stderr
        with open(out, "rb") as fh:
            assert fh.read() == plain
        # A package changed in the bucket is refused, and fetch writes nothing.
        bad = bytearray(blob)
        bad[len(bad) // 2] ^= 1
        bucket = stack.settings.s3_audit_bucket
        stack.s3.put_object(Bucket=bucket, Key=key, Body=bytes(bad), ServerSideEncryption="AES256")
        try:
            refused = opsflow(stack, "audit-export", "verify", "--date", export_date)
            # The CLI wraps long lines to the terminal's width: compare words, not lines.
            assert refused.returncode == 1 and "not intact" in " ".join(refused.stderr.split())
            out2 = f"{tmp}/bad.zip"
            refused = opsflow(stack, "audit-export", "fetch", "--date", export_date, "--out", out2)
            assert refused.returncode == 1 and not os.path.exists(out2)
        finally:
            stack.s3.put_object(Bucket=bucket, Key=key, Body=blob, ServerSideEncryption="AES256")


def test_refusals_are_clear_4xx_and_start_nothing(stack: Any) -> None:
    tag = secrets.token_hex(3)
    operator = {"Authorization": f"Bearer {stack.make_token('operator', name=f'op-{tag}')}"}
    supervisor = {"Authorization": f"Bearer {stack.make_token('supervisor', name=f'sv-{tag}')}"}
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = api.post(RUNBOOK, headers=supervisor, json={"date": "2026-01-16"})
        assert r.status_code == 403, r.text
        assert api.get("/runs/audit-export:2026-01-16", headers=operator).status_code == 404
        for bad, needle in ((tomorrow, "future"), ("2026-02-30", "calendar"), ("x", "pattern")):
            r = api.post(RUNBOOK, headers=operator, json={"date": bad})
            assert r.status_code == 422, r.text
            assert needle in r.text
        assert api.get(f"/runs/audit-export:{tomorrow}", headers=operator).status_code == 404
        listing = api.get("/runbooks", headers=operator).json()
        spec = next(s for s in listing if s["name"] == "audit-export-nightly")
        assert spec["schedule"]["cron"] == "0 2 * * *"
        assert sorted(spec["start_roles"]) == ["admin", "auditor", "operator", "superadmin"]


def test_read_package_detects_a_tampered_object(stack: Any) -> None:
    # The fetch/verify path: a flipped byte in the stored object is refused.
    from opsflow.adapters.crypto import CryptoError, encrypt_bytes

    ring = _keyring(stack)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("audit_case_snapshot.csv", "id\n1\n")
        zf.writestr(
            "manifest.json",
            json.dumps(
                {
                    "entries": [
                        {
                            "name": "audit_case_snapshot.csv",
                            "model": "audit_case_snapshot",
                            "rows": 1,
                            "bytes": 5,
                            "sha256": hashlib.sha256(b"id\n1\n").hexdigest(),
                        }
                    ]
                }
            ),
        )
    blob = bytearray(encrypt_bytes(buf.getvalue(), ring))
    with tempfile.TemporaryFile() as out:
        facts = audit_package.read_package(io.BytesIO(bytes(blob)), ring, out)
    assert facts.entries[0].rows == 1 and facts.key_id == ring.active
    blob[-5] ^= 1
    with tempfile.TemporaryFile() as out, pytest.raises(CryptoError):
        audit_package.read_package(io.BytesIO(bytes(blob)), ring, out)


async def test_schedule_fires_at_two_local_across_dst(stack: Any, temporal_client: Any) -> None:
    # The time-skipping server has no schedules: the real dev server computes the times.
    from zoneinfo import ZoneInfo

    from opsflow.catalog import get_runbook
    from opsflow.worker.schedules import build_schedule

    spec = get_runbook("audit-export-nightly")
    assert spec is not None and spec.schedule is not None
    zone = "Europe/Berlin"
    schedule = build_schedule(spec, stack.settings.model_copy(update={"schedule_timezone": zone}))
    assert schedule.policy.overlap.name == "SKIP"
    assert (schedule.policy.catchup_window or timedelta(0)) >= timedelta(hours=12)
    sid = f"audit-export-dst-{secrets.token_hex(3)}"
    results: dict[str, list[datetime]] = {}
    for season, start in (
        ("spring", datetime(2027, 3, 25, tzinfo=UTC)),
        ("autumn", datetime(2027, 10, 28, tzinfo=UTC)),
    ):
        schedule.spec.start_at = start
        handle = await temporal_client.create_schedule(f"{sid}-{season}", schedule)
        try:
            desc = await handle.describe()
            results[season] = list(desc.info.next_action_times)
        finally:
            await handle.delete()
    berlin = ZoneInfo(zone)
    spring = [t.astimezone(berlin) for t in results["spring"]]
    autumn = [t.astimezone(berlin) for t in results["autumn"]]
    assert len(spring) >= 5 and len(autumn) >= 5
    # Every local day fires at 02:00 and at 03:00 (the fallback, which exports only a date
    # without a run), in order, before and after each change of the UTC offset.
    for times in (spring, autumn):
        assert times == sorted(times)
        assert {(t.hour, t.minute) for t in times} == {(2, 0), (3, 0)}, times
    days: dict[str, list[int]] = {}
    for times in (spring, autumn):
        by_day: dict[str, list[int]] = {}
        for t in times:
            by_day.setdefault(t.date().isoformat(), []).append(t.hour)
        by_day.popitem()  # the last listed day may be cut short by the list's length
        days.update(by_day)
    # 2027-03-28 has no 02:00 in Berlin (02:00 -> 03:00): Temporal's calendar skips that
    # firing, and the 03:00 fallback is the night's export.
    assert days.pop("2027-03-28") == [3]
    assert "2027-03-29" in days and "2027-10-31" in days
    # Every other day, the autumn one included (its 02:00 twice on the wall clock), fires
    # once at 02:00 and once at 03:00.
    assert all(hours == [2, 3] for hours in days.values()), days
    # UTC offset changes: 01:00Z in winter, 00:00Z in summer.
    assert {t.utcoffset() for t in spring} == {timedelta(hours=1), timedelta(hours=2)}
    assert {t.utcoffset() for t in autumn} == {timedelta(hours=1), timedelta(hours=2)}


async def test_triggered_schedule_runs_the_night_as_audit_export_date(
    stack: Any, databases: Any, temporal_client: Any
) -> None:
    # The stack syncs no schedules: create the catalog's schedule under its real id, fire it
    # now, and follow what it starts.
    from temporalio.client import ScheduleActionStartWorkflow, WorkflowExecutionStatus

    from opsflow.catalog import get_runbook
    from opsflow.worker.schedules import build_schedule

    spec = get_runbook(ae.RUNBOOK)
    assert spec is not None and spec.schedule is not None
    zone = stack.settings.schedule_timezone
    actor = f"system:{ae.SCHEDULE_ID}"
    handle = await temporal_client.create_schedule(
        ae.SCHEDULE_ID, build_schedule(spec, stack.settings)
    )
    try:
        desc = await handle.describe()
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == ae.SCHEDULED_WORKFLOW == "audit-export-scheduled"
        assert desc.schedule.policy.overlap.name == "SKIP"
        assert desc.schedule.policy.catchup_window == timedelta(hours=20)
        assert desc.schedule.spec.time_zone_name == zone

        await handle.trigger()
        deadline = time.monotonic() + 30
        while not (await handle.describe()).info.recent_actions:
            assert time.monotonic() < deadline, "the triggered schedule started nothing"
            await asyncio.sleep(0.2)
        fired = (await handle.describe()).info.recent_actions[0]
        starter_id = fired.action.workflow_id
        assert starter_id.startswith(f"{ae.SCHEDULE_ID}-")
        # The night is the date of the time it was due, in the schedule's zone.
        night = ae.today_in(zone, fired.scheduled_at)
        wid = ae.workflow_id(night)

        starter = temporal_client.get_workflow_handle(
            starter_id, result_type=ae.AuditExportScheduledResult
        )
        result = await asyncio.wait_for(starter.result(), 180)
        assert result.export_date == night and result.workflow_id == wid
        assert result.started and result.status in {"exported", "noop"}, result

        child = await temporal_client.get_workflow_handle(wid).describe()
        assert child.workflow_type == "audit-export-nightly"
        assert child.status == WorkflowExecutionStatus.COMPLETED
        assert child.parent_id == starter_id
        assert (await child.memo()) == {"actor": actor, "runbook": ae.RUNBOOK}
        attrs = {k.name: v for k, v in child.typed_search_attributes}
        assert attrs["OpsActor"] == actor and attrs["OpsRunbook"] == ae.RUNBOOK
        assert attrs["OpsTenant"] == "-"
        assert attrs["OpsState"] in {"exported", "noop"}
        starter_desc = await starter.describe()
        assert starter_desc.workflow_type == "audit-export-scheduled"
        with psycopg.connect(databases.opsflow_admin_url) as conn:
            runs = conn.execute(
                "SELECT workflow_id, actor, status FROM runs WHERE workflow_id IN (%s, %s)",
                (wid, starter_id),
            ).fetchall()
        # The export keeps its own runs row; the starter has none.
        assert (wid, actor, "completed") in runs
        assert all(r[0] == wid for r in runs)
    finally:
        await handle.delete()


async def test_scheduled_export_outlives_its_terminated_starter(temporal_client: Any) -> None:
    # Parent close policies need the real server (the time-skipping one ignores them): a
    # worker of our own, on its own task queue, with the export's activities faked and its
    # plan step held, so the export is surely running when the starter is terminated.
    import uuid

    from temporalio import activity
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.common import SearchAttributePair, TypedSearchAttributes
    from temporalio.service import RPCError
    from temporalio.worker import Worker

    from opsflow.workflows.audit_export_nightly import (
        SCHEDULED_START,
        AuditExportNightly,
        AuditExportScheduled,
    )
    from tests.unit.test_audit_export_nightly import FakeExport

    fake = FakeExport()
    acts: list[Any] = fake.activities()
    real_plan = acts[0]
    gate, planning = asyncio.Event(), asyncio.Event()

    @activity.defn(name="audit_export.plan")
    async def gated_plan(req: ae.PlanRequest) -> ae.Plan:
        planning.set()
        await gate.wait()
        plan: ae.Plan = await real_plan(req)
        return plan

    acts[0] = gated_plan
    tq = f"ae-starter-{uuid.uuid4()}"
    # A date of its own per run, far from the dates the stack's own runs export.
    day = f"2001-01-{secrets.randbelow(28) + 1:02d}"
    wid = ae.workflow_id(day)
    async with Worker(
        temporal_client,
        task_queue=tq,
        workflows=[AuditExportNightly, AuditExportScheduled],
        activities=acts,
    ):
        old = temporal_client.get_workflow_handle(wid)
        try:
            if (await old.describe()).status == WorkflowExecutionStatus.RUNNING:
                await old.terminate("earlier test run")
        except RPCError:  # no earlier run of that date
            pass
        starter = await temporal_client.start_workflow(
            AuditExportScheduled.run,
            ae.AuditExportScheduledInput(time_zone="UTC"),
            id=f"{ae.SCHEDULE_ID}-test-{uuid.uuid4()}",
            task_queue=tq,
            memo={"actor": f"system:{ae.SCHEDULE_ID}"},
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SCHEDULED_START, datetime.fromisoformat(f"{day}T02:00Z"))]
            ),
        )
        await asyncio.wait_for(planning.wait(), 30)
        await starter.terminate("operator ended the starter")
        await asyncio.sleep(1)  # the server applies the parent close policy asynchronously
        child = temporal_client.get_workflow_handle(wid)
        assert (await child.describe()).status == WorkflowExecutionStatus.RUNNING
        gate.set()
        done = await asyncio.wait_for(child.result(), 60)
    assert done["export_date"] == day and done["noop"] is False
    assert [r.status for r in fake.runs] == ["running", "completed"]


def test_worker_killed_mid_export_still_yields_one_package(stack: Any, databases: Any) -> None:
    tag = secrets.token_hex(3)
    _fill(databases.app_url, tag, 250_000)
    export_date = "2026-01-20"
    operator = {"Authorization": f"Bearer {stack.make_token('operator', name=f'op-{tag}')}"}
    bucket = stack.settings.s3_audit_bucket
    try:
        with httpx.Client(base_url=stack.api_url, timeout=60) as api:
            r = api.post(RUNBOOK, headers=operator, json={"date": export_date})
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            # Kill the worker once the package's multipart upload exists (COPY under way).
            deadline = time.monotonic() + 60
            while not [k for k in _stray_uploads(stack) if k.startswith("2026/01/20/")]:
                assert time.monotonic() < deadline, "the export never started uploading"
                time.sleep(0.05)
            prog = api.get(f"/runs/{wid}/queries/progress", headers=operator)
            assert prog.status_code == 200 and "exporting" in prog.text, prog.text
            stack.kill_worker()
            stack.restart_worker()
            run = wait_run(api, operator, wid, timeout=180)
        assert run["status"] == "COMPLETED", run
        key = run["result"]["object_key"]
        listing = stack.s3.list_objects_v2(Bucket=bucket, Prefix="2026/01/20/")
        assert [o["Key"] for o in listing.get("Contents", [])] == [key]
        assert _stray_uploads(stack) == []
        blob = _package(stack, key)
        with tempfile.TemporaryFile() as out:
            facts = audit_package.read_package(io.BytesIO(blob), _keyring(stack), out)
        assert facts.ciphertext_sha256 == run["result"]["ciphertext_sha256"]
        assert {e.model: e.rows for e in facts.entries} == run["result"]["row_counts"]
        assert run["result"]["row_counts"]["audit_case_snapshot"] >= 250_000
        with psycopg.connect(databases.opsflow_admin_url) as conn:
            rows = conn.execute(
                "SELECT version, status FROM export_runs WHERE export_date = %s", (export_date,)
            ).fetchall()
            mails = conn.execute(
                "SELECT count(*) FROM notifications WHERE idempotency_key = %s",
                (f"audit-export:{export_date}:v1",),
            ).fetchone()
        assert rows == [(1, "succeeded")] and mails == (1,)
    finally:
        with psycopg.connect(databases.app_url) as conn:
            conn.execute(
                """DELETE FROM assignments WHERE request_id IN
                   (SELECT id FROM service_requests WHERE reference LIKE %s)""",
                (f"AE-{tag}-%",),
            )
            conn.execute("DELETE FROM service_requests WHERE reference LIKE %s", (f"AE-{tag}-%",))


async def test_dbt_error_test_failure_is_not_retryable_and_named(
    databases: Any, tmp_path: Any
) -> None:
    # The shipped project passes on this schema (its constraints hold the same rules), so a
    # copy gets one more error-severity test that fails, and one warn-severity test.
    import shutil
    from unittest.mock import MagicMock

    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from opsflow.activities.audit_export_nightly import AuditExportActivities
    from opsflow.adapters import dbt
    from opsflow.adapters.crypto import Keyring, new_key_entry

    project = tmp_path / "dbt"
    shutil.copytree(dbt.PROJECT_DIR, project)
    (project / "tests" / "no_open_case_without_title.sql").write_text(
        "select id from {{ ref('audit_case_snapshot') }} where id > 0 limit 2\n"
    )
    (project / "tests" / "soft_check.sql").write_text(
        "{{ config(severity='warn') }}\nselect 1 as x\n"
    )
    with psycopg.connect(databases.app_url) as conn:
        has_rows = conn.execute("SELECT count(*) FROM service_requests").fetchone()
    assert has_rows is not None
    if has_rows[0] == 0:
        _fill(databases.app_url, secrets.token_hex(3), 3)
    acts = AuditExportActivities(
        ops_pool=MagicMock(),
        target_url=databases.app_url,
        s3=MagicMock(),
        bucket="b",
        keyring=lambda: Keyring.parse(new_key_entry("k")),
        mailer=MagicMock(),
        compliance=[],
        time_zone="UTC",
        dbt_project=project,
    )
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acts.dbt_check)
    assert err.value.non_retryable and err.value.type == "DbtTestFailed"
    assert "no_open_case_without_title" in err.value.message
    assert "soft_check" not in err.value.message
    # Without the failing test the warn-only one does not stop the export.
    (project / "tests" / "no_open_case_without_title.sql").unlink()
    compiled = await ActivityEnvironment().run(acts.dbt_check)
    assert [m.name for m in compiled.models] == list(ae.MODELS)
    assert compiled.tests_warned == 1 and compiled.tests_passed >= 10
    assert "copy" not in compiled.models[0].sql.lower()


async def test_export_activity_reuses_a_finished_package_and_aborts_strays(
    stack: Any, databases: Any
) -> None:
    # A retry after a crash: a stray upload of a dead attempt is aborted before the new one,
    # and a package already completed by a dead attempt is verified and reused, not rewritten.
    from unittest.mock import MagicMock

    from temporalio.testing import ActivityEnvironment

    from opsflow.activities.audit_export_nightly import AuditExportActivities
    from opsflow.adapters import dbt
    from opsflow.shared.audit_export_nightly import (
        CompiledModel,
        CompiledModels,
        ExportRecord,
        ExportRequest,
    )

    bucket = stack.settings.s3_audit_bucket
    key = ae.object_key("2026-01-25", 1)
    stray = stack.s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    assert key in _stray_uploads(stack)
    acts = AuditExportActivities(
        ops_pool=MagicMock(),
        target_url=databases.app_url,
        s3=stack.s3,
        bucket=bucket,
        keyring=lambda: _keyring(stack),
        mailer=MagicMock(),
        compliance=[],
        time_zone="UTC",
    )
    compiled = dbt.compile_models(databases.app_url, ae.MODELS)
    req = ExportRequest(
        record=ExportRecord("2026-01-25", 1, False, "running", bucket, key),
        models=CompiledModels([CompiledModel(m, compiled[m]) for m in ae.MODELS], "1.10", "test"),
    )
    first = await ActivityEnvironment().run(acts.export, req)
    assert not first.reused and _stray_uploads(stack) == []
    uploads = stack.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert stray not in [u["UploadId"] for u in uploads]
    etag = stack.s3.head_object(Bucket=bucket, Key=key)["ETag"]
    second = await ActivityEnvironment().run(acts.export, req)
    assert second.reused
    assert second.ciphertext_sha256 == first.ciphertext_sha256
    assert second.plaintext_sha256 == first.plaintext_sha256
    assert [e.rows for e in second.entries] == [e.rows for e in first.entries]
    assert stack.s3.head_object(Bucket=bucket, Key=key)["ETag"] == etag
