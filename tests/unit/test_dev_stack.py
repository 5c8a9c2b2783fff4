"""Pieces of the local stack that need no servers: ports, settings file, supervision."""

from __future__ import annotations

import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from opsflow.config import Settings
from opsflow.dev import stack as stack_mod
from opsflow.dev.ports import WEED_GRPC_OFFSET, DevPorts
from opsflow.dev.procs import ManagedProcess
from opsflow.dev.stack import StackSecrets, clean_environ, read_env_file, write_env_file


def test_ports_default_and_env_overrides() -> None:
    assert DevPorts.from_env({}).temporal == 7233
    ports = DevPorts.from_env({"OPSFLOW_TEMPORAL_PORT": "17233", "OPSFLOW_API_PORT": "18080"})
    assert (ports.temporal, ports.api, ports.s3) == (17233, 18080, 8333)
    with pytest.raises(ValueError, match="OPSFLOW_S3_PORT"):
        DevPorts.from_env({"OPSFLOW_S3_PORT": "eighty"})
    with pytest.raises(ValueError, match="OPSFLOW_S3_PORT"):
        DevPorts.from_env({"OPSFLOW_S3_PORT": "70000"})


def test_free_ports_are_distinct_and_keep_the_weed_admin_offset() -> None:
    ports = DevPorts.free()
    values = list(ports.all_ports().values())
    assert len(values) == len(set(values))
    assert ports.weed_admin_grpc == ports.weed_admin + WEED_GRPC_OFFSET <= 65535


def test_env_file_round_trips_through_load_settings(tmp_path: Path) -> None:
    values = {
        "DATABASE_URL": "postgresql://opsflow_service@127.0.0.1:5432/opsflow",
        "S3_SECRET_ACCESS_KEY": "abc#def'x y",
        "SMTP_PORT": "2525",
        "SMTP_PASSWORD": 'p a$ss \\ "q" $HOME',
        "SMS_WEBHOOK_TOKEN": "",
    }
    path = tmp_path / "env"
    write_env_file(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == values
    settings = Settings(_env_file=str(path))
    assert settings.smtp_port == 2525
    assert settings.s3_secret_access_key.get_secret_value() == "abc#def'x y"


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    first = StackSecrets.load_or_create(tmp_path)
    again = StackSecrets.load_or_create(tmp_path)
    assert first == again
    assert len(first.s3_secret_access_key) == 40
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600


def test_clean_environ_drops_only_opsflow_settings() -> None:
    env = {"PATH": "/bin", "DATABASE_URL": "x", "OPSFLOW_TOKEN": "t", "S3_REGION": "r", "HOME": "/"}
    assert clean_environ(env) == {"PATH": "/bin", "HOME": "/"}


class _FakeStack:
    """Just enough of Stack for the supervisor: children, and restarts that we count."""

    def __init__(self, tmp_path: Path, argv: list[str]) -> None:
        self.worker = ManagedProcess("worker", argv, tmp_path / "worker.log")
        self.worker.start()
        self.restarted = 0

    def children(self) -> dict[str, ManagedProcess]:
        return {"worker": self.worker}

    def restart_worker(self) -> None:
        self.restarted += 1
        self.worker.start()


def test_supervisor_restarts_a_dead_worker_once_then_gives_up(tmp_path: Path) -> None:
    crash = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    fake: Any = _FakeStack(tmp_path, crash)
    stop = threading.Event()
    code = stack_mod._supervise(fake, stop)
    assert code == 1
    assert fake.restarted == 1
    assert "boom" in fake.worker.tail()


def test_supervisor_returns_0_when_asked_to_stop(tmp_path: Path) -> None:
    fake: Any = _FakeStack(tmp_path, [sys.executable, "-c", "import time; time.sleep(30)"])
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    try:
        assert stack_mod._supervise(fake, stop) == 0
        assert fake.restarted == 0
    finally:
        fake.worker.stop(timeout=5)
    assert fake.worker.returncode() is not None
