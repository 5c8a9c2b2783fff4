"""SLA workflows at scale: arm N open requests, then escalate a sample, beside a bare client.

On a private stack (see :func:`bench.bench_api_start.bench_stack`):

1. Seeds two organisations of N open, assigned requests each (due times spread over the next
   1 to 5 days, a department with two supervisors): one for opsflow, one for the baseline.
   The bench then waits for the worker's one-time dbt warm-up (see
   :func:`bench.bench_worker.wait_dbt_warm`).
2. **Arm**: opsflow's ``sla-reconciler`` (started over the API, scoped to its organisation)
   starts the N ``sla-escalation`` workflows; the baseline starts the same workflows with a
   bare Temporal client, 20 at a time. Each side: time until every start was accepted, and
   until every workflow has written its read-model row (armed). Worker and server resident
   memory afterwards.
3. **Escalate**: a random sample of requests of each side is escalated, 20 in flight, then
   one at a time: opsflow through ``POST /sla/requests/{id}/escalate`` (sent with aiohttp,
   lighter than httpx on the two cores the system shares), the baseline with a bare
   ``handle.signal("escalate")``. At 20 in flight each side starts once the server and the
   worker are quiet (:func:`_wait_quiet`); one at a time the two sides take turns. An
   escalation is in flight until its mail is in the
   sink (each of 20 senders waits for its mail before the next call). Latency from the call
   to the mail in the SMTP sink (the sink names each file with its receive time), and the
   call's own latency (the API's overhead on a signal).
4. **Restart**: the worker is stopped gracefully, 100 escalations are sent through the API,
   the worker starts again: time from its start until the 100th mail is in the sink.
5. **Server floor**: what the dev server alone costs per start, for scale. The bench process
   runs a worker of an empty workflow (one timer, nothing else) and starts ``FLOOR_STARTS``
   of them with a bare client, 20 at a time: starts per second until each has had its first
   workflow task, and the server's CPU seconds per start (``/proc``), beside the server's CPU
   per workflow while each side armed.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psycopg
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from bench.bench_worker import ensure_worker, wait_dbt_warm, worker_log_size
from opsflow.activities.sla_escalation import signal_with_start
from opsflow.dev.stack import Stack
from opsflow.shared import ids
from opsflow.shared.sla_escalation import EscalateSignal

CONCURRENCY = 20
FLOOR_STARTS = 2_000


def worker_cache_for(n: int) -> int:
    """The worker cache the SLA bench runs with: every workflow it arms, both sides.

    A deployment sizes ``WORKER_MAX_CACHED_WORKFLOWS`` to its open requests (the default,
    10,000, is the issue's scale); the bench arms N for opsflow and N more for the baseline
    on the same worker. A cache for N only would hold the side armed last, and the other
    side's escalations would pay for the replay of every workflow they reach.
    """
    return 2 * n + 500


_FLOOR_SEEN: set[str] = set()


@workflow.defn(name="bench-empty-timer", sandboxed=False)
class EmptyTimer:
    """The least a workflow can be: started, one timer. The server-floor reference."""

    @workflow.run
    async def run(self) -> None:
        """Note the first task (bench bookkeeping, in this process), then sleep on a timer."""
        if not workflow.unsafe.is_replaying():
            _FLOOR_SEEN.add(workflow.info().workflow_id)
        await workflow.sleep(timedelta(days=7))


def _cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_quiet(stack: Stack, busy: float = 0.1, limit: float = 30) -> float:
    """Wait until the server and the worker use less than ``busy`` of a core over a second.

    Each side's escalations start on a quiet system: what the arming or the other side left
    behind (timers, visibility, the worker's tail) would land in the figures of whichever
    side went first. Returns the seconds waited (at most ``limit``).
    """
    pids = [p.pid for p in (stack.temporal, stack.worker) if p is not None]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = sum(_cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(1.0)
        if sum(_cpu_seconds(pid) for pid in pids) - before < busy:
            break
    return time.monotonic() - t0


async def _server_floor(stack: Stack, client: Client, n: int) -> dict[str, float]:
    """Start ``n`` empty workflows with a bare client; starts/s and server CPU ms per start."""
    queue = "bench-floor"
    pid = stack.temporal.pid if stack.temporal else None
    gate = asyncio.Semaphore(CONCURRENCY)

    async def start(i: int) -> None:
        async with gate:
            await client.start_workflow(EmptyTimer.run, id=f"bench-floor-{i}", task_queue=queue)

    async with Worker(
        client,
        task_queue=queue,
        workflows=[EmptyTimer],
        max_concurrent_workflow_task_polls=20,
        nonsticky_to_sticky_poll_ratio=0.5,
    ):
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(start(i) for i in range(n)))
        while len(_FLOOR_SEEN) < n and time.monotonic() - t0 < 600:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - t0
        cpu = _cpu_seconds(pid) - cpu0
    return {
        "starts": n,
        "per_second": round(n / seconds, 1),
        "server_cpu_ms_per_start": round(cpu / n * 1000, 1),
    }


@dataclass
class Side:
    """One side's figures."""

    org: int = 0
    dept_code: str = ""
    request_ids: list[int] = field(default_factory=list)
    start_seconds: float = 0.0
    armed_seconds: float = 0.0
    call_ms: dict[str, list[float]] = field(default_factory=dict)
    mail_ms: dict[str, list[float]] = field(default_factory=dict)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_pct(values, 50), 1),
        "p95_ms": round(_pct(values, 95), 1),
        "p99_ms": round(_pct(values, 99), 1),
        "mean_ms": round(statistics.fmean(values), 1) if values else float("nan"),
    }


