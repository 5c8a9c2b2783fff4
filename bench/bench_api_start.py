"""Start latency through the opsflow API against a direct Temporal client start.

Both sides start the same kind of workflow, a ``dev-role-elevation`` run, with the same input,
task queue, id policies, search attributes, memo and static summary/details:

- **opsflow API**: ``POST /runbooks/dev-role-elevation/runs`` over one kept-alive HTTP
  connection, as an admin token. This pays for HTTP, the token lookup, validation, the Temporal
  start, the ``runs`` read-model row and the hash-chained audit event.
- **direct client**: ``client.start_workflow(DevRoleElevation.run, ...)`` from this process,
  the API not involved: the floor any API on top of Temporal starts from.

Every start must create a new workflow (a business-key duplicate would be answered without a
start), so each uses its own ``environment`` (``bench-ba-000123``, ``bench-bd-000123``): one
workflow id per environment, by the catalog's rule. Starts are sequential, one at a time,
client-side wall time from request to answer. API and direct starts alternate, with the order
inside each pair swapped every pair, so the background work the started runs cause on the
worker (record, grant, notify activities) and any drift of the machine land on both sides
alike. A warm-up of a few starts per side is not counted.

Two phases: ``busy`` (the worker executes every started run, as in use; on two cores that work
competes with the starts) and ``quiet`` (worker stopped: the start path alone). At the end of
each phase every started run is terminated (not cancelled: no revoke activities), so the
stack stops at once.

:func:`bench_stack` brings up a private stack for it: free ports, a temporary state folder and
a fresh pair of databases (dropped at the end).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from opsflow.api.actions import SA_ACTOR, SA_RUNBOOK, SA_STATE, SA_TENANT
from opsflow.api.runbook_io import input_markdown, to_json
from opsflow.catalog import RUNBOOKS, RunbookSpec
from opsflow.db import SERVICE_ROLE
from opsflow.dev.ports import DevPorts
from opsflow.dev.postgres import DEFAULT_SERVER_URL, with_database, with_user
from opsflow.dev.stack import Stack, StackOptions, clean_environ
from opsflow.shared import ids
from opsflow.shared.dev_role_elevation import DevRoleElevationInput

RUNBOOK = "dev-role-elevation"
TOKEN_NAME = "bench"
REASON = "opsflow bench: start latency"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class BenchDatabases:
    """The unique database names a bench stack uses on the server."""

    server_admin_url: str
    opsflow_db: str
    app_db: str

    def environ(self) -> dict[str, str]:
        """Settings that make the stack create, migrate and use these databases."""
        server = self.server_admin_url
        return {
            "DATABASE_URL": with_database(with_user(server, SERVICE_ROLE), self.opsflow_db),
            "DATABASE_ADMIN_URL": with_database(server, self.opsflow_db),
            "TARGET_DATABASE_URL": with_database(server, self.app_db),
        }

    def drop(self) -> None:
        """Drop both databases (closing any connection left open)."""
        with psycopg.connect(self.server_admin_url, autocommit=True) as conn:
            for name in (self.opsflow_db, self.app_db):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def bench_server_url() -> str:
    """The PostgreSQL server the benchmarks use (``OPSFLOW_BENCH_PG_URL`` or the local one)."""
    return os.environ.get("OPSFLOW_BENCH_PG_URL") or DEFAULT_SERVER_URL


@contextmanager
def bench_stack(
    keep_state: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    """Run a private opsflow stack for the duration of a ``with`` block.

    Free ports, a temporary state folder and fresh databases with unique names (created and
    migrated by the stack itself, dropped afterwards), so it never touches a running
    ``make dev`` and several benches or test sessions can share the machine. No schedules: a
    health check firing mid-measure would add noise.

    Args:
        keep_state: Keep the state folder (logs) instead of removing it.
        settings: Settings for the stack's processes (``WORKER_MAX_CACHED_WORKFLOWS``...),
            over the stack's own.

    """
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    dbs = BenchDatabases(
        server_admin_url=bench_server_url(),
        opsflow_db=f"opsflow_bench_{suffix}",
        app_db=f"app_bench_{suffix}",
    )
    state = Path(tempfile.mkdtemp(prefix="opsflow-bench-"))
    stack = Stack(
        StackOptions(
            state_dir=state / "state",
            ports=DevPorts.free(),
            environ={**clean_environ(), **dbs.environ()},
            sync_schedules=False,
            admin_token=False,
            cwd=REPO_ROOT,
            extra_env=dict(settings or {}),
        )
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        # A private cluster (PostgreSQL unreachable) lives in the state folder and goes with it.
        if stack.database is not None and not stack.database.private:
            dbs.drop()
        if keep_state:
            print(f"bench: stack state and logs kept in {state}", flush=True)
        else:
            shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class LatencyStats:
    """Latency figures of one side, in milliseconds."""

    n: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        """Summarise samples given in seconds (linear interpolation between ranks)."""
        ms = sorted(s * 1000.0 for s in seconds)
        # "inclusive" treats the samples as the whole population: p99 of 500 samples lies
        # between the 5th and 6th slowest, not beyond the slowest.
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(
            n=len(ms),
            mean_ms=round(statistics.fmean(ms), 3),
            p50_ms=round(cuts[49], 3),
            p95_ms=round(cuts[94], 3),
            p99_ms=round(cuts[98], 3),
            min_ms=round(ms[0], 3),
            max_ms=round(ms[-1], 3),
        )


@dataclass(frozen=True)
class PhaseFigures:
    """Both sides' latency under one condition of the machine."""

    name: str
    description: str
    api: LatencyStats
    direct: LatencyStats
    seconds: float
    terminated: int

    def overhead_ms(self, field: str) -> float:
        """API minus direct for one of the :class:`LatencyStats` fields (``p50_ms``...)."""
        return round(float(getattr(self.api, field)) - float(getattr(self.direct, field)), 3)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report."""
        out = asdict(self)
        out["overhead_ms"] = {
            f: self.overhead_ms(f) for f in ("mean_ms", "p50_ms", "p95_ms", "p99_ms")
        }
        return out


@dataclass(frozen=True)
class ApiStartFigures:
    """The result of :func:`run`: one :class:`PhaseFigures` per condition."""

    starts: int
    warmup: int
    runbook: str
    phases: list[PhaseFigures]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report."""
        return {
            "starts": self.starts,
            "warmup": self.warmup,
            "runbook": self.runbook,
            "phases": {p.name: p.as_dict() for p in self.phases},
        }


