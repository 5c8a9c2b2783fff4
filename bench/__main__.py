"""``python -m bench`` (``make bench``): every figure beside its baseline, in one run.

1. Brings up a private stack (free ports, temporary state, fresh databases; see
   :func:`bench.bench_api_start.bench_stack`) and measures the API's start overhead against a
   direct Temporal client start.
2. With the worker and API stopped (a quiet machine), seeds a scratch app database with
   ``opsflow seed`` and measures rows/s against the goal of 1 million requests in 120 s.
3. Prints one table and writes the figures as JSON (``.opsflow/bench/`` or ``--json-out``).

Ends with ``os._exit``: a process that used a Temporal client can abort at interpreter exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import bench_api_start, bench_audit_export, bench_seed, bench_sla
from opsflow.config import state_dir

GOAL_REQUESTS = 1_000_000
GOAL_SECONDS = 120.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="opsflow benchmarks, each beside its baseline."
    )
    parser.add_argument(
        "--starts", type=int, default=500, help="counted starts per side (default 500)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="uncounted starts per side first (default 20)"
    )
    parser.add_argument(
        "--seed-requests",
        type=int,
        default=1_000_000,
        help="service requests for the seed bench (default 1000000, the goal itself)",
    )
    parser.add_argument("--skip-api", action="store_true", help="skip the API start bench")
    parser.add_argument("--skip-seed", action="store_true", help="skip the seed bench")
    parser.add_argument(
        "--audit-export-sizes",
        default="333334,1000000",
        help="cases per audit export size, each with 2x assignments (default: 1 M, 3 M rows)",
    )
    parser.add_argument(
        "--skip-audit-export", action="store_true", help="skip the audit export bench"
    )
    parser.add_argument(
        "--sla-requests", type=int, default=10_000, help="open requests per side (default 10000)"
    )
    parser.add_argument(
        "--sla-sample", type=int, default=500, help="escalations per side (default 500)"
    )
    parser.add_argument("--skip-sla", action="store_true", help="skip the SLA bench")
    parser.add_argument("--json-out", type=Path, help="JSON report path (default .opsflow/bench/)")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the bench stack's state folder and logs"
    )
    args = parser.parse_args(argv)
    if args.starts < 100:
        parser.error("--starts must be at least 100 (p99 needs the samples)")
    if args.warmup < 0 or args.seed_requests < 1:
        parser.error("--warmup must be >= 0 and --seed-requests >= 1")
    return args


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=bench_api_start.REPO_ROOT,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _environment() -> dict[str, Any]:
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "machine": platform.machine(),
    }


def _seed_figures(out: dict[str, Any]) -> dict[str, Any]:
    """Add the goal's rates (1M requests in 120 s) and the margin to the seed figures."""
    goal_rps = GOAL_REQUESTS / GOAL_SECONDS
    rows_per_request = out["rows"] / out["requests"] if out["requests"] else 0.0
    goal_rows_ps = goal_rps * rows_per_request
    rps = float(out["requests_per_second"])
    return {
        **out,
        "goal": f"{GOAL_REQUESTS:,} requests in {GOAL_SECONDS:.0f} s",
        "goal_requests_per_second": round(goal_rps),
        # The goal is in requests; in rows it is the same rate times this run's rows per request.
        "goal_rows_per_second": round(goal_rows_ps),
        "projected_seconds_1m": round(GOAL_REQUESTS / rps, 1) if rps else None,
        "times_goal": round(rps / goal_rps, 2) if goal_rps else None,
    }


def _ms(v: float) -> str:
    return f"{v:.2f} ms"


def _delta(api: float, direct: float) -> str:
    diff = api - direct
    pct = f" ({diff / direct * 100:+.0f} %)" if direct else ""
    return f"{diff:+.2f} ms{pct}"


def _api_rows(table: Table, api: dict[str, Any]) -> None:
    for name, phase in api["phases"].items():
        a, d = phase["api"], phase["direct"]
        table.add_row(
            f"[bold]start, worker {name}[/]", "[bold]API[/]", "[bold]direct[/]", "[bold]overhead[/]"
        )
        for label, key in (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"),
                           ("mean", "mean_ms")):  # fmt: skip
            table.add_row(f"  {label}", _ms(a[key]), _ms(d[key]), _delta(a[key], d[key]))
        table.add_row(
            "  starts/s, one at a time",
            f"{1000 / a['mean_ms']:.0f}",
            f"{1000 / d['mean_ms']:.0f}",
            f"{a['mean_ms'] / d['mean_ms']:.2f}x the time",
        )
        table.add_section()


def _seed_rows(table: Table, seed: dict[str, Any]) -> None:
    table.add_row("[bold]opsflow seed[/]", "[bold]measured[/]", "[bold]goal[/]", "[bold]vs goal[/]")
    table.add_row(
        "  rows/s",
        f"{seed['rows_per_second']:,}",
        f"{seed['goal_rows_per_second']:,}",
        f"{seed['times_goal']:.1f}x the goal",
    )
    table.add_row(
        "  requests/s",
        f"{seed['requests_per_second']:,}",
        f"{seed['goal_requests_per_second']:,}",
        f"{seed['times_goal']:.1f}x the goal",
    )
    table.add_row(
        f"  {seed['requests']:,} requests",
        f"{seed['seconds']:.1f} s",
        f"{seed['baseline_seconds']:.1f} s",
        "within" if seed["seconds"] <= seed["baseline_seconds"] else "[red]over[/]",
    )
    if seed["requests"] != GOAL_REQUESTS and seed["projected_seconds_1m"] is not None:
        table.add_row(
            "  1,000,000 (projected)",
            f"{seed['projected_seconds_1m']:.1f} s",
            f"{GOAL_SECONDS:.1f} s",
            "linear projection",
        )