def _seed(app_url: str, tag: str, n: int) -> Side:
    """N open, assigned requests with due times spread over the next 1 to 5 days."""
    now = datetime.now(UTC)
    rng = random.Random(tag)
    with psycopg.connect(app_url) as conn:
        org = conn.execute(
            "INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id",
            (f"bench-{tag}", f"Bench {tag}"),
        ).fetchone()
        assert org is not None
        code = f"B{tag.upper()}"
        dept = conn.execute(
            """INSERT INTO departments (organization_id, code, name, supervisor_email)
               VALUES (%s, %s, 'Bench', %s) RETURNING id""",
            (org[0], code, f"bench-{tag}@example.com"),
        ).fetchone()
        assert dept is not None
        for i in range(2):
            conn.execute(
                """INSERT INTO users (organization_id, department_id, username, email,
                       full_name, phone, role)
                   VALUES (%s, %s, %s, %s, 'Sup', %s, 'supervisor')""",
                (org[0], dept[0], f"sup{i}-{tag}", f"sup{i}-{tag}@example.com", f"+1555{i}"),
            )
        with conn.cursor().copy(
            """COPY service_requests (organization_id, department_id, reference, title, status,
                   priority, sla_due_at) FROM STDIN"""
        ) as copy:
            for i in range(n):
                due = now + timedelta(days=1) + timedelta(seconds=rng.uniform(0, 4 * 86400))
                copy.write_row(
                    (org[0], dept[0], f"B-{tag}-{i}", "bench", "assigned", "normal", due)
                )
        rows = conn.execute(
            "SELECT id FROM service_requests WHERE organization_id = %s ORDER BY id", (org[0],)
        ).fetchall()
    return Side(org=int(org[0]), dept_code=code, request_ids=[int(r[0]) for r in rows])


