"""Side effects of ``audit-export-nightly``: plan, dbt, the package, its record and its mail."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from opsflow.activities._rows import col as _col
from opsflow.adapters import audit_package, dbt
from opsflow.adapters.crypto import Keyring, KeyringError, keyring_from_settings
from opsflow.adapters.mail import Mailer, deliver_mail
from opsflow.config import Settings
from opsflow.shared import audit_export_nightly as ae
from opsflow.shared.audit_export_nightly import (
    CompiledModel,
    CompiledModels,
    DistributeRequest,
    EntryFacts,
    ExportOutcome,
    ExportRecord,
    ExportRequest,
    FailRequest,
    FinishRequest,
    Plan,
    PlanRequest,
)
from opsflow.shared.common import MailMessage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HEARTBEAT_EVERY = 2.0
# The workflow's ``progress`` query shows rows and bytes; signalling it every few seconds
# keeps its history small even for a long export.
PROGRESS_SIGNAL_EVERY = 5.0


def _record(row: Any) -> ExportRecord:
    def iso(v: Any) -> str | None:
        return v.isoformat() if v is not None else None

    return ExportRecord(
        export_date=_col(row, "export_date").isoformat(),
        version=int(_col(row, "version")),
        forced=bool(_col(row, "forced")),
        status=str(_col(row, "status")),
        bucket=str(_col(row, "bucket")),
        object_key=str(_col(row, "object_key")),
        key_id=_col(row, "key_id"),
        snapshot_at=iso(_col(row, "snapshot_at")),
        row_counts={str(k): int(v) for k, v in (_col(row, "row_counts") or {}).items()},
        plaintext_bytes=_col(row, "plaintext_bytes"),
        plaintext_sha256=_col(row, "plaintext_sha256"),
        ciphertext_bytes=_col(row, "ciphertext_bytes"),
        ciphertext_sha256=_col(row, "ciphertext_sha256"),
        workflow_id=str(_col(row, "workflow_id")),
        run_id=str(_col(row, "run_id")),
    )


def _outcome(facts: audit_package.PackageFacts, key: str, reused: bool) -> ExportOutcome:
    return ExportOutcome(
        object_key=key,
        key_id=facts.key_id,
        snapshot_at=facts.snapshot_at,
        entries=[EntryFacts(**asdict(e)) for e in facts.entries],
        plaintext_bytes=facts.plaintext_bytes,
        plaintext_sha256=facts.plaintext_sha256,
        ciphertext_bytes=facts.ciphertext_bytes,
        ciphertext_sha256=facts.ciphertext_sha256,
        reused=reused,
    )


class AuditExportActivities:
    """The nightly audit export's activities, with their clients injected."""

    def __init__(
        self,
        *,
        ops_pool: AsyncConnectionPool[Any],
        target_url: str,
        s3: S3Client,
        bucket: str,
        keyring: Callable[[], Keyring],
        mailer: Mailer,
        compliance: list[str],
        time_zone: str,
        client: Client | None = None,
        part_size: int = audit_package.DEFAULT_PART_SIZE,
        dbt_project: Path = dbt.PROJECT_DIR,
        parallel: int = 2,
    ) -> None:
        self.ops = ops_pool
        self.target_url = target_url
        self.s3 = s3
        self.bucket = bucket
        self._keyring = keyring
        self.mailer = mailer
        self.compliance = compliance
        self.time_zone = time_zone
        self.client = client
        self.part_size = part_size
        self.dbt_project = dbt_project
        # Models deflated at once (one connection and one core each, same snapshot).
        self.parallel = parallel

    def keyring(self) -> Keyring:
        """Return the keyring; a missing or malformed one fails the run (not retried)."""
        try:
            return self._keyring()
        except (KeyringError, OSError) as exc:
            raise ApplicationError(
                f"audit export keyring unusable: {exc}", type="KeyringError", non_retryable=True
            ) from None

    @activity.defn(name="audit_export.plan")
    async def plan(self, req: PlanRequest) -> Plan:
        """Resolve the date, refuse the future, and claim (or find) the date's package row."""
        today = ae.today_in(self.time_zone, datetime.fromisoformat(req.reference_time))
        export_date = req.date or ae.date_from_workflow_id(req.workflow_id) or today
        if export_date > today:
            raise ApplicationError(
                f"date {export_date} is in the future (today is {today} in {self.time_zone})",
                type="DateInFuture",
                non_retryable=True,
            )
        d = date.fromisoformat(export_date)
        async with self.ops.connection() as conn, conn.transaction():
            # One planner per date at a time: versions are numbered without gaps or twins.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"audit-export:{export_date}",)
            )
            cur = await conn.execute(
                """SELECT * FROM export_runs WHERE export_date = %s AND workflow_id = %s
                   AND run_id = %s""",
                (d, req.workflow_id, req.run_id),
            )
            mine = await cur.fetchone()
            if mine is not None:  # this activity ran before (retry)
                return Plan(export_date, False, _record(mine), self.time_zone)
            cur = await conn.execute(
                """SELECT * FROM export_runs WHERE export_date = %s AND status = 'succeeded'
                   ORDER BY version DESC LIMIT 1""",
                (d,),
            )
            done = await cur.fetchone()
            if done is not None and not req.force:
                return Plan(export_date, True, _record(done), self.time_zone)
            # An unfinished version (a dead or failed attempt) is taken over, so its object
            # key - and any upload it left behind - is reused: one package per version.
            cur = await conn.execute(
                """SELECT * FROM export_runs WHERE export_date = %s
                   AND status IN ('running', 'failed') ORDER BY version DESC LIMIT 1""",
                (d,),
            )
            open_row = await cur.fetchone()
            forced = done is not None
            if open_row is not None:
                cur = await conn.execute(
                    """UPDATE export_runs SET workflow_id = %s, run_id = %s, actor = %s,
                         status = 'running', forced = %s, failure = NULL, finished_at = NULL,
                         started_at = now()
                       WHERE export_date = %s AND version = %s RETURNING *""",
                    (
                        req.workflow_id,
                        req.run_id,
                        req.actor,
                        forced,
                        d,
                        _col(open_row, "version"),
                    ),
                )
            else:
                cur = await conn.execute(
                    "SELECT coalesce(max(version), 0) + 1 AS v FROM export_runs "
                    "WHERE export_date = %s",
                    (d,),
                )
                version = int(_col(await cur.fetchone(), "v"))
                cur = await conn.execute(
                    """INSERT INTO export_runs (export_date, version, forced, status, workflow_id,
                         run_id, actor, bucket, object_key)
                       VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s) RETURNING *""",
                    (
                        d,
                        version,
                        forced,
                        req.workflow_id,
                        req.run_id,
                        req.actor,
                        self.bucket,
                        ae.object_key(export_date, version),
                    ),
                )
            row = await cur.fetchone()
        return Plan(export_date, False, _record(row), self.time_zone)

    @activity.defn(name="audit_export.dbt_check")
    async def dbt_check(self) -> CompiledModels:
        """Run the dbt project's tests, then compile the models.

        Raises:
            ApplicationError: non-retryable, naming each error-severity test that failed.

        """
        try:
            report = await asyncio.to_thread(dbt.run_tests, self.target_url, self.dbt_project)
            if report.failed:
                names = ", ".join(f"{f.name} ({f.failures} failing rows)" for f in report.failed)
                raise ApplicationError(
                    f"dbt test failed: {names}",
                    [asdict(f) for f in report.failed],
                    type="DbtTestFailed",
                    non_retryable=True,
                )
            for w in report.warned:
                activity.logger.warning("dbt test warned: %s", w.name)
            compiled = await asyncio.to_thread(
                dbt.compile_models, self.target_url, ae.MODELS, self.dbt_project
            )
        except dbt.DbtError as exc:
            raise ApplicationError(str(exc), type="DbtError") from None
        return CompiledModels(
            models=[CompiledModel(name=m, sql=compiled[m]) for m in ae.MODELS],
            dbt_version=dbt.dbt_version(),
            models_revision=dbt.models_revision(self.dbt_project),
            tests_passed=report.passed,
            tests_warned=len(report.warned),
        )

    @activity.defn(name="audit_export.export")
    async def export(self, req: ExportRequest) -> ExportOutcome:
        """Write the package once: reuse a completed object of a dead attempt, else build it."""
        rec = req.record
        keyring = self.keyring()
        exists = await asyncio.to_thread(
            audit_package.object_exists, self.s3, rec.bucket, rec.object_key
        )
        if exists:
            activity.heartbeat({"step": "verifying existing package"})
            facts = await asyncio.to_thread(self._read_back, rec, keyring)
            return _outcome(facts, rec.object_key, reused=True)
        aborted = await asyncio.to_thread(
            audit_package.abort_stray_uploads, self.s3, rec.bucket, rec.object_key
        )
        if aborted:
            activity.logger.info("aborted %d stray multipart upload(s)", aborted)
        counters = audit_package.Counters()
        extra = {
            "export_date": rec.export_date,
            "version": rec.version,
            "forced": rec.forced,
            "dbt_version": req.models.dbt_version,
            "models_revision": req.models.models_revision,
            "models": [m.name for m in req.models.models],
        }
        task = asyncio.ensure_future(
            asyncio.to_thread(
                audit_package.write_package,
                self.target_url,
                self.s3,
                rec.bucket,
                rec.object_key,
                keyring,
                [audit_package.ModelSql(m.name, m.sql) for m in req.models.models],
                extra,
                counters,
                part_size=self.part_size,
                parallel=self.parallel,
            )
        )
        info = activity.info()
        last_signal = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
                figures = counters.snapshot()
                activity.heartbeat(figures)
                if done:
                    break
                if self.client is not None and loop.time() - last_signal >= PROGRESS_SIGNAL_EVERY:
                    last_signal = loop.time()
                    await self._signal_progress(info.workflow_id or "", figures)
        except asyncio.CancelledError:
            counters.cancelled.set()
            await asyncio.gather(task, return_exceptions=True)
            raise
        facts = task.result()
        return _outcome(facts, rec.object_key, reused=False)

    async def _signal_progress(self, workflow_id: str, figures: dict[str, Any]) -> None:
        assert self.client is not None
        try:
            await self.client.get_workflow_handle(workflow_id).signal("export_progress", figures)
        except Exception as exc:  # progress is best effort; the export goes on
            activity.logger.debug("progress signal failed: %s", type(exc).__name__)

    def _read_back(self, rec: ExportRecord, keyring: Keyring) -> audit_package.PackageFacts:
        body = self.s3.get_object(Bucket=rec.bucket, Key=rec.object_key)["Body"]
        with tempfile.TemporaryFile() as out:
            return audit_package.read_package(body, keyring, out)  # type: ignore[arg-type]

    @activity.defn(name="audit_export.finish")
    async def finish(self, req: FinishRequest) -> ExportRecord:
        """Mark the package succeeded with its figures (idempotent)."""
        o = req.outcome
        async with self.ops.connection() as conn:
            cur = await conn.execute(
                """UPDATE export_runs SET status = 'succeeded', key_id = %s, snapshot_at = %s,
                     row_counts = %s, plaintext_bytes = %s, plaintext_sha256 = %s,
                     ciphertext_bytes = %s, ciphertext_sha256 = %s, manifest = %s,
                     finished_at = coalesce(finished_at, now()), failure = NULL
                   WHERE export_date = %s AND version = %s AND run_id = %s RETURNING *""",
                (
                    o.key_id,
                    datetime.fromisoformat(o.snapshot_at),
                    Jsonb({e.model: e.rows for e in o.entries}),
                    o.plaintext_bytes,
                    o.plaintext_sha256,
                    o.ciphertext_bytes,
                    o.ciphertext_sha256,
                    Jsonb({"entries": [asdict(e) for e in o.entries], "reused": o.reused}),
                    date.fromisoformat(req.record.export_date),
                    req.record.version,
                    req.run_id,
                ),
            )
            row = await cur.fetchone()
        if row is None:
            raise ApplicationError(
                "export_runs row was taken over by another run", type="Superseded"
            )
        return _record(row)

    @activity.defn(name="audit_export.fail")
    async def fail(self, req: FailRequest) -> None:
        """Mark this attempt failed; the next run of the date takes the version over."""
        run_id = activity.info().workflow_run_id
        async with self.ops.connection() as conn:
            await conn.execute(
                """UPDATE export_runs SET status = 'failed', failure = %s, finished_at = now()
                   WHERE export_date = %s AND version = %s AND run_id = %s
                     AND status = 'running'""",
                (
                    req.failure[:2000],
                    date.fromisoformat(req.record.export_date),
                    req.record.version,
                    run_id,
                ),
            )

    @activity.defn(name="audit_export.distribute")
    async def distribute(self, req: DistributeRequest) -> str:
        """Mail the compliance list a 7-day download link, the checksums and row counts."""
        rec, o = req.record, req.outcome
        url = await asyncio.to_thread(
            self.s3.generate_presigned_url,
            "get_object",
            Params={"Bucket": rec.bucket, "Key": rec.object_key},
            ExpiresIn=ae.LINK_EXPIRES_SECONDS,
        )
        expires = datetime.now(UTC).timestamp() + ae.LINK_EXPIRES_SECONDS
        lines = [
            f"The audit export of {rec.export_date} is ready"
            + (f" (version {rec.version}, forced re-run)." if rec.forced else "."),
            "",
            f"Download (expires {datetime.fromtimestamp(expires, UTC):%Y-%m-%d %H:%M} UTC):",
            url,
            "",
            f"Object: s3://{rec.bucket}/{rec.object_key}",
            f"Encryption: AES-256-GCM (OFAE1), key id {o.key_id}",
            f"Snapshot time: {o.snapshot_at}",
            f"Encrypted package: {o.ciphertext_bytes} bytes, sha256 {o.ciphertext_sha256}",
            f"Zip (decrypted): {o.plaintext_bytes} bytes, sha256 {o.plaintext_sha256}",
            "",
            "Files:",
            *(f"  {e.name}: {e.rows} rows, {e.bytes} bytes, sha256 {e.sha256}" for e in o.entries),
            "",
            "Decrypt and verify: opsflow audit-export fetch --date " + rec.export_date,
        ]
        return await deliver_mail(
            self.ops,
            self.mailer,
            MailMessage(
                idempotency_key=req.idempotency_key,
                to=list(self.compliance),
                subject=f"[opsflow] Audit export {rec.export_date}"
                + (f" v{rec.version}" if rec.version > 1 else ""),
                body="\n".join(lines) + "\n",
                kind="audit-export",
            ),
        )


def record_json(rec: ExportRecord) -> str:
    """Return a record as JSON (CLI output)."""
    return json.dumps(asdict(rec), indent=2, sort_keys=True)


def build_audit_export_activities(
    settings: Settings,
    ops_pool: AsyncConnectionPool[Any],
    s3: S3Client,
    mailer: Mailer,
    client: Client | None,
) -> list[Callable[..., Any]]:
    """Return the runbook's activity callables, built from settings (used by the worker)."""
    acts = AuditExportActivities(
        ops_pool=ops_pool,
        target_url=settings.target_database_url.get_secret_value(),
        s3=s3,
        bucket=settings.s3_audit_bucket,
        keyring=lambda: keyring_from_settings(settings),
        mailer=mailer,
        compliance=list(settings.compliance_emails),
        time_zone=settings.schedule_timezone,
        client=client,
        parallel=settings.audit_export_parallel,
    )
    return [
        acts.plan,
        acts.dbt_check,
        acts.export,
        acts.finish,
        acts.fail,
        acts.distribute,
    ]