def render(report: dict[str, Any], console: Console) -> None:
    """Print the one table of figures beside their baselines, and what they mean."""
    table = Table(title="opsflow bench", title_justify="left")
    table.add_column("measure")
    table.add_column("opsflow", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("vs baseline", justify="right")
    api, seed = report.get("api_start"), report.get("seed")
    if "stack" in report:
        table.add_row("bench stack", "[red]failed[/]", "", report["stack"]["error"][:40])
        table.add_section()
    if api is not None:
        if "error" in api:
            table.add_row("API start", "[red]failed[/]", "", api["error"][:40])
            table.add_section()
        else:
            _api_rows(table, api)
    if seed is not None:
        if "error" in seed:
            table.add_row("opsflow seed", "[red]failed[/]", "", seed["error"][:40])
        else:
            _seed_rows(table, seed)
    audit_export = report.get("audit_export")
    if audit_export is not None:
        table.add_section()
        if "error" in audit_export:
            table.add_row("audit export", "[red]failed[/]", "", audit_export["error"][:40])
        else:
            for row in bench_audit_export.rows_for_table(audit_export):
                table.add_row(*row)
    sla = report.get("sla")
    if sla is not None:
        table.add_section()
        if "error" in sla:
            table.add_row("SLA", "[red]failed[/]", "", sla["error"][:40])
        else:
            for row in bench_sla.rows_for_table(sla):
                table.add_row(*row)
    console.print(table)
    notes: list[str] = []
    if api is not None and "error" not in api:
        notes.append(
            f"start: {api['starts']} sequential starts per side and phase "
            f"({api['warmup']} warm-up starts not counted), API and direct alternating; "
            "client-side wall time per start of a new `dev-role-elevation` run. "
            "API = POST /runbooks/dev-role-elevation/runs (HTTP, token check, validation, "
            "Temporal start, runs row, audit event); direct = the same start_workflow call "
            "from the bench process."
        )
        notes += [f"{p['name']}: {p['description']}." for p in api["phases"].values()]
    if seed is not None and "error" not in seed:
        notes.append(
            f"seed: {seed['requests']:,} requests, {seed['rows']:,} rows in all tables; goal "
            f"{seed['goal']} (rows/s goal = that rate x this run's rows per request)."
        )
    for note in notes:
        console.print(note, style="dim")


def _json_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    return state_dir() / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return the exit status (1 when a part failed)."""
    args = _parse(argv)
    # Stopped from outside (``timeout``, a CI limit): clean up as after Ctrl-C, so the private
    # stack's server, worker and API stop and its databases are dropped instead of left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console()
    report: dict[str, Any] = {"environment": _environment()}
    status = 0

    def seed_part(server_url: str | None) -> None:
        nonlocal status
        console.print(f"bench: seeding {args.seed_requests:,} requests ...")
        try:
            report["seed"] = _seed_figures(
                bench_seed.run(args.seed_requests, server_url=server_url)
            )
        except Exception as exc:
            traceback.print_exc()
            report["seed"] = {"error": f"{type(exc).__name__}: {exc}"}
            status = 1

    needs_stack = not (args.skip_api and args.skip_audit_export and args.skip_sla)
    if needs_stack:
        console.print("bench: starting a private stack (free ports, fresh databases) ...")
        try:
            settings = {}
            if not args.skip_sla:
                cache = bench_sla.worker_cache_for(args.sla_requests)
                settings["WORKER_MAX_CACHED_WORKFLOWS"] = str(cache)
            with bench_api_start.bench_stack(
                keep_state=args.keep_state, settings=settings
            ) as stack:
                if not args.skip_api:
                    console.print(
                        f"bench: {args.warmup} warm-up + {args.starts} starts per side, alternating"
                    )
                    report["api_start"] = bench_api_start.run(
                        stack, starts=args.starts, warmup=args.warmup
                    ).as_dict()
                if not args.skip_audit_export:
                    sizes = [int(x) for x in args.audit_export_sizes.split(",")]
                    console.print(f"bench: audit export, opsflow vs plain pipeline, {sizes}")
                    try:
                        report["audit_export"] = bench_audit_export.run(stack, sizes)
                    except Exception as exc:
                        traceback.print_exc()
                        report["audit_export"] = {"error": f"{type(exc).__name__}: {exc}"}
                        status = 1
                if not args.skip_sla:
                    console.print(
                        f"bench: SLA, {args.sla_requests:,} requests per side, "
                        f"{args.sla_sample} escalations per side"
                    )
                    try:
                        report["sla"] = bench_sla.run(stack, args.sla_requests, args.sla_sample)
                    except Exception as exc:
                        traceback.print_exc()
                        report["sla"] = {"error": f"{type(exc).__name__}: {exc}"}
                        status = 1
                if not args.skip_seed:
                    # Quiet the machine for the seed; its scratch database goes on the stack's
                    # server (a private cluster when the default one is unreachable).
                    for proc in (stack.worker, stack.api):
                        if proc is not None:
                            proc.stop()
                    assert stack.database is not None
                    seed_part(stack.database.server_admin_url)
        except Exception as exc:
            traceback.print_exc()
            report.setdefault("stack", {"error": f"{type(exc).__name__}: {exc}"})
            status = 1
    elif not args.skip_seed:
        seed_part(None)

    render(report, console)
    path = _json_path(args.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"figures written to {path}")
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: the Temporal client can abort it (exit 134).
    os._exit(code)