# --------------------------------------------------------------------------- the two sides


class DirectStarter:
    """Starts a runbook's workflow with the very call the API makes, minus the API."""

    def __init__(self, client: Client, spec: RunbookSpec, task_queue: str, actor: str) -> None:
        """Bind the client, the runbook and the actor the API would record."""
        self.client = client
        self.spec = spec
        self.task_queue = task_queue
        self.actor = actor

    async def start(self, inp: Any) -> tuple[str, str]:
        """Start one run; return (workflow id, run id)."""
        spec, actor = self.spec, self.actor
        # Same id, policies, search attributes, memo and static summary/details as
        # opsflow.api.actions.start_run, so the Temporal side does the same work.
        data = to_json(spec.input, inp)
        workflow_id = spec.workflow_id(inp)
        handle = await self.client.start_workflow(
            spec.workflow.run,
            inp,
            id=workflow_id,
            task_queue=self.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_RUNBOOK, spec.name),
                    SearchAttributePair(SA_ACTOR, actor),
                    SearchAttributePair(SA_TENANT, spec.tenant(inp)),
                    SearchAttributePair(SA_STATE, "started"),
                ]
            ),
            memo={ids.MEMO_ACTOR: actor, ids.MEMO_RUNBOOK: spec.name},
            static_summary=spec.summary(inp)[:400],
            static_details=input_markdown(spec.name, actor, data),
            execution_timeout=spec.execution_timeout,
        )
        return workflow_id, handle.first_execution_run_id or handle.result_run_id or ""


