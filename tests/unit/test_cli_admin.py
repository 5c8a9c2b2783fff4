"""The CLI's admin and process commands, with the platform parts they call replaced by fakes.

The real database paths are exercised in tests/integration/test_cli.py; here each command's
contract is pinned: what goes to stdout, what to stderr, the exit code, what is called.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from opsflow.cli import main as cli
from opsflow.cli.main import CliState, app
from opsflow.config import Settings
from opsflow.seed import SeedReport
from opsflow.shared.roles import Role

SECRET_TOKEN = "opsf_created_token_value_1234567890"


class TokenNameTaken(Exception):
    pass


@dataclass
class FakeTokenInfo:
    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None
    token_hash: str = "deadbeef" * 8  # must never be shown


@dataclass
class Verification:
    ok: bool
    rows_checked: int
    first_bad_id: int | None
    reason: str | None


class Fakes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.verification = Verification(True, 12, None, None)
        self.revoke_result = True
        self.taken = False
        self.exit_codes: list[int] = []

    def module(self, name: str, _what: str) -> Any:
        return self.modules[name]

    @property
    def modules(self) -> dict[str, Any]:
        async def create_token(pool: Any, *, name: str, role: Role, created_by: str) -> str:
            self.calls.append(("create", (name, role, created_by)))
            if self.taken:
                raise TokenNameTaken(name)
            return SECRET_TOKEN

        async def list_tokens(pool: Any) -> list[FakeTokenInfo]:
            now = datetime(2026, 11, 21, 8, tzinfo=UTC)
            return [
                FakeTokenInfo(1, "ops", Role.OPERATOR, now, "cli:alice", None, now),
                FakeTokenInfo(2, "old", Role.ADMIN, now, "cli:bob", now, None),
            ]

        async def revoke_token(pool: Any, name: str, *, actor: str) -> bool:
            self.calls.append(("revoke", (name, actor)))
            return self.revoke_result

        async def verify_chain(conn: Any) -> Verification:
            return self.verification

        def upgrade(which: str, settings: Settings) -> None:
            self.calls.append(("upgrade", which))

        def seed(
            url: str,
            *,
            requests: int,
            tenants: int,
            random_seed: int,
            progress: Any,
            reset: bool,
        ) -> SeedReport:
            self.calls.append(("seed", (url, requests, tenants, reset)))
            progress("organizations", tenants, tenants)
            progress("service_requests", requests // 2, requests)
            progress("service_requests", requests, requests)
            return SeedReport(
                rows={"organizations": tenants, "service_requests": requests}, seconds=0.5
            )

        async def worker_main() -> int:
            self.calls.append(("worker", None))
            return 3

        def api_main() -> None:
            raise SystemExit(0)

        async def connect(settings: Settings) -> str:
            return "client"

        async def sync_schedules(client: str, settings: Settings) -> list[str]:
            self.calls.append(("sync", client))
            return ["health-check"]

        return {
            "opsflow.adapters.tokens": SimpleNamespace(
                create_token=create_token,
                list_tokens=list_tokens,
                revoke_token=revoke_token,
                TokenNameTaken=TokenNameTaken,
            ),
            "opsflow.adapters.audit": SimpleNamespace(verify_chain=verify_chain),
            "opsflow.db": SimpleNamespace(upgrade=upgrade),
            "opsflow.seed": SimpleNamespace(seed=seed),
            "opsflow.worker.main": SimpleNamespace(main=worker_main),
            "opsflow.api.__main__": SimpleNamespace(main=api_main),
            "opsflow.worker.client": SimpleNamespace(connect=connect),
            "opsflow.worker.schedules": SimpleNamespace(sync_schedules=sync_schedules),
        }


class FakeConn:
    async def __aenter__(self) -> FakeConn:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


class FakePool:
    closed = False

    def connection(self) -> FakeConn:
        return FakeConn()

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    fake = Fakes()
    pool = FakePool()

    async def open_pool(_settings: Settings) -> FakePool:
        return pool

    monkeypatch.setattr(cli, "_optional", fake.module)
    monkeypatch.setattr(cli, "_open_pool", open_pool)
    return fake


def invoke(fakes: Fakes, *args: str) -> Any:
    settings = Settings(
        database_url=SecretStr("postgresql://svc:pw@db.test/opsflow"),
        target_database_url=SecretStr("postgresql://app:pw@db.test/app"),
        opsflow_token=SecretStr("opsf_env_token_never_printed"),
    )
    state = CliState(settings=settings, hard_exit=fakes.exit_codes.append, configure_logs=False)
    result = CliRunner().invoke(app, list(args), obj=state)
    assert "opsf_env_token_never_printed" not in result.output
    assert "pw@" not in result.output
    return result


def test_token_create_prints_only_the_token(fakes: Fakes) -> None:
    result = invoke(fakes, "token", "create", "--role", "ADMIN", "--name", "ci")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == SECRET_TOKEN + "\n"
    assert "shown only this once" in result.stderr
    assert SECRET_TOKEN not in result.stderr
    ((kind, (name, role, created_by)),) = fakes.calls
    assert (kind, name, role) == ("create", "ci", Role.ADMIN)
    assert created_by.startswith("cli:")


def test_token_create_name_taken(fakes: Fakes) -> None:
    fakes.taken = True
    result = invoke(fakes, "token", "create", "--role", "operator", "--name", "ci")
    assert result.exit_code == 1
    assert "a token named 'ci' already exists" in result.stderr
    assert result.stdout == ""


def test_token_create_refuses_unknown_role(fakes: Fakes) -> None:
    result = invoke(fakes, "token", "create", "--role", "root", "--name", "ci")
    assert result.exit_code == 2
    assert fakes.calls == []


def test_token_list_never_shows_hashes(fakes: Fakes) -> None:
    as_json = invoke(fakes, "token", "list", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [r["name"] for r in rows] == ["ops", "old"]
    assert rows[0]["role"] == "operator"
    assert all("token_hash" not in r for r in rows)
    assert "deadbeef" not in as_json.stdout
    table = invoke(fakes, "token", "list")
    assert "revoked" in table.stdout and "active" in table.stdout
    assert "deadbeef" not in table.stdout


def test_token_revoke(fakes: Fakes) -> None:
    ok = invoke(fakes, "token", "revoke", "ops")
    assert ok.exit_code == 0, ok.stderr
    assert fakes.calls[0][0] == "revoke" and fakes.calls[0][1][0] == "ops"
    fakes.revoke_result = False
    missing = invoke(fakes, "token", "revoke", "nope")
    assert missing.exit_code == 1
    assert "no active token named 'nope'" in missing.stderr


def test_audit_verify_ok_and_broken(fakes: Fakes) -> None:
    ok = invoke(fakes, "audit", "verify")
    assert ok.exit_code == 0, ok.stderr
    assert "12 rows checked" in ok.stdout
    fakes.verification = Verification(False, 41, 42, "row 42: content does not match its hash")
    broken = invoke(fakes, "audit", "verify")
    assert broken.exit_code == 1
    assert "row id 42" in broken.stderr and "does not match its hash" in broken.stderr
    as_json = invoke(fakes, "audit", "verify", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["first_bad_id"] == 42


def test_db_upgrade_and_seed(fakes: Fakes) -> None:
    up = invoke(fakes, "db", "upgrade", "--which", "app")
    assert up.exit_code == 0, up.stderr
    assert ("upgrade", "app") in fakes.calls
    seeded = invoke(fakes, "seed", "--requests", "1000", "--tenants", "5", "--reset")
    assert seeded.exit_code == 0, seeded.stderr
    assert ("seed", ("postgresql://app:pw@db.test/app", 1000, 5, True)) in fakes.calls
    assert "1,005 rows in 0.5 s: 2,010 rows/s" in seeded.stdout
    assert "service_requests" in seeded.stdout
    assert "1000/1000" in seeded.stderr  # the per-table bar, on stderr
    as_json = invoke(fakes, "seed", "--requests", "10", "--tenants", "2", "--json")
    summary = json.loads(as_json.stdout)
    assert summary["total_rows"] == 12 and summary["rows_per_second"] == 24.0


def test_process_commands_exit_with_their_code(fakes: Fakes) -> None:
    worker = invoke(fakes, "worker")
    assert ("worker", None) in fakes.calls  # the async main was awaited
    assert fakes.exit_codes == [3]
    assert worker.exit_code == 3
    api = invoke(fakes, "api")
    assert fakes.exit_codes == [3, 0]
    assert api.exit_code == 0


def test_missing_part_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        if name == "opsflow.dev.stack":
            raise ImportError("No module named 'opsflow.dev.stack'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    codes: list[int] = []
    state = CliState(settings=Settings(), hard_exit=codes.append, configure_logs=False)
    result = CliRunner().invoke(app, ["dev"], obj=state)
    assert codes == [1]
    assert "the dev stack is not available" in result.stderr
    assert "opsflow.dev.stack" in result.stderr


def test_schedules_sync(fakes: Fakes) -> None:
    result = invoke(fakes, "schedules", "sync")
    assert ("sync", "client") in fakes.calls
    assert fakes.exit_codes == [0]
    assert "health-check" in result.stdout
