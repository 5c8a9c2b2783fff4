"""Audit export: opsflow's workflow against a plain one-process pipeline, same data, same run.

For each size (default 1 M cases + 2 M assignments, then 3 M rows more with ``--sizes``) the
app database of a private stack is filled, then:

- **baseline**: one process without Temporal or dbt — COPY → zip (deflate level 6) → AES-256-GCM
  chunks → S3 multipart upload (``python -m bench.bench_audit_export --baseline``), its peak RSS
  from ``getrusage``;
- **opsflow**: the ``audit-export-nightly`` runbook started through the API (dbt tests and
  compile included), wall time from the POST to the run's completion, the worker's peak RSS
  (``VmHWM``, worker restarted before each size so the peak is this export's).

Run alone: ``.venv/bin/python -m bench.bench_audit_export [--sizes 1000000,3000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg

from opsflow.adapters import audit_package
from opsflow.adapters.crypto import Keyring, new_key_entry
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


def baseline(settings: Settings, key: str) -> dict[str, Any]:
    """Run the plain pipeline in this process; return its figures."""
    keyring = Keyring.parse(new_key_entry("bench"))
    s3 = make_s3_client(settings)
    counters = audit_package.Counters()
    t0 = time.perf_counter()
    facts = audit_package.write_package(
        settings.target_database_url.get_secret_value(),
        s3,
        settings.s3_audit_bucket,
        key,
        keyring,
        [audit_package.ModelSql(n, q) for n, q in BASELINE_MODELS.items()],
        {},
        counters,
    )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "rows": sum(e.rows for e in facts.entries),
        "csv_bytes": sum(e.bytes for e in facts.entries),
        "ciphertext_bytes": facts.ciphertext_bytes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(stack: Any, sizes: list[int]) -> dict[str, Any]:
    """Measure both sides at each size on a running stack; return the figures."""
    settings = stack.settings
    token = stack.make_token("operator", name="bench-audit-export")
    results: list[dict[str, Any]] = []
    for i, cases in enumerate(sizes):
        rows = fill(settings.target_database_url.get_secret_value(), cases)
        env = {**os.environ, **stack.env}
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_audit_export", "--baseline", f"bench/{i}.ofae"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        base = json.loads(out.stdout.strip().splitlines()[-1])
        stack.restart_worker()  # a fresh VmHWM: the peak of this export alone
        pid = stack.worker.pid
        date = f"2026-01-{i + 1:02d}"
        t0 = time.perf_counter()
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
        seconds = time.perf_counter() - t0
        if run_.get("status") != "COMPLETED":
            raise RuntimeError(f"opsflow export failed: {run_}")
        result = run_["result"]
        ops = {
            "seconds": seconds,
            "rows": sum(result["row_counts"].values()),
            "csv_bytes": base["csv_bytes"],
            "ciphertext_bytes": result["ciphertext_bytes"],
            "peak_rss_mib": _vm_hwm_mib(pid),
        }
        results.append({"cases": cases, "rows": rows, "baseline": base, "opsflow": ops})
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
    return out


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``--baseline KEY`` (child process) or the whole comparison."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_audit_export")
    parser.add_argument("--baseline", metavar="KEY", help="run only the plain pipeline")
    parser.add_argument("--sizes", default="333334,1000000", help="cases per size (rows = 3x)")
    args = parser.parse_args(argv)
    if args.baseline:
        from opsflow.config import load_settings

        print(json.dumps(baseline(load_settings(), args.baseline)))
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
