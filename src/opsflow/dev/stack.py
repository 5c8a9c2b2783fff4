"""The local stack behind ``make dev`` / ``opsflow dev`` and the integration tests.

:class:`Stack` starts, all on 127.0.0.1 with state under one folder (``.opsflow/`` or
``OPSFLOW_HOME``): the Temporal dev server (SQLite file with WAL pragmas, opsflow's search
attributes), SeaweedFS ``weed mini`` (generated S3 credentials, telemetry off, every port
pinned), PostgreSQL (the server of ``DATABASE_URL`` when reachable, else a private cluster),
the SMTP and SMS/webhook sinks, the migrations, the worker and the API (subprocesses) and the
schedules. SeaweedFS counts as up only once every bucket serves data back, not when S3 merely
answers (:meth:`Stack.wait_s3_ready`). :func:`run_dev` adds the terminal side: it prints
where everything is and an admin token, writes ``<state>/env`` for the CLI, supervises the
worker and API and stops everything on Ctrl-C.

Supervision policy: if the worker or the API dies unexpectedly, the supervisor says so loudly
(with the tail of its log) and restarts it once; if the same process dies a second time, or
Temporal, SeaweedFS or the private PostgreSQL dies, everything is stopped and ``run_dev``
returns 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from opsflow.binaries import find
from opsflow.config import Settings
from opsflow.dev import postgres
from opsflow.dev.ports import HOST, DevPorts, busy_ports
from opsflow.dev.procs import ManagedProcess, StartupError, http_ready, tcp_ready, wait_http
from opsflow.dev.sinks import HttpSink, MailSink, read_envelopes, read_mails
from opsflow.shared.ids import SEARCH_ATTRIBUTES

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from temporalio.client import Client

ENV_FILE = "env"
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
SECRETS_FILE = "secrets.json"
S3_CONFIG_FILE = "s3-identities.json"
# The readiness probe object kept in each bucket (see Stack.wait_s3_ready). A hidden prefix
# of its own, so listings under the platform's prefixes never meet it.
S3_PROBE_KEY = ".opsflow-probe/ready"
S3_PROBE_BODY = b"opsflow dev stack: S3 readiness probe, safe to ignore\n"
S3_READY_TIMEOUT = 90.0


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 600), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@%+=,~-]*")


def _env_line(key: str, value: str) -> str:
    # python-dotenv (what pydantic-settings reads with) takes single-quoted values without
    # escapes; only a value holding a single quote needs double quotes, where backslashes and
    # double quotes are escaped. It expands "${NAME}" in any value and has no escape for it,
    # so a password containing "${" must come from the real environment instead.
    if _PLAIN_VALUE.fullmatch(value):
        return f"{key}={value}"
    if "'" not in value:
        return f"{key}='{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{key}="{escaped}"'


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``KEY=VALUE`` lines (mode 600) that :func:`opsflow.config.load_settings` reads."""
    lines = ["# Written by `opsflow dev`: the settings of the running local stack."]
    lines += [_env_line(k, v) for k, v in values.items()]
    _write_private(path, "\n".join(lines) + "\n")


def read_env_file(path: Path) -> dict[str, str]:
    """Read a file written by :func:`write_env_file` (empty when missing)."""
    from dotenv import dotenv_values

    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _random_key(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


# Settings a developer may have exported (or that a dev stack wrote) that must not leak into
# a stack started for tests: its children get exactly the stack's own values.
SETTING_PREFIXES = (
    "OPSFLOW_", "DATABASE_", "TARGET_DATABASE_", "TEMPORAL_", "S3_", "SMTP_", "SMS_",
    "API_", "WORKER_", "APP_HEALTH_", "MAIL_", "ONCALL_",
)  # fmt: skip


def clean_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``environ`` (default ``os.environ``) without any opsflow setting."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not k.upper().startswith(SETTING_PREFIXES)}


@dataclass
class StackSecrets:
    """Credentials generated on first start and kept in ``<state>/secrets.json`` (mode 600)."""

    s3_access_key_id: str
    s3_secret_access_key: str
    sms_webhook_token: str

    @classmethod
    def load_or_create(cls, state: Path) -> StackSecrets:
        """Reuse the stored credentials, or generate and store new ones."""
        path = state / SECRETS_FILE
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))
            return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__})
        made = cls(
            s3_access_key_id="OPSF" + _random_key(16, string.ascii_uppercase + string.digits),
            s3_secret_access_key=_random_key(40, string.ascii_letters + string.digits),
            sms_webhook_token=secrets.token_urlsafe(24),
        )
        _write_private(path, json.dumps(made.__dict__, indent=2))
        return made