def _armed(ops_url: str, ids_: list[int]) -> int:
    with psycopg.connect(ops_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sla_watchlist WHERE request_id = ANY(%s)", (ids_,)
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_armed(ops_url: str, ids_: list[int], t0: float, timeout: float) -> float:
    while True:
        if _armed(ops_url, ids_) >= len(ids_):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {_armed(ops_url, ids_)}/{len(ids_)} armed")
        time.sleep(0.5)


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    total = 0
    # The process and its children (the dev server runs as one process; the worker too).
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return round(total / 1024, 1)


def _escalated_rid(path: Path) -> tuple[int, float] | None:
    """(request id, receive time) of an escalation mail file, else None.

    The sink names each file with its receive time (``YYYYmmddTHHMMSSffffffZ-...``).
    """
    stamp = path.name.split("-", 1)[0]
    at = datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC).timestamp()
    # compat32: the default policy's structured headers cost the bench (on the two cores the
    # system shares) more CPU than the sink's storing of the mail. The subject is ASCII; a
    # folded one is unfolded by joining its words.
    with path.open("rb") as fh:
        subject = " ".join(str(BytesHeaderParser().parse(fh)["Subject"]).split())
    if "ESCALATED: request " not in subject:
        return None
    return int(subject.split("ESCALATED: request ", 1)[1].split()[0]), at


class MailWatch:
    """Escalation mails as the sink stores them (its listener; no polling of the folder)."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: dict[int, float] = {}
        self._waiters: dict[int, asyncio.Future[float]] = {}
        assert stack.mail_sink is not None
        stack.mail_sink.listen(self._stored)

    def _stored(self, path: Path) -> None:  # the sink's thread
        found = _escalated_rid(path)
        if found is not None:
            self.loop.call_soon_threadsafe(self._arrived, *found)

    def _arrived(self, rid: int, at: float) -> None:
        self.times.setdefault(rid, at)
        waiter = self._waiters.pop(rid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(at)

    async def wait(self, rid: int, seconds: float = 60) -> float | None:
        """Receive time of ``rid``'s escalation mail, or None after ``seconds``."""
        if rid in self.times:
            return self.times[rid]
        waiter = self._waiters.setdefault(rid, self.loop.create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), seconds)
        except TimeoutError:
            return None

    async def wait_all(self, rids: list[int], seconds: float = 120) -> dict[int, float]:
        """Receive times of those of ``rids`` whose mail arrived within ``seconds``."""
        deadline = time.monotonic() + seconds
        for rid in rids:
            await self.wait(rid, max(0.0, deadline - time.monotonic()))
        return {r: self.times[r] for r in rids if r in self.times}


async def _escalate_all(
    send: Any, rids: list[int], in_flight: int, mails: MailWatch, sent_at: dict[int, float]
) -> list[float]:
    """Send escalations with ``in_flight`` outstanding at any time; return each call's ms.

    An escalation is in flight from the call until its mail is in the sink: each of the
    ``in_flight`` senders sends, waits for that mail, then sends the next (a closed loop, so
    the figure is the latency at that concurrency, not the length of a queue the bench
    piled up). ``in_flight=1`` is one at a time.
    """
    calls: list[float] = []
    pending = list(rids)

    async def sender() -> None:
        while pending:
            rid = pending.pop(0)
            sent_at[rid] = time.time()
            t = time.perf_counter()
            await send(rid)
            calls.append((time.perf_counter() - t) * 1000)
            await mails.wait(rid)

    await asyncio.gather(*(sender() for _ in range(in_flight)))
    return calls


