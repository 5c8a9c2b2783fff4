"""Audit export: opsflow's workflow against a plain one-process pipeline, same data, same run.

For each size (default 1 M cases + 2 M assignments, then 3 M rows more with ``--sizes``) the
app database of a private stack is filled, then:

- **baseline**: the plain pipeline as a script would write it, one process, one thread, no
  Temporal, no dbt: psycopg's ``cursor.copy()`` iterator → ``zipfile`` (deflate level 6, one
  CSV per model plus a manifest with row counts and sha256) → AES-256-GCM chunks (the same
  OFAE1 format) → boto3 multipart upload in 8 MiB parts with SSE AES256
  (``python -m bench.bench_audit_export --baseline``); peak RSS from ``getrusage``;
- **pipeline alone**: opsflow's own package writer (:func:`opsflow.adapters.audit_package.
  write_package`, as the worker calls it) in a process of its own, without Temporal or dbt
  (``--pipeline``): it shows how much of the difference is the pipeline and how much the
  runbook around it (dbt tests and compile, Temporal, bookkeeping, mail);
- **opsflow**: the ``audit-export-nightly`` runbook started through the API (dbt tests and
  compile included), wall time from the POST to the run's completion, the worker's peak RSS
  (``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before each size so the peak is this
  export's, on the running worker that has warmed dbt up as it does in use). The time of each
  step (plan, dbt, export, finish, mail, bookkeeping) comes from the run's history.

Run alone: ``.venv/bin/python -m bench.bench_audit_export [--sizes 1000000,3000000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from typing import Any

import httpx
import psycopg

from bench.bench_worker import ensure_worker, wait_dbt_warm
from opsflow.adapters import audit_package
from opsflow.adapters.crypto import Encryptor, Keyring, new_key_entry
from opsflow.adapters.s3 import make_s3_client
from opsflow.config import Settings
from opsflow.shared import audit_export_nightly as ae

BASELINE_MODELS = {
    "audit_case_snapshot": (
        "select id, reference, organization_id, department_id, title, status, priority, "
        "channel, sla_due_at, expedited, created_at, updated_at, resolved_at, closed_at "
        "from service_requests"
    ),
    "audit_assignment_snapshot": (
        "select id, request_id, department_id, assignee_id, assigned_by, priority, sla_due_at, "
        "templates::text as templates, created_at from assignments"
    ),
}


def fill(app_url: str, cases: int) -> int:
    """Make the app database hold exactly ``cases`` cases and ``2 * cases`` assignments."""
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute("TRUNCATE assignments, request_timeline, attachments, communications")
        conn.execute("TRUNCATE service_requests CASCADE")
        org = conn.execute(
            """INSERT INTO organizations (slug, name) VALUES ('bench', 'Bench')
               ON CONFLICT DO NOTHING RETURNING id"""
        ).fetchone()
        if org is None:
            org = conn.execute("SELECT id FROM organizations WHERE slug = 'bench'").fetchone()
        assert org is not None
        conn.execute(
            """INSERT INTO service_requests (organization_id, reference, title, status, priority,
                 channel, sla_due_at, created_at, updated_at)
               SELECT %s, 'REQ-' || g, 'Pothole on street ' || g || ' near the school',
                      (ARRAY['new','assigned','in_progress','resolved'])[1 + g %% 4], 'normal',
                      'web', now() + g * interval '1 second', now() - g * interval '1 second',
                      now()
               FROM generate_series(1, %s) g""",
            (org[0], cases),
        )
        conn.execute(
            """INSERT INTO assignments (request_id, assigned_by, priority, sla_due_at, templates)
               SELECT id, 'supervisor-' || (id % 50), 'high', now(), '["ack"]'::jsonb
               FROM service_requests, generate_series(1, 2)"""
        )
        conn.execute("VACUUM ANALYZE service_requests")
        conn.execute("VACUUM ANALYZE assignments")
    return cases * 3


class _PlainUpload:
    """A file-like sink: encrypt, buffer 8 MiB, upload each part (plain boto3 multipart)."""

    PART = 8 * 1024 * 1024

    def __init__(self, s3: Any, bucket: str, key: str, enc: Encryptor) -> None:
        self.s3, self.bucket, self.key, self.enc = s3, bucket, key, enc
        self.buf = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.size = 0
        self.upload_id = s3.create_multipart_upload(
            Bucket=bucket, Key=key, ServerSideEncryption="AES256"
        )["UploadId"]

    def write(self, data: bytes) -> int:
        self.buf += self.enc.update(bytes(data))
        while len(self.buf) >= self.PART:
            self._part(bytes(self.buf[: self.PART]))
            del self.buf[: self.PART]
        return len(data)

    def flush(self) -> None:
        return None

    def _part(self, body: bytes) -> None:
        n = len(self.parts) + 1
        r = self.s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=n, Body=body
        )
        self.parts.append({"PartNumber": n, "ETag": r["ETag"]})
        self.size += len(body)

    def close(self) -> None:
        self.buf += self.enc.finalize()
        self._part(bytes(self.buf))
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )


def baseline(settings: Settings, key: str) -> dict[str, Any]:
    """Run the plain pipeline in this process; return its figures."""
    keyring = Keyring.parse(new_key_entry("bench"))
    s3 = make_s3_client(settings)
    t0 = time.perf_counter()
    sink = _PlainUpload(s3, settings.s3_audit_bucket, key, Encryptor(keyring))
    entries: list[dict[str, Any]] = []
    with psycopg.connect(settings.target_database_url.get_secret_value()) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with (
            conn.transaction(),
            zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf,
        ):
            cur = conn.cursor()
            for name, sql in BASELINE_MODELS.items():
                sha, size = hashlib.sha256(), 0
                with (
                    zf.open(f"{name}.csv", "w", force_zip64=True) as out,
                    cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)") as copy,
                ):
                    for data in copy:
                        out.write(data)
                        sha.update(data)
                        size += len(data)
                entries.append({"name": name, "rows": cur.rowcount, "bytes": size,
                                "sha256": sha.hexdigest()})  # fmt: skip
            zf.writestr("manifest.json", json.dumps({"entries": entries}, indent=2))
    sink.close()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "rows": sum(int(e["rows"]) for e in entries),
        "csv_bytes": sum(int(e["bytes"]) for e in entries),
        "ciphertext_bytes": sink.size,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def pipeline(settings: Settings, key: str) -> dict[str, Any]:
    """Run opsflow's package writer alone (as the worker calls it); return its figures."""
    keyring = Keyring.parse(new_key_entry("bench"))
    s3 = make_s3_client(settings)
    t0 = time.perf_counter()
    facts = audit_package.write_package(
        settings.target_database_url.get_secret_value(),
        s3,
        settings.s3_audit_bucket,
        key,
        keyring,
        [audit_package.ModelSql(n, q) for n, q in BASELINE_MODELS.items()],
        {},
        audit_package.Counters(),
        parallel=settings.audit_export_parallel,
    )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "rows": sum(e.rows for e in facts.entries),
        "csv_bytes": sum(e.bytes for e in facts.entries),
        "ciphertext_bytes": facts.ciphertext_bytes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _vm_hwm_mib(pid: int, field: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak_rss(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0, proc(5)): the peak from here on.
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def step_seconds(stack: Any, workflow_id: str) -> dict[str, float]:
    """Seconds per activity type of a finished run, from its history (scheduled -> closed).

    ``closed_at`` is the epoch time of the run's last event (the server's clock, the same
    host's as the bench's): the wall time ends there, not at the next poll of the API.
    """
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client

    async def fetch() -> dict[str, float]:
        client = await Client.connect(stack.temporal_address)
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        scheduled: dict[int, tuple[str, float]] = {}
        out: dict[str, float] = {}
        first = last = None
        for ev in history.events:
            at = ev.event_time.ToDatetime().timestamp()
            first = at if first is None else first
            last = at
            if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = ev.activity_task_scheduled_event_attributes.activity_type.name
                scheduled[ev.event_id] = (name, at)
            elif ev.event_type in (
                EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
            ):
                attrs = (
                    ev.activity_task_completed_event_attributes
                    if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                    else ev.activity_task_failed_event_attributes
                )
                name, t0 = scheduled[attrs.scheduled_event_id]
                out[name] = out.get(name, 0.0) + at - t0
        out["workflow (first to last event)"] = (last or 0.0) - (first or 0.0)
        out["closed_at"] = last or 0.0
        return out

    return asyncio.run(fetch())


def run(stack: Any, sizes: list[int]) -> dict[str, Any]:
    """Measure both sides at each size on a running stack; return the figures."""
    settings = stack.settings
    token = stack.make_token("operator", name="bench-audit-export")
    results: list[dict[str, Any]] = []
    # The start bench's quiet phase leaves the worker stopped; the export needs it.
    log_offset = ensure_worker(stack)
    for i, cases in enumerate(sizes):
        rows = fill(settings.target_database_url.get_secret_value(), cases)
        env = {**os.environ, **stack.env}

        def alone(mode: str, key: str, env: dict[str, str] = env) -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, "-m", "bench.bench_audit_export", mode, key],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            return figures

        base = alone("--baseline", f"bench/{i}-baseline.ofae")
        own = alone("--pipeline", f"bench/{i}-pipeline.ofae")
        # The worker warms dbt up in the background when it starts (a production worker has
        # long done so by 02:00): measure the export, not the worker's start.
        asyncio.run(wait_dbt_warm(stack, log_offset))
        pid = stack.worker.pid
        _reset_peak_rss(pid)  # a fresh VmHWM: the peak of this export alone
        rss_before = _vm_hwm_mib(pid, "VmRSS")
        date = f"2026-01-{i + 1:02d}"
        t0 = time.time()
        with httpx.Client(base_url=stack.api_url, timeout=60) as api:
            headers = {"Authorization": f"Bearer {token}"}
            r = api.post(f"/runbooks/{ae.RUNBOOK}/runs", headers=headers, json={"date": date})
            r.raise_for_status()
            wid = r.json()["id"]
            while True:
                run_ = api.get(f"/runs/{wid}", headers=headers).json()
                if run_.get("status") != "RUNNING":
                    break
                time.sleep(0.2)
        if run_.get("status") != "COMPLETED":
            raise RuntimeError(f"opsflow export failed: {run_}")
        result = run_["result"]
        steps = step_seconds(stack, wid)
        ops = {
            "seconds": steps.pop("closed_at") - t0,
            "rows": sum(result["row_counts"].values()),
            "csv_bytes": base["csv_bytes"],
            "ciphertext_bytes": result["ciphertext_bytes"],
            "peak_rss_mib": _vm_hwm_mib(pid),
            "rss_before_mib": rss_before,
            "steps": steps,
        }
        results.append(
            {"cases": cases, "rows": rows, "baseline": base, "opsflow": ops, "pipeline": own}
        )
    return {"name": "audit export", "sizes": results}