@dataclass
class StackOptions:
    """What to start and how.

    Attributes:
        state_dir: Where all state and logs go.
        ports: The ports to listen on.
        environ: The environment the stack decides from and passes to its children.
        database: Ready database URLs (tests); None decides from ``environ`` and provisions.
        migrate: Run the Alembic upgrades of both databases.
        sync_schedules: Create/update the Temporal Schedules of the catalog.
        admin_token: Create (or reuse) the admin token kept in ``<state>/admin-token``.
        api: Start the API subprocess.
        worker: Start the worker subprocess.
        python: Interpreter for the worker and API.
        cwd: Working folder of the children.
        extra_env: Settings to force on top of what the stack chooses.

    """

    state_dir: Path
    ports: DevPorts
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    database: postgres.DatabaseUrls | None = None
    migrate: bool = True
    sync_schedules: bool = True
    admin_token: bool = True
    api: bool = True
    worker: bool = True
    python: str = sys.executable
    cwd: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def _error_code(exc: Exception) -> str:
    """Return the S3 error code of a botocore ``ClientError`` ("" for other errors)."""
    response: Any = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _NotServed(Exception):
    """S3 answered, but not with the probe object's bytes."""


@dataclass
class _S3DataProbe:
    """One readiness probe of :meth:`Stack.wait_s3_ready`: true once every bucket serves data.

    A bucket that passed is not probed again within the same wait. The last failure is kept
    in :attr:`last_error` for the error message (botocore messages carry no credentials).
    """

    client: S3Client
    buckets: tuple[str, ...]
    last_error: str = "no answer yet"
    served: set[str] = field(default_factory=set)

    def __call__(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        for bucket in self.buckets:
            if bucket in self.served:
                continue
            try:
                self._probe(bucket)
            except (BotoCoreError, ClientError, _NotServed) as exc:
                self.last_error = f"bucket {bucket}: {exc}"
                return False
            self.served.add(bucket)
        return True

    def _probe(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket"):
                raise
            try:
                self.client.create_bucket(Bucket=bucket)
            except ClientError as again:
                # A lost answer to an earlier create: the bucket is there, which is the point.
                if _error_code(again) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        if self._read(bucket) == S3_PROBE_BODY:
            return
        # Missing (new bucket, or a start interrupted before it was written) or altered.
        self.client.put_object(Bucket=bucket, Key=S3_PROBE_KEY, Body=S3_PROBE_BODY)
        body = self._read(bucket)
        if body != S3_PROBE_BODY:
            got = "nothing" if body is None else f"{len(body)} other bytes"
            raise _NotServed(f"{S3_PROBE_KEY} read back {got} after it was written")

    def _read(self, bucket: str) -> bytes | None:
        """Return the probe object's bytes, None when it does not exist; other errors raise."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=bucket, Key=S3_PROBE_KEY)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise


class Stack:
    """The local platform: start it, use its settings, stop it. See the module notes."""

    def __init__(self, options: StackOptions) -> None:
        """Prepare the stack (nothing starts until :meth:`start`)."""
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.ports = options.ports
        self.logs_dir = self.state_dir / "logs"
        self.mail_dir = self.state_dir / "mail"
        self.sms_dir = self.state_dir / "sms"
        self.temporal_address = f"{HOST}:{self.ports.temporal}"
        self.ui_url = f"http://{HOST}:{self.ports.temporal_ui}"
        self.api_url = f"http://{HOST}:{self.ports.api}"
        self.s3_endpoint = f"http://{HOST}:{self.ports.s3}"
        self.secrets: StackSecrets | None = None
        self.database: postgres.DatabaseUrls | None = options.database
        self.private_pg: postgres.PrivateCluster | None = None
        self.env: dict[str, str] = {}
        self.settings: Settings | None = None
        self.admin_token: str | None = None
        self.mail_sink: MailSink | None = None
        self.http_sink: HttpSink | None = None
        self.temporal: ManagedProcess | None = None
        self.weed: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None
        self.api: ManagedProcess | None = None
        self._base = Settings(_env_file=None, **_settings_from(options.environ))

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Start every component and wait until each is ready.

        Raises:
            StartupError: A component did not come up (the message has the tail of its log).

        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for folder in (self.state_dir, self.logs_dir, self.mail_dir, self.sms_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Secrets live here (S3 keys, tokens), each file 0600; the folder is not listable by
        # others but traversable (0711), so a private cluster under it can run as the
        # `postgres` user when opsflow runs as root.
        os.chmod(self.state_dir, 0o711)  # noqa: S103 (traverse only; see above)
        skip = {"postgres"}
        if not self.options.api:
            skip.add("api")
        if not self.options.worker:
            skip.add("worker_metrics")
        busy = busy_ports(self.ports, skip=skip)
        if busy:
            raise StartupError(
                "ports already in use: " + ", ".join(busy) + " (another `opsflow dev` running?"
                " stop it, or override with OPSFLOW_<NAME>_PORT)"
            )
        self.secrets = StackSecrets.load_or_create(self.state_dir)
        # Slow starters first, so they boot while the database is prepared.
        self.temporal = self._temporal_process()
        self.temporal.start()
        self.weed = self._weed_process()
        self.weed.start()
        self.mail_sink = MailSink(self.mail_dir, self.ports.smtp)
        self.mail_sink.start()
        self.http_sink = HttpSink(
            self.sms_dir, self.ports.sms, token=self.secrets.sms_webhook_token, mail=self.mail_sink
        )
        self.http_sink.start()
        if self.database is None:
            self.database = self._prepare_postgres()
        self.env = self._choose_env()
        self.settings = Settings(_env_file=None, **_settings_from(self.env))
        if self.options.migrate:
            from opsflow.db import upgrade

            upgrade("all", self.settings)
        self.temporal.wait_until(tcp_ready(self.ports.temporal), 60, "its gRPC port opened")
        asyncio.run(self._ensure_search_attributes())
        # Nothing that uses S3 (worker, API) starts before S3 serves data, not merely answers.
        self.wait_s3_ready()
        if self.options.worker:
            self.worker = self._python_process("worker", "opsflow.worker")
            self.worker.start()
        if self.options.api:
            self.api = self._python_process("api", "opsflow.api")
            self.api.start()
            self.api.wait_until(
                http_ready(f"{self.api_url}/healthz", ok=lambda s: s == 200),
                90,
                "/healthz said 200",
            )
        if self.worker is not None:
            self.wait_worker_polling(self.worker, time.time() - 1)
        if self.options.sync_schedules:
            asyncio.run(self._sync_schedules())
        if self.options.admin_token:
            self.admin_token = self._admin_token()
            self.env["OPSFLOW_TOKEN"] = self.admin_token
        write_env_file(self.state_dir / ENV_FILE, self.env)

    def _temporal_process(self) -> ManagedProcess:
        argv = [
            find("temporal"), "server", "start-dev",
            "--ip", HOST,
            "--port", str(self.ports.temporal),
            "--ui-port", str(self.ports.temporal_ui),
            "--http-port", str(self.ports.temporal_http),
            "--metrics-port", str(self.ports.temporal_metrics),
            "--db-filename", str(self.state_dir / "temporal.db"),
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal",
            # Activities scheduled by a workflow task come back to the same worker in the
            # answer to its completion: no matching round trip (docs/architecture.md).
            "--dynamic-config-value", "system.enableActivityEagerExecution=true",
            "--namespace", self._base.temporal_namespace,
            "--log-level", "warn",
        ]  # fmt: skip
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        return ManagedProcess(
            "temporal",
            argv,
            self.logs_dir / "temporal.log",
            stop_signal=signal.SIGTERM,
            stop_timeout=15,
        )

    def _weed_process(self) -> ManagedProcess:
        assert self.secrets is not None
        identities = {
            "identities": [
                {
                    "name": "opsflow",
                    "credentials": [
                        {
                            "accessKey": self.secrets.s3_access_key_id,
                            "secretKey": self.secrets.s3_secret_access_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.state_dir / S3_CONFIG_FILE
        _write_private(config, json.dumps(identities, indent=2))
        data = self.state_dir / "seaweedfs"
        data.mkdir(exist_ok=True)
        p = self.ports
        argv = [
            find("weed"), "mini",
            f"-dir={data}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            "-master.telemetry=false",
            f"-s3.config={config}",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false",
            f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={p.weed_master}", f"-master.port.grpc={p.weed_master_grpc}",
            f"-volume.port={p.weed_volume}", f"-volume.port.grpc={p.weed_volume_grpc}",
            f"-filer.port={p.weed_filer}", f"-filer.port.grpc={p.weed_filer_grpc}",
            f"-admin.port={p.weed_admin}", f"-admin.port.grpc={p.weed_admin_grpc}",
            "-admin.ui=false", "-webdav=false",
            f"-filer.localSocket={data / 'filer.sock'}",
            f"-s3.localSocket={data / 's3.sock'}",
        ]  # fmt: skip
        return ManagedProcess("seaweedfs", argv, self.logs_dir / "seaweedfs.log", stop_timeout=15)

    def _python_process(self, name: str, module: str) -> ManagedProcess:
        env = {**self.options.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        return ManagedProcess(
            name,
            [self.options.python, "-m", module],
            self.logs_dir / f"{name}.log",
            env=env,
            cwd=self.options.cwd,
            stop_timeout=25,
        )

    def _prepare_postgres(self) -> postgres.DatabaseUrls:
        environ = self.options.environ
        candidate = (
            environ.get("DATABASE_ADMIN_URL")
            or environ.get("DATABASE_URL")
            or postgres.DEFAULT_SERVER_URL
        )
        server = postgres.with_database(candidate, "postgres")
        if environ.get("DATABASE_URL") and not environ.get("DATABASE_ADMIN_URL"):
            # DATABASE_URL names the service role, which cannot create databases.
            server = postgres.with_user(server, "postgres")
        reason = postgres.reachable(server)
        if reason is None:
            urls = postgres.plan_urls(environ, server, private=False)
        else:
            print(
                f"PostgreSQL at {postgres_host(server)} unreachable ({reason}); "
                "using a private cluster",
                flush=True,
            )
            self.private_pg = postgres.PrivateCluster(self.state_dir / "pg", self.ports.postgres)
            self.private_pg.start()
            urls = postgres.plan_urls(environ, self.private_pg.url, private=True)
        postgres.provision(urls)
        return urls

    def _choose_env(self) -> dict[str, str]:
        assert self.secrets is not None and self.database is not None
        base = self._base
        p = self.ports
        env = {
            "OPSFLOW_HOME": str(self.state_dir),
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": base.temporal_namespace,
            "TEMPORAL_TASK_QUEUE": base.temporal_task_queue,
            "TEMPORAL_UI_URL": self.ui_url,
            "DATABASE_URL": self.database.database_url,
            "DATABASE_ADMIN_URL": self.database.database_admin_url,
            "TARGET_DATABASE_URL": self.database.target_database_url,
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_REGION": base.s3_region,
            "S3_ACCESS_KEY_ID": self.secrets.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": self.secrets.s3_secret_access_key,
            "S3_AUDIT_BUCKET": base.s3_audit_bucket,
            "S3_BACKUP_BUCKET": base.s3_backup_bucket,
            "S3_ATTACHMENTS_BUCKET": base.s3_attachments_bucket,
            "SMTP_HOST": HOST,
            "SMTP_PORT": str(p.smtp),
            "SMS_WEBHOOK_URL": f"http://{HOST}:{p.sms}/sms",
            "SMS_WEBHOOK_TOKEN": self.secrets.sms_webhook_token,
            "APP_HEALTH_URL": self.options.environ.get(
                "APP_HEALTH_URL", f"http://{HOST}:{p.sms}/api/health"
            ),
            "API_HOST": HOST,
            "API_PORT": str(p.api),
            "API_PUBLIC_URL": self.api_url,
            "WORKER_METRICS_PORT": str(p.worker_metrics),
            "OPSFLOW_URL": self.api_url,
        }
        env.update(self.options.extra_env)
        return env

    @property
    def s3(self) -> S3Client:
        """A boto3 S3 client with the stack's credentials."""
        from opsflow.adapters.s3 import make_s3_client

        settings = self.settings or Settings(_env_file=None, **_settings_from(self._s3_env()))
        return make_s3_client(settings)

    def _s3_env(self) -> dict[str, str]:
        assert self.secrets is not None
        return {
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_ACCESS_KEY_ID": self.secrets.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": self.secrets.s3_secret_access_key,
        }

    def buckets(self) -> tuple[str, ...]:
        """Return the buckets the platform uses (audit, backups, attachments), no repeats."""
        s = self.settings or self._base
        return tuple(
            dict.fromkeys([s.s3_audit_bucket, s.s3_backup_bucket, s.s3_attachments_bucket])
        )

    def wait_s3_ready(self, timeout: float = S3_READY_TIMEOUT) -> None:
        """Wait until S3 serves data: every bucket exists and returns its probe object.

        ``weed mini`` answers S3 requests (even lists buckets) a few seconds before its
        volume server has registered with the master; until then reading an existing object
        fails with ``InternalError``. So readiness is proven with data: each bucket is
        created if missing, and the object :data:`S3_PROBE_KEY` is read back and must hold
        exactly :data:`S3_PROBE_BODY`. On a new state folder the object is first written; on
        a reused one it was written by an earlier run, so reading it proves that objects
        stored before this start are served again.

        Args:
            timeout: Seconds to wait.

        Raises:
            StartupError: SeaweedFS exited, or S3 did not serve data within ``timeout``
                (the message has the last S3 error and the tail of the SeaweedFS log).

        """
        assert self.weed is not None and self.secrets is not None
        probe = _S3DataProbe(self._probe_client(), self.buckets())
        try:
            self.weed.wait_until(probe, timeout, "S3 served data")
        except StartupError as exc:
            raise StartupError(
                f"S3 at {self.s3_endpoint} did not serve data (last S3 error: "
                f"{probe.last_error}); {exc}"
            ) from None

    def _probe_client(self) -> S3Client:
        # Not self.s3: its retries and 30 s read timeout would let one probe outlast the
        # readiness deadline; here the wait loop does the retrying.
        import boto3
        from botocore.config import Config

        assert self.secrets is not None
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name=(self.settings or self._base).s3_region,
            aws_access_key_id=self.secrets.s3_access_key_id,
            aws_secret_access_key=self.secrets.s3_secret_access_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                # A first write waits for SeaweedFS to grow a volume: seconds, not more.
                read_timeout=15,
            ),
        )

    async def _client(self) -> Client:
        from temporalio.client import Client

        return await Client.connect(self.temporal_address, namespace=self._base.temporal_namespace)

    async def _ensure_search_attributes(self) -> None:
        # start-dev registers --search-attribute only on a new database file: a state folder
        # made by an older version would miss attributes added since, so add what is missing.
        from temporalio.api.enums.v1 import IndexedValueType
        from temporalio.api.operatorservice.v1 import (
            AddSearchAttributesRequest,
            ListSearchAttributesRequest,
        )

        namespace = self._base.temporal_namespace
        deadline = time.monotonic() + 30
        while True:
            # The connect is retried too: on a slow machine a server reopening an existing
            # state file has refused it just after its gRPC port first accepted a connection.
            try:
                client = await self._client()
                listed = await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=namespace)
                )
                break
            except Exception:
                if time.monotonic() > deadline or not (self.temporal and self.temporal.running()):
                    raise
                await asyncio.sleep(0.3)
        missing = {
            name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
            for name, kind in SEARCH_ATTRIBUTES.items()
            if name not in listed.custom_attributes
        }
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )

    def wait_worker_polling(
        self, worker: ManagedProcess, since: float, timeout: float = 60
    ) -> None:
        """Wait until a worker polls the task queue (a poller seen after ``since``).

        Raises:
            StartupError: The worker exited or never polled.

        """
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        async def polling() -> bool:
            client = await self._client()
            resp = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self._base.temporal_namespace,
                    task_queue=TaskQueue(name=self._base.temporal_task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                )
            )
            return any(p.last_access_time.ToSeconds() >= int(since) for p in resp.pollers)

        worker.wait_until(lambda: asyncio.run(polling()), timeout, "it polled the task queue")

    async def _sync_schedules(self) -> list[str]:
        from opsflow.worker.schedules import sync_schedules

        assert self.settings is not None
        return await sync_schedules(await self._client(), self.settings)

    def _admin_token(self) -> str:
        path = self.state_dir / ADMIN_TOKEN_FILE
        if path.is_file():
            token = path.read_text("utf-8").strip()
            if token and self._token_works(token):
                return token
        token = self.make_token("admin", name=f"dev-admin-{time.strftime('%Y%m%d-%H%M%S')}")
        _write_private(path, token + "\n")
        return token

    def _token_works(self, token: str) -> bool:
        if self.api is None:
            return False
        resp = httpx.get(
            f"{self.api_url}/runbooks", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        return resp.status_code == 200

    def make_token(self, role: str, name: str | None = None) -> str:
        """Create an API token with ``role`` in the stack's database; return the plaintext.

        Args:
            role: One of the roles of :class:`opsflow.shared.roles.Role`.
            name: Unique token name (a random one when omitted).

        """
        from opsflow.adapters.postgres import open_pool
        from opsflow.adapters.tokens import create_token
        from opsflow.shared.roles import Role

        assert self.database is not None
        url = self.database.database_url
        token_name = name or f"{role}-{secrets.token_hex(4)}"

        async def create() -> str:
            pool = await open_pool(url, name="dev-stack", min_size=1, max_size=1)
            try:
                return await create_token(
                    pool, name=token_name, role=Role(role), created_by="system:opsflow-dev"
                )
            finally:
                await pool.close()

        return asyncio.run(create())

    # ----------------------------------------------------------------- probes

    def mails(self) -> list[EmailMessage]:
        """Return every mail the SMTP sink kept, oldest first."""
        return read_mails(self.mail_dir)

    def sms(self) -> list[dict[str, Any]]:
        """Return every SMS/webhook envelope the HTTP sink kept, oldest first."""
        return read_envelopes(self.sms_dir)

    def wait_http(
        self, url: str, timeout: float = 30.0, ok: Callable[[int], bool] = lambda s: s < 500
    ) -> int:
        """Wait until ``url`` answers with a status ``ok`` accepts; return that status."""
        return wait_http(url, timeout=timeout, ok=ok)

    # ----------------------------------------------------------- faults, stop

    def kill_worker(self) -> None:
        """SIGKILL the worker (crash simulation)."""
        if self.worker is not None:
            self.worker.kill()

    def restart_worker(self, wait: bool = True) -> None:
        """Start the worker again (after :meth:`kill_worker` or a crash); wait until it polls."""
        if self.worker is None:
            self.worker = self._python_process("worker", "opsflow.worker")
        elif self.worker.running():
            self.worker.stop()
        since = time.time() - 1
        self.worker.start()
        if wait:
            self.wait_worker_polling(self.worker, since)

    def restart_api(self) -> None:
        """Start the API again and wait for ``/healthz``."""
        if self.api is None:
            self.api = self._python_process("api", "opsflow.api")
        elif self.api.running():
            self.api.stop()
        self.api.start()
        self.api.wait_until(
            http_ready(f"{self.api_url}/healthz", ok=lambda s: s == 200), 90, "/healthz said 200"
        )

    def stop_s3(self) -> None:
        """Stop SeaweedFS (its data stays)."""
        if self.weed is not None:
            self.weed.stop()

    def start_s3(self) -> None:
        """Start SeaweedFS again on the same folder and wait until S3 serves stored data.

        Raises:
            StartupError: S3 did not serve data in time (see :meth:`wait_s3_ready`).

        """
        if self.weed is None:
            self.weed = self._weed_process()
        self.weed.start()
        self.wait_s3_ready()

    def restart_temporal(self) -> None:
        """Stop and start the Temporal dev server on the same database file."""
        assert self.temporal is not None
        self.temporal.stop()
        self.temporal.start()
        self.temporal.wait_until(tcp_ready(self.ports.temporal), 60, "its gRPC port opened")

    def stop(self) -> None:
        """Stop everything: worker (gracefully) and API first, then the servers."""
        for proc in (self.worker, self.api):
            if proc is not None:
                proc.stop()
        for sink in (self.http_sink, self.mail_sink):
            if sink is not None:
                sink.stop()
        for proc in (self.weed, self.temporal):
            if proc is not None:
                proc.stop()
        if self.private_pg is not None:
            self.private_pg.stop()

    def children(self) -> dict[str, ManagedProcess]:
        """Return the child processes by name (those started so far)."""
        found = {"temporal": self.temporal, "seaweedfs": self.weed, "worker": self.worker,
                 "api": self.api}  # fmt: skip
        return {k: v for k, v in found.items() if v is not None}

    # ---------------------------------------------------------------- report

    def summary(self) -> str:
        """Where everything is, for people (no secrets but the admin token itself)."""
        db = self.database
        lines = [
            "",
            "opsflow dev stack is up (Ctrl-C stops all of it)",
            f"  API docs        {self.api_url}/docs",
            f"  Temporal Web UI {self.ui_url}",
            f"  Temporal gRPC   {self.temporal_address}",
            f"  S3 endpoint     {self.s3_endpoint}  (credentials in {self.state_dir / ENV_FILE})",
            f"  PostgreSQL      {_redact(db.database_admin_url) if db else '-'}"
            + ("  (private cluster)" if db and db.private else ""),
            f"  mail folder     {self.mail_dir}  (SMTP {HOST}:{self.ports.smtp})",
            f"  SMS folder      {self.sms_dir}  (POST http://{HOST}:{self.ports.sms}/sms)",
            f"  logs            {self.logs_dir}",
            f"  settings        {self.state_dir / ENV_FILE}  (read by the CLI in this checkout)",
        ]
        if self.admin_token:
            lines += ["", "Admin token (also in OPSFLOW_TOKEN of the settings file):",
                      f"  {self.admin_token}"]  # fmt: skip
        return "\n".join(lines) + "\n"


def _redact(url: str) -> str:
    from opsflow.config import redact_url

    return redact_url(url)


def postgres_host(url: str) -> str:
    """Return ``host:port`` of a URL (for messages)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


_SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def _settings_from(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the values of ``environ`` that are settings, keyed by field name.

    Settings are built with explicit values rather than from ``os.environ`` so the stack
    decides from the environment it was given (tests pass their own).
    """
    return {k.lower(): v for k, v in environ.items() if k.upper() in _SETTING_NAMES
            and k.upper() != "MAIL_ALLOWLIST" and k.upper() != "ONCALL_EMAILS"}  # fmt: skip


@contextmanager
def running_stack(options: StackOptions) -> Iterator[Stack]:
    """Start a stack for the duration of a ``with`` block."""
    stack = Stack(options)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _supervise(stack: Stack, stop: threading.Event) -> int:
    """Watch the children until ``stop`` is set; return the exit status to use."""
    while not stop.wait(0.5):
        for name, proc in stack.children().items():
            if proc.running():
                continue
            code = proc.returncode()
            print(
                f"\n!!! {name} exited unexpectedly (status {code}); last lines of "
                f"{proc.log_path}:\n{proc.tail(20)}\n",
                file=sys.stderr,
                flush=True,
            )
            if name in ("worker", "api") and proc.restarts < 1:
                proc.restarts += 1
                print(f"!!! restarting {name} once", file=sys.stderr, flush=True)
                try:
                    if name == "worker":
                        stack.restart_worker()
                    else:
                        stack.restart_api()
                except StartupError as exc:
                    print(f"!!! {exc}", file=sys.stderr, flush=True)
                    return 1
                continue
            print(f"!!! {name} is down for good: stopping the stack", file=sys.stderr, flush=True)
            return 1
    return 0


def run_dev(state_dir: Path | None = None, ports: DevPorts | None = None, **overrides: Any) -> int:
    """Run the local stack in the foreground until SIGINT/SIGTERM; return the exit status.

    Args:
        state_dir: State folder (default ``OPSFLOW_HOME`` or ``./.opsflow``).
        ports: Ports to use (default :meth:`DevPorts.from_env`).
        **overrides: Other :class:`StackOptions` fields (``sync_schedules=False``...).

    Returns:
        0 after a clean stop on a signal, 1 when a component failed.

    """
    from opsflow.config import state_dir as default_state_dir

    options = StackOptions(
        state_dir=state_dir or default_state_dir(),
        ports=ports or DevPorts.from_env(),
        **overrides,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(options)
    code = 0
    try:
        print(f"starting the opsflow dev stack in {stack.state_dir} ...", flush=True)
        # Start in the main thread: children get PR_SET_PDEATHSIG, which fires when the
        # *thread* that started them ends. A signal during start is honoured right after it.
        try:
            stack.start()
        except Exception as exc:
            print(f"opsflow dev: start failed: {exc}", file=sys.stderr, flush=True)
            return 1
        if stop.is_set():
            return 0
        print(stack.summary(), flush=True)
        code = _supervise(stack, stop)
    finally:
        print("stopping the opsflow dev stack ...", flush=True)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped.", flush=True)
    return code
