"""``make dev`` / ``opsflow dev`` brought up once, probed as a developer would, stopped, reused.

The stack runs as ``python -m opsflow.dev`` (what ``make dev`` runs after installing) on free
ports, with a temporary state folder and its own databases on the test server, so it never
meets the session's ``stack`` fixture or a developer's running ``make dev``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import httpx
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from opsflow.dev.ports import DevPorts
from opsflow.dev.postgres import PrivateCluster, plan_urls, provision
from opsflow.dev.procs import StartupError
from opsflow.dev.stack import (
    S3_PROBE_BODY,
    S3_PROBE_KEY,
    Stack,
    StackSecrets,
    clean_environ,
    read_env_file,
)

ROOT = Path(__file__).resolve().parents[2]


def _server_url(url: str, dbname: str = "postgres") -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _processes_mentioning(text: str) -> list[str]:
    """Processes whose command line or environment mentions ``text`` (not this one)."""
    found: list[str] = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if needle in cmdline or needle in environ:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {shown}")
    return found


class DevRun:
    """One ``python -m opsflow.dev`` process and its output."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opsflow.dev"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if "Admin token" in text and text.rstrip().splitlines()[-1].strip().startswith("opsf_"):
                return text
            if self.proc.poll() is not None:
                pytest.fail(f"opsflow dev exited with {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.3)
        self.proc.kill()
        pytest.fail(f"opsflow dev not ready after {timeout}s:\n{self.text()[-4000:]}")

    def interrupt(self, timeout: float = 90) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.out.close()
        return code


@pytest.fixture
def dev_env(databases: Any) -> Iterator[tuple[dict[str, str], Path, DevPorts]]:
    # Under /tmp with a short path, readable by the PostgreSQL user should a private cluster
    # ever be needed.
    state = Path(tempfile.mkdtemp(prefix="opsflow-dev-"))
    ports = DevPorts.free()
    server = databases.server_admin_url
    suffix = secrets.token_hex(4)
    ops_db, app_db = f"devtest_opsflow_{suffix}", f"devtest_app_{suffix}"
    admin = urlsplit(server)
    env = clean_environ()
    for name, port in ports.all_ports().items():
        if name != "weed_admin_grpc":
            env[f"OPSFLOW_{name.upper()}_PORT"] = str(port)
    env.update(
        {
            "OPSFLOW_HOME": str(state),
            "DATABASE_ADMIN_URL": _server_url(server, ops_db),
            "DATABASE_URL": urlunsplit(
                admin._replace(
                    netloc=f"opsflow_service@{admin.hostname}:{admin.port or 5432}",
                    path=f"/{ops_db}",
                )
            ),
            "TARGET_DATABASE_URL": _server_url(server, app_db),
        }
    )
    try:
        yield env, state, ports
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            for db in (ops_db, app_db):
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(state, ignore_errors=True)


def _s3(env: dict[str, str], **creds: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=creds.get("key", env["S3_ACCESS_KEY_ID"]),
        aws_secret_access_key=creds.get("secret", env["S3_SECRET_ACCESS_KEY"]),
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}),
    )  # fmt: skip