class ApiStarter:
    """Starts a runbook through ``POST /runbooks/{name}/runs``."""

    def __init__(self, http: httpx.AsyncClient, spec: RunbookSpec) -> None:
        """Bind the HTTP client (base URL and bearer token set) and the runbook."""
        self.http = http
        self.spec = spec

    async def start(self, inp: Any) -> tuple[str, str]:
        """Start one run; return (workflow id, run id).

        Raises:
            RuntimeError: The API did not answer 201 (a new run).

        """
        resp = await self.http.post(
            f"/runbooks/{self.spec.name}/runs", json=to_json(self.spec.input, inp)
        )
        if resp.status_code != 201:
            raise RuntimeError(f"API start answered {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        return str(body["id"]), str(body["run_id"])


def _input(phase: str, side: str, i: int) -> DevRoleElevationInput:
    # A new environment per start (bench-ba-000001: busy phase, API side): a new workflow id,
    # so every start is a real start.
    return DevRoleElevationInput(
        reason=REASON, hours=1, environment=f"bench-{phase[0]}{side}-{i:06d}"
    )


async def _timed(starter: ApiStarter | DirectStarter, inp: Any) -> tuple[float, tuple[str, str]]:
    t0 = time.perf_counter()
    started = await starter.start(inp)
    return time.perf_counter() - t0, started


async def _measure(
    stack: Stack, token: str, phase: str, starts: int, warmup: int
) -> tuple[list[float], list[float], float, int]:
    assert stack.settings is not None
    settings = stack.settings
    spec = RUNBOOKS[RUNBOOK]
    client = await Client.connect(stack.temporal_address, namespace=settings.temporal_namespace)
    direct = DirectStarter(
        client, spec, settings.temporal_task_queue, actor=f"token:{TOKEN_NAME}:admin"
    )
    progress_every = max(50, starts // 5)
    api_times: list[float] = []
    direct_times: list[float] = []
    started: list[tuple[str, str]] = []
    try:
        async with httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60.0,
        ) as http:
            api = ApiStarter(http, spec)
            t0 = time.perf_counter()
            for i in range(warmup + starts):
                # Swap who goes first every pair: neither side always follows the other's start.
                order: list[tuple[str, ApiStarter | DirectStarter, list[float]]] = [
                    ("a", api, api_times),
                    ("d", direct, direct_times),
                ]
                if i % 2:
                    order.reverse()
                for side, starter, times in order:
                    elapsed, ids_ = await _timed(starter, _input(phase, side, i))
                    started.append(ids_)
                    if i >= warmup:
                        times.append(elapsed)
                done = i + 1 - warmup
                if done > 0 and (done % progress_every == 0 or done == starts):
                    print(
                        f"bench [{phase}]: {done}/{starts} starts per side "
                        f"(API p50 so far {statistics.median(api_times) * 1000:.1f} ms, "
                        f"direct {statistics.median(direct_times) * 1000:.1f} ms)",
                        flush=True,
                    )
            seconds = time.perf_counter() - t0
    finally:
        # Also after a failed start: the runs started so far must not keep the worker busy.
        terminated = await _terminate(client, started)
        print(
            f"bench [{phase}]: terminated {terminated} of {len(started)} started runs", flush=True
        )
    return api_times, direct_times, seconds, terminated


async def _terminate(client: Client, started: list[tuple[str, str]]) -> int:
    # Runs wait an hour on their timer; terminating them (not cancelling, which would run the
    # revoke activities) lets the worker stop at once.
    gate = asyncio.Semaphore(16)
    done = 0

    async def one(workflow_id: str, run_id: str) -> None:
        nonlocal done
        async with gate:
            try:
                await client.get_workflow_handle(workflow_id, run_id=run_id or None).terminate(
                    reason="opsflow bench finished"
                )
                done += 1
            except Exception as exc:  # already closed: nothing to stop
                print(f"bench: could not terminate {workflow_id}: {exc}", flush=True)

    await asyncio.gather(*(one(w, r) for w, r in started))
    return done


PHASES = {
    "busy": "worker running each started run (workflow and activities compete for the CPUs)",
    "quiet": "worker stopped: the start path alone (runs wait in the task queue)",
}


def run(stack: Stack, starts: int = 500, warmup: int = 20) -> ApiStartFigures:
    """Measure ``starts`` sequential starts per side on a running stack, in two phases.

    ``busy`` first, with the worker executing every started run as it would in use, then
    ``quiet``, with the worker stopped, so the start path is measured without the work the
    runs cause (on two cores that work changes the figures several-fold). Each phase's runs
    are terminated at its end. The worker is left stopped.

    Args:
        stack: A started stack with worker and API.
        starts: Counted starts per side and phase.
        warmup: Uncounted starts per side first in each phase (connections, caches).

    Returns:
        The latency figures of both sides in both phases.

    """
    # Made before an event loop runs: make_token runs a loop of its own.
    token = stack.make_token("admin", name=TOKEN_NAME)
    phases: list[PhaseFigures] = []
    for name, description in PHASES.items():
        if name == "quiet" and stack.worker is not None:
            stack.worker.stop()
        api_times, direct_times, seconds, terminated = asyncio.run(
            _measure(stack, token, name, starts, warmup)
        )
        phases.append(
            PhaseFigures(
                name=name,
                description=description,
                api=LatencyStats.of(api_times),
                direct=LatencyStats.of(direct_times),
                seconds=round(seconds, 2),
                terminated=terminated,
            )
        )
    return ApiStartFigures(starts=starts, warmup=warmup, runbook=RUNBOOK, phases=phases)