async def _run(
    stack: Stack, n: int, sample: int, tokens: dict[str, str], log_offset: int
) -> dict[str, Any]:
    assert stack.database is not None and stack.settings is not None
    app_url = stack.database.target_database_url
    ops_url = stack.database.database_admin_url
    mails = MailWatch(stack, asyncio.get_running_loop())
    report: dict[str, Any] = {
        "requests_per_side": n,
        "sample_per_side": sample,
        "worker_cache": stack.settings.worker_max_cached_workflows,
    }
    report["dbt_warm_up_wait_s"] = round(await wait_dbt_warm(stack, log_offset), 1)
    ops, base = _seed(app_url, "ops", n), _seed(app_url, "base", n)
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    sup = {"Authorization": f"Bearer {tokens['supervisor']}"}
    client = await Client.connect(
        stack.temporal_address, namespace=stack.settings.temporal_namespace
    )
    queue = stack.settings.temporal_task_queue

    async with httpx.AsyncClient(base_url=stack.api_url, timeout=600) as api:
        # ---- arm: opsflow's reconciler
        server_pid = stack.temporal.pid if stack.temporal else None
        worker_pid = stack.worker.pid if stack.worker else None
        await _wait_quiet(stack)  # the seeding's and the warm-up's tail stays out of it
        cpu0 = _cpu_seconds(server_pid), _cpu_seconds(worker_pid)
        t0 = time.monotonic()
        r = await api.post(
            "/runbooks/sla-reconciler/runs",
            headers=admin,
            json={"organization_id": ops.org, "concurrency": CONCURRENCY},
        )
        r.raise_for_status()
        wid = r.json()["id"]
        # Polling the API, as a client would; the run's end is not pushed anywhere.
        while (await api.get(f"/runs/{wid}", headers=admin)).json()["status"] == "RUNNING":  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        ops.start_seconds = time.monotonic() - t0
        ops.armed_seconds = await asyncio.to_thread(_wait_armed, ops_url, ops.request_ids, t0, 1800)
        # Each side's CPU includes its own tail (visibility and timer tasks the server
        # finishes after the last start), and not the other side's.
        await _wait_quiet(stack)
        ops_cpu = _cpu_seconds(server_pid) - cpu0[0], _cpu_seconds(worker_pid) - cpu0[1]
        # ---- arm: baseline, bare client starts of the same workflows
        cpu0 = _cpu_seconds(server_pid), _cpu_seconds(worker_pid)
        t0 = time.monotonic()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def start(rid: int) -> None:
            async with gate:
                due = (datetime.now(UTC) + timedelta(days=2)).isoformat()
                await signal_with_start(
                    client, queue, rid, due, base.dept_code, "bench", signal=False
                )

        await asyncio.gather(*(start(rid) for rid in base.request_ids))
        base.start_seconds = time.monotonic() - t0
        base.armed_seconds = await asyncio.to_thread(
            _wait_armed, ops_url, base.request_ids, t0, 1800
        )
        await _wait_quiet(stack)
        base_cpu = _cpu_seconds(server_pid) - cpu0[0], _cpu_seconds(worker_pid) - cpu0[1]
        report["arm"] = {
            "opsflow": {
                "starts_accepted_s": round(ops.start_seconds, 1),
                "armed_s": round(ops.armed_seconds, 1),
            },
            "baseline": {
                "starts_accepted_s": round(base.start_seconds, 1),
                "armed_s": round(base.armed_seconds, 1),
            },
            "ratio_armed": round(ops.armed_seconds / base.armed_seconds, 2),
            "server_cpu_ms_per_workflow": {
                "opsflow": round(ops_cpu[0] / n * 1000, 1),
                "baseline": round(base_cpu[0] / n * 1000, 1),
            },
            "worker_cpu_ms_per_workflow": {
                "opsflow": round(ops_cpu[1] / n * 1000, 1),
                "baseline": round(base_cpu[1] / n * 1000, 1),
            },
        }
        report["memory_mb"] = {
            "worker_rss": _rss_mb(stack.worker.pid if stack.worker else None),
            "temporal_rss": _rss_mb(stack.temporal.pid if stack.temporal else None),
        }

        # ---- escalate
        rng = random.Random(7)
        ops_sample = rng.sample(ops.request_ids, sample)
        base_sample = rng.sample(base.request_ids, sample)
        half = sample // 2

        # The escalations go out through aiohttp: httpx cost the bench about 2 ms more CPU
        # per request, on the same two cores as the system measured, and only the API side
        # sends HTTP (the baseline's signals go through the Temporal client).
        # Idle connections are dropped here after 4 s, before uvicorn's 5 s: reusing one the
        # API is closing that moment failed a run with ServerDisconnectedError.
        http = aiohttp.ClientSession(
            base_url=stack.api_url,
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(keepalive_timeout=4),
        )

        async def via_api(rid: int) -> None:
            async with http.post(
                f"/sla/requests/{rid}/escalate", headers=sup, json={"reason": "bench"}
            ) as resp:
                resp.raise_for_status()

        async def via_client(rid: int) -> None:
            await client.get_workflow_handle(ids.sla_workflow_id(rid)).signal(
                "escalate", EscalateSignal(reason="bench", actor="bench")
            )

        def figures(part: list[int], calls: list[float], sent: dict[int, float]) -> Any:
            times = mails.times  # every mail of ``part`` arrived or was waited for
            lat = [(times[r] - sent[r]) * 1000 for r in part if r in times]
            return {
                "call": _summary(calls),
                "to_mail": _summary(lat),
                "missing_mails": len(part) - len(lat),
            }

        esc: dict[str, Any] = {}
        try:
            # 20 in flight: one side after the other (mixing them would change the load
            # each side is measured under).
            esc["20_in_flight"] = {}
            for side, send, part in (
                ("opsflow", via_api, ops_sample[:half]),
                ("baseline", via_client, base_sample[:half]),
            ):
                await _wait_quiet(stack)
                sent: dict[int, float] = {}
                calls = await _escalate_all(send, part, CONCURRENCY, mails, sent)
                await mails.wait_all(part)
                esc["20_in_flight"][side] = figures(part, calls, sent)
            # One at a time: the two sides take turns, so both meet the same moments of the
            # system (a checkpoint of the server's SQLite, a full collection in the worker)
            # instead of one side getting the first minute and the other the second.
            await _wait_quiet(stack)
            ops_part, base_part = ops_sample[half:], base_sample[half:]
            sent_ops: dict[int, float] = {}
            sent_base: dict[int, float] = {}
            calls_ops: list[float] = []
            calls_base: list[float] = []
            for ops_rid, base_rid in zip(ops_part, base_part, strict=True):
                calls_ops += await _escalate_all(via_api, [ops_rid], 1, mails, sent_ops)
                calls_base += await _escalate_all(via_client, [base_rid], 1, mails, sent_base)
            await mails.wait_all(ops_part + base_part)
            esc["one_at_a_time"] = {
                "opsflow": figures(ops_part, calls_ops, sent_ops),
                "baseline": figures(base_part, calls_base, sent_base),
            }
            report["escalate"] = esc
        finally:
            await http.close()

    # ---- graceful restart with 100 pending escalations
    assert stack.worker is not None
    stack.worker.stop()
    pending = [r for r in ops.request_ids if r not in set(ops_sample)][:100]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as api:
        for rid in pending:
            resp = await api.post(
                f"/sla/requests/{rid}/escalate", headers=sup, json={"reason": "bench restart"}
            )
            resp.raise_for_status()
    log_offset = worker_log_size(stack)
    t_start = time.time()
    stack.restart_worker(wait=False)
    times = await mails.wait_all(pending, 120)
    done = [times[r] for r in pending if r in times]
    report["restart"] = {
        "pending": len(pending),
        "served": len(done),
        "seconds_to_last_mail": round(max(done) - t_start, 2) if done else None,
    }
    # ---- for scale: the dev server's own cost of a start (an empty workflow), once the
    # restarted worker's dbt warm-up is over
    await wait_dbt_warm(stack, log_offset)
    report["server_floor"] = await _server_floor(stack, client, min(n, FLOOR_STARTS))
    return report


