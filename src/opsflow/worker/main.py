"""``opsflow worker``: runs every catalog workflow and the activities on the task queue."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
import uvloop
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

import opsflow
from opsflow.activities.audit_export_nightly import build_audit_export_activities
from opsflow.activities.dev_role_elevation import DevRoleElevationActivities
from opsflow.activities.health_check import HealthCheckActivities
from opsflow.activities.platform import PlatformActivities
from opsflow.activities.sla_escalation import SlaEscalationActivities, SlaReconcilerActivities
from opsflow.activities.triage_assignment import TriageActivities
from opsflow.adapters import dbt
from opsflow.adapters.mail import Mailer, SmtpConfig
from opsflow.adapters.postgres import open_pool
from opsflow.adapters.s3 import lazy_s3_client
from opsflow.adapters.sms import SmsGateway
from opsflow.catalog import ALL_WORKFLOWS, RUNBOOKS
from opsflow.config import Settings, load_settings
from opsflow.worker.client import connect, metrics_runtime
from opsflow.worker.gc_watch import GcPauseWatch
from opsflow.worker.interceptors import LogContextInterceptor

log = structlog.get_logger("opsflow.worker")


def build_activities(
    settings: Settings,
    ops_pool: Any,
    app_pool: Any,
    client: Client | None,
    sms: SmsGateway | None = None,
    mailer: Mailer | None = None,
) -> list[Any]:
    """Every activity callable, with its dependencies injected."""
    sms = sms or SmsGateway.from_settings(settings)
    mailer = mailer or Mailer(SmtpConfig.from_settings(settings))
    s3 = lazy_s3_client(settings)
    schedules = {
        spec.schedule.id: spec.schedule.interval or timedelta(days=1)
        for spec in RUNBOOKS.values()
        if spec.schedule is not None
    }
    platform = PlatformActivities(ops_pool, mailer)
    dev_role = DevRoleElevationActivities(app_pool, ops_pool, mailer)
    health = HealthCheckActivities(settings, ops_pool, app_pool, s3, mailer, client, schedules)
    queue = settings.temporal_task_queue
    sla = SlaEscalationActivities(app_pool, ops_pool, mailer, sms)
    sla_reconciler = SlaReconcilerActivities(app_pool, ops_pool, client, queue)
    triage = TriageActivities(app_pool, ops_pool, client, queue)
    return [
        platform.record_run,
        platform.audit,
        platform.send_mail,
        dev_role.grant,
        dev_role.revoke,
        dev_role.notify_admins,
        dev_role.developer_actions,
        dev_role.record_review,
        health.check_app,
        health.check_databases,
        health.check_storage,
        health.expire_dev_grants,
        health.hour_figures,
        health.thresholds,
        health.open_alerts,
        health.transition_alert,
        health.record,
        sla.sync,
        sla.breach,
        sla.escalate,
        sla.add_note,
        sla.notify_supervisors,
        sla_reconciler.reconcile,
        triage.assign,
        triage.start_sla,
        *build_audit_export_activities(settings, ops_pool, s3, mailer, client),
    ]


# What a workflow task's outcome depends on: the workflow code and the payload dataclasses.
_WORKFLOW_CODE = ("workflows", "shared")


def build_id(root: Path | None = None) -> str:
    """Name the worker's build: opsflow's version and a digest of the workflow code it runs.

    The SDK's default hashes the bytecode of every module loaded (about 0.3 s of a restarted
    worker's start, before it polls); the workflow code is what the id must tell apart.

    Args:
        root: The package folder (default: the installed ``opsflow``).

    """
    root = root or Path(opsflow.__file__).parent
    digest = hashlib.sha256()
    for folder in _WORKFLOW_CODE:
        for path in sorted((root / folder).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"opsflow-{opsflow.__version__}+{digest.hexdigest()[:12]}"


def build_worker(client: Client, settings: Settings, activities: Sequence[Any]) -> Worker:
    """Build the worker; pollers sized for the dev server's SQLite store (see DESIGN.md)."""
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=ALL_WORKFLOWS,
        activities=list(activities),
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_task_polls=settings.worker_workflow_task_polls,
        nonsticky_to_sticky_poll_ratio=0.5,
        max_cached_workflows=settings.worker_max_cached_workflows,
        interceptors=[LogContextInterceptor()],
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Worker versioning is off: the version only names the code in histories and the UI.
        deployment_config=WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(deployment_name="opsflow", build_id=build_id()),
            use_worker_versioning=False,
        ),
    )


async def run(settings: Settings) -> None:
    """Connect, serve until SIGTERM/SIGINT, then shut down gracefully."""
    runtime = metrics_runtime(f"127.0.0.1:{settings.worker_metrics_port}")
    # The three connections at once: a restarted worker's backlog waits for the slowest, not
    # for the sum.
    client, ops_pool, app_pool = await asyncio.gather(
        connect(settings, runtime=runtime),
        open_pool(
            settings.database_url.get_secret_value(),
            name="opsflow",
            max_size=settings.db_pool_max,
        ),
        open_pool(
            settings.target_database_url.get_secret_value(),
            name="app",
            max_size=settings.db_pool_max,
        ),
    )
    sms = SmsGateway.from_settings(settings)
    mailer = Mailer(SmtpConfig.from_settings(settings))
    worker = build_worker(
        client, settings, build_activities(settings, ops_pool, app_pool, client, sms, mailer)
    )
    # What is imported and built by now lives as long as the process: out of the collector's
    # full passes, each of which walked all of it (0.1 s, several times in a restart's backlog).
    gc.freeze()
    # A full pass over tens of thousands of cached workflows takes over a second: say so.
    gc_watch = GcPauseWatch()
    gc_watch.install()
    gc_reports = asyncio.create_task(gc_watch.report())
    # The audit export's dbt import and project parse (~2 s) happen soon after the start,
    # once the backlog a restart finds is served, and not in the first export.
    dbt.warm_up_in_background(
        settings.target_database_url.get_secret_value(), delay=settings.worker_dbt_warmup_delay
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker started",
        task_queue=settings.temporal_task_queue,
        temporal=settings.temporal_address,
        metrics_port=settings.worker_metrics_port,
    )
    async with worker:
        await stop.wait()
        log.info("worker stopping gracefully")
    gc_reports.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gc_reports
    gc_watch.remove()
    await sms.aclose()
    await asyncio.to_thread(mailer.close)
    await ops_pool.close()
    await app_pool.close()
    log.info("worker stopped")


def main() -> None:
    """Entry point of ``opsflow worker``."""
    settings = load_settings()
    try:
        from opsflow.logs import configure_logging

        configure_logging(settings, "worker")
    except ImportError:
        pass
    code = 0
    try:
        # uvloop: its socket waits cost less CPU than asyncio's own loop, and a worker spends
        # most of its time waiting on PostgreSQL, SMTP and the SMS gateway.
        uvloop.run(run(settings))
    except Exception:
        log.exception("worker failed")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK's runtime can abort at interpreter exit (sdk-python#300): leave without it.
    os._exit(code)