def rows_for_table(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Return (label, opsflow, baseline, ratio) rows for the report table."""
    out: list[tuple[str, str, str, str]] = []
    for s in figures["sizes"]:
        o, b = s["opsflow"], s["baseline"]
        out.append((f"[bold]audit export, {s['rows']:,} rows[/]", "opsflow", "baseline", "ratio"))
        o_rps, b_rps = o["rows"] / o["seconds"], b["rows"] / b["seconds"]
        out.append(("  rows/s", f"{o_rps:,.0f}", f"{b_rps:,.0f}", f"{o_rps / b_rps:.2f}x"))
        o_mb, b_mb = o["csv_bytes"] / o["seconds"] / 1e6, b["csv_bytes"] / b["seconds"] / 1e6
        out.append(("  MB/s (CSV)", f"{o_mb:.1f}", f"{b_mb:.1f}", f"{o_mb / b_mb:.2f}x"))
        out.append(
            (
                "  wall time",
                f"{o['seconds']:.1f} s",
                f"{b['seconds']:.1f} s",
                f"{o['seconds'] / b['seconds']:.2f}x",
            )
        )
        out.append(
            (
                "  peak RSS",
                f"{o['peak_rss_mib']:.0f} MiB",
                f"{b['peak_rss_mib']:.0f} MiB",
                f"{o['peak_rss_mib'] / b['peak_rss_mib']:.2f}x",
            )
        )
        if "rss_before_mib" in o:
            out.append(
                (
                    "    worker RSS before the export",
                    f"{o['rss_before_mib']:.0f} MiB",
                    "",
                    f"export +{o['peak_rss_mib'] - o['rss_before_mib']:.0f} MiB",
                )
            )
        p = s.get("pipeline")
        if p is not None:
            out.append(
                (
                    "  opsflow pipeline alone (no Temporal, no dbt)",
                    f"{p['seconds']:.1f} s",
                    f"{b['seconds']:.1f} s",
                    f"{b['seconds'] / p['seconds']:.2f}x as fast",
                )
            )
        steps = o.get("steps", {})
        for name in sorted(steps, key=lambda k: -steps[k])[:4]:
            out.append((f"    opsflow step {name}", f"{steps[name]:.2f} s", "", ""))
    return out


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``--baseline KEY`` (child process) or the whole comparison."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_audit_export")
    parser.add_argument("--baseline", metavar="KEY", help="run only the plain pipeline")
    parser.add_argument("--pipeline", metavar="KEY", help="run only opsflow's package writer")
    parser.add_argument("--sizes", default="333334,1000000", help="cases per size (rows = 3x)")
    args = parser.parse_args(argv)
    if args.baseline or args.pipeline:
        from opsflow.config import load_settings

        if args.baseline:
            print(json.dumps(baseline(load_settings(), args.baseline)))
        else:
            print(json.dumps(pipeline(load_settings(), args.pipeline)))
        return 0
    from rich.console import Console
    from rich.table import Table

    from bench.bench_api_start import bench_stack

    sizes = [int(x) for x in args.sizes.split(",")]
    with bench_stack() as stack:
        figures = run(stack, sizes)
    table = Table(title="audit export: opsflow vs plain pipeline")
    for col in ("", "opsflow", "baseline", "ratio"):
        table.add_column(col)
    for row in rows_for_table(figures):
        table.add_row(*row)
    Console().print(table)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