def run(stack: Stack, n: int = 10_000, sample: int = 500) -> dict[str, Any]:
    """Run the SLA bench on ``stack``; return its figures."""
    # The start bench leaves the worker stopped (its quiet phase).
    log_offset = ensure_worker(stack)
    tokens = {
        role: stack.make_token(role, name=f"bench-sla-{role}") for role in ("admin", "supervisor")
    }
    return asyncio.run(_run(stack, n, sample, tokens, log_offset))


# The goals, beside the figures they are about.
MAIL_P99_GOALS = {"20_in_flight": "goal < 600 ms", "one_at_a_time": "goal < 150 ms"}
# The API's overhead is its own cost on a signal, measured one at a time. With 20 in flight
# both cores are busy and each of the API's steps also waits for a core, behind the server's
# and the worker's work: that figure is there for what a caller sees, not for the goal.
OVERHEAD_NOTES = {"one_at_a_time": " (goal < 10 ms)", "20_in_flight": " (cores busy)"}


def rows_for_table(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows for the bench table: measure, opsflow, baseline, comparison."""
    arm = out["arm"]
    rows = [
        (f"[bold]SLA: arm {out['requests_per_side']:,} workflows[/]", "", "", ""),
        (
            "  starts accepted",
            f"{arm['opsflow']['starts_accepted_s']} s",
            f"{arm['baseline']['starts_accepted_s']} s",
            "",
        ),
        (
            "  all armed (read model)",
            f"{arm['opsflow']['armed_s']} s",
            f"{arm['baseline']['armed_s']} s",
            f"{arm['ratio_armed']}x (goal < 120 s, <= 1.2x)",
        ),
        (
            "  CPU per workflow armed: Temporal",
            f"{arm['server_cpu_ms_per_workflow']['opsflow']} ms",
            f"{arm['server_cpu_ms_per_workflow']['baseline']} ms",
            "each side until quiet",
        ),
        (
            "  CPU per workflow armed: worker",
            f"{arm['worker_cpu_ms_per_workflow']['opsflow']} ms",
            f"{arm['worker_cpu_ms_per_workflow']['baseline']} ms",
            "opsflow's includes the reconciler",
        ),
        (
            "  RSS worker / temporal",
            f"{out['memory_mb']['worker_rss']} MB",
            f"{out['memory_mb']['temporal_rss']} MB",
            f"worker cache {out['worker_cache']:,} workflows" if "worker_cache" in out else "",
        ),
    ]
    for label, figs in out["escalate"].items():
        o, b = figs["opsflow"], figs["baseline"]
        rows.append((f"[bold]SLA escalate, {label.replace('_', ' ')}[/]", "API", "client", ""))
        for q in ("p50", "p95", "p99"):
            rows.append(
                (
                    f"  call -> mail {q}",
                    f"{o['to_mail'][q + '_ms']} ms",
                    f"{b['to_mail'][q + '_ms']} ms",
                    MAIL_P99_GOALS.get(label, "") if q == "p99" else "",
                )
            )
        # The p50 beside the p99: the p99 of 250 calls is the third slowest, and its
        # overhead moved from +7 to +19 ms between runs of the same code on one machine.
        for q in ("p50", "p99"):
            rows.append(
                (
                    f"  call itself {q}",
                    f"{o['call'][q + '_ms']} ms",
                    f"{b['call'][q + '_ms']} ms",
                    f"overhead {o['call'][q + '_ms'] - b['call'][q + '_ms']:+.1f} ms"
                    + (OVERHEAD_NOTES.get(label, "") if q == "p99" else ""),
                )
            )
    floor = out["server_floor"]
    rows.append(
        (
            f"  server floor: {floor['starts']:,} empty workflows",
            f"{floor['per_second']}/s",
            f"{floor['server_cpu_ms_per_start']} ms CPU",
            f"{out['requests_per_side'] / floor['per_second']:.0f} s for "
            f"{out['requests_per_side']:,} at that rate",
        )
    )
    rs = out["restart"]
    rows.append(
        (
            "  restart: 100 pending escalations",
            f"{rs['seconds_to_last_mail']} s",
            "",
            f"{rs['served']}/{rs['pending']} served (goal < 5 s)",
        )
    )
    return rows