def test_make_dev_comes_up_stops_cleanly_and_reuses_state(
    dev_env: tuple[dict[str, str], Path, DevPorts], tmp_path: Path
) -> None:
    env, state, ports = dev_env
    first = DevRun(env, tmp_path / "first.log")
    try:
        out = first.wait_ready()
    except BaseException:
        first.interrupt()
        raise
    try:
        token = out.rstrip().splitlines()[-1].strip()
        api = f"http://127.0.0.1:{ports.api}"
        # Where everything is, printed.
        for where in (
            f"{api}/docs",
            f"http://127.0.0.1:{ports.temporal_ui}",
            f"http://127.0.0.1:{ports.s3}",
            str(state / "mail"),
            str(state / "sms"),
        ):
            assert where in out, where  # fmt: skip
        # The settings file: private, complete, and the CLI's source of truth.
        env_file = state / "env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((state / "admin-token").stat().st_mode) == 0o600
        settings = read_env_file(env_file)
        for key in (
            "TEMPORAL_ADDRESS",
            "DATABASE_URL",
            "DATABASE_ADMIN_URL",
            "TARGET_DATABASE_URL",
            "S3_ENDPOINT_URL",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
            "SMTP_HOST",
            "SMTP_PORT",
            "SMS_WEBHOOK_URL",
            "APP_HEALTH_URL",
            "OPSFLOW_URL",
            "OPSFLOW_TOKEN",
        ):
            assert settings.get(key), key  # fmt: skip
        assert settings["OPSFLOW_TOKEN"] == token
        assert settings["TEMPORAL_ADDRESS"] == f"127.0.0.1:{ports.temporal}"
        assert settings["S3_SECRET_ACCESS_KEY"] not in out, "S3 secret printed"

        # API, Web UI, S3, sinks.
        assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
        runbooks = httpx.get(f"{api}/runbooks", headers={"Authorization": f"Bearer {token}"})
        assert runbooks.status_code == 200, runbooks.text
        assert "health-check" in runbooks.text
        denied = httpx.get(f"{api}/runbooks", headers={"Authorization": "Bearer opsf_nope"})
        assert denied.status_code == 401
        assert httpx.get(f"http://127.0.0.1:{ports.temporal_ui}/", timeout=10).status_code == 200
        s3 = _s3(settings)
        buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert {"msds-audit-exports", "opsflow-backups", "opsflow-attachments"} <= buckets
        s3.put_object(Bucket="opsflow-attachments", Key="devtest/marker.txt", Body=b"kept")
        # The readiness probe keeps exactly one object per bucket, under its hidden prefix.
        for bucket in ("msds-audit-exports", "opsflow-backups", "opsflow-attachments"):
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=".opsflow-probe/")
            assert [o["Key"] for o in listed.get("Contents", [])] == [S3_PROBE_KEY], bucket
            probe = s3.get_object(Bucket=bucket, Key=S3_PROBE_KEY)
            assert probe["Body"].read() == S3_PROBE_BODY
        with pytest.raises(ClientError):
            _s3(settings, key="AKIAWRONG", secret="wrong").list_buckets()
        assert (state / "mail").is_dir()
        sms = httpx.post(
            settings["SMS_WEBHOOK_URL"],
            json={"to": "+15550100", "text": "hi"},
            headers={"Authorization": f"Bearer {settings['SMS_WEBHOOK_TOKEN']}"},
        )
        assert sms.status_code == 201
        assert len(list((state / "sms").glob("*.json"))) == 1
        health = httpx.get(settings["APP_HEALTH_URL"])
        assert health.json() == {"status": "ok"}

        # A second terminal: no exports, only OPSFLOW_HOME (the checkout's .opsflow/ otherwise).
        cli_env = {**clean_environ(), "OPSFLOW_HOME": str(state)}
        cli = subprocess.run(
            [sys.executable, "-m", "opsflow", "runbooks", "--json"],
            env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "health-check" in cli.stdout
    finally:
        code = first.interrupt()
    assert code == 0, first.text()[-3000:]
    assert "stopped." in first.text()
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(state)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(str(state)) == []

    # Again on the same state: same credentials, same token, same data.
    second = DevRun(env, tmp_path / "second.log")
    try:
        out2 = second.wait_ready()
        assert out2.rstrip().splitlines()[-1].strip() == token
        again = read_env_file(state / "env")
        assert again["S3_ACCESS_KEY_ID"] == settings["S3_ACCESS_KEY_ID"]
        body = _s3(again).get_object(Bucket="opsflow-attachments", Key="devtest/marker.txt")
        assert body["Body"].read() == b"kept"
        assert (state / "temporal.db").stat().st_size > 0
    finally:
        code2 = second.interrupt()
    assert code2 == 0, second.text()[-3000:]
    assert _processes_mentioning(str(state)) == []


def test_start_s3_returns_only_once_stored_objects_are_served(stack: Stack) -> None:
    # weed mini answers S3 seconds before it serves stored objects (GetObject said
    # InternalError in that window): start_s3 must not return inside it. A client without
    # retries reads right after each restart, so any such window fails the test.
    s3 = _s3(stack.env)
    key = f"devtest/restart-{secrets.token_hex(4)}.txt"
    bucket = stack.env["S3_ATTACHMENTS_BUCKET"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"survives restarts")
    try:
        for _ in range(3):
            stack.stop_s3()
            stack.start_s3()
            got = _s3(stack.env).get_object(Bucket=bucket, Key=key)
            assert got["Body"].read() == b"survives restarts"
    finally:
        _s3(stack.env).delete_object(Bucket=bucket, Key=key)


def test_s3_readiness_fails_naming_s3_when_data_is_never_served(stack: Stack) -> None:
    # A stack whose credentials SeaweedFS refuses: S3 answers, but never serves data.
    other = Stack(stack.options)
    other.weed = stack.weed
    other.secrets = StackSecrets(
        s3_access_key_id="OPSFWRONGWRONGWRONG1",
        s3_secret_access_key="not-the-secret-" + secrets.token_hex(8),
        sms_webhook_token="unused",
    )
    started = time.monotonic()
    with pytest.raises(StartupError) as caught:
        other.wait_s3_ready(timeout=2)
    assert time.monotonic() - started < 30, "the wait is bounded"
    message = str(caught.value)
    assert f"S3 at {stack.s3_endpoint} did not serve data" in message
    assert "InvalidAccessKeyId" in message or "AccessDenied" in message, message
    assert other.secrets.s3_secret_access_key not in message


def test_private_postgres_cluster_when_no_server_is_reachable() -> None:
    debian = list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if shutil.which("initdb") is None and not debian:
        pytest.fail("initdb is not installed: the private-cluster path cannot be tested")
    root = Path(tempfile.mkdtemp(prefix="opsflow-pg-"))
    os.chmod(root, 0o755)  # the postgres user (when running as root) must reach it
    port = DevPorts.free().postgres
    cluster = PrivateCluster(root / "pg", port)
    try:
        assert cluster.start() is True
        assert cluster.running()
        urls = plan_urls({}, cluster.url, private=True)
        assert urls.database_url == f"postgresql://opsflow_service@127.0.0.1:{port}/opsflow"
        provision(urls)
        provision(urls)  # idempotent
        with psycopg.connect(urls.database_url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("opsflow_service",)
        with psycopg.connect(urls.target_database_url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("app",)
        cluster.stop()
        assert not cluster.running()
        # Reused, not re-created, on the next start.
        assert cluster.start() is True
        with psycopg.connect(urls.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert _processes_mentioning(str(root)) == []
