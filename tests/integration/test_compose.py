"""The scaled deployment (docker-compose.temporal.yml), checked by parsing it.

Docker cannot run here, so the file is read with PyYAML and its variables are interpolated
the way Compose does (``${VAR:?msg}``, ``${VAR:-default}``, ``$$``), to show each service the
README names is there, wired to the others and configured only by environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsflow.shared.ids import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.temporal.yml"
REQUIRED = {
    "POSTGRES_PASSWORD": "pg-secret",
    "OPSFLOW_DB_PASSWORD": "owner-secret",
    "OPSFLOW_SERVICE_PASSWORD": "service-secret",
    "MINIO_ROOT_USER": "minio-root",
    "MINIO_ROOT_PASSWORD": "minio-root-secret",
    "S3_ACCESS_KEY_ID": "opsflow-key",
    "S3_SECRET_ACCESS_KEY": "opsflow-s3-secret",
    "SMTP_HOST": "smtp.example.com",
    "TARGET_DATABASE_URL": "postgresql://app:app-secret@app-db:5432/app",
}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style interpolation of every string in a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, Any]:
    resolved = interpolate(raw, dict(REQUIRED))
    return resolved["services"]  # type: ignore[no-any-return]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


def test_every_service_the_readme_names_is_there(services: dict[str, Any]) -> None:
    for name in ("temporal", "temporal-ui", "postgresql", "minio", "worker", "api"):
        assert name in services, name


def test_temporal_is_postgres_backed_and_registers_the_search_attributes(
    services: dict[str, Any],
) -> None:
    temporal = services["temporal"]
    env = env_of(temporal)
    assert env["DB"].startswith("postgres")
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert env["POSTGRES_PWD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert "postgresql" in temporal["depends_on"]
    script = " ".join(services["temporal-admin-tools"]["command"])
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert name in script
        assert f"--type {kind}" in script
    assert env_of(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_worker_scales_and_api_is_published(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert int(worker["deploy"]["replicas"]) == 2  # OPSFLOW_WORKER_REPLICAS default
    assert worker["command"] == ["python", "-m", "opsflow.worker"]
    assert "ports" not in worker, "replicas cannot share a published port"
    api = services["api"]
    assert api["command"] == ["python", "-m", "opsflow.api"]
    assert any(str(p).endswith(":8080:8080") for p in api["ports"])
    assert env_of(api)["API_HOST"] == "0.0.0.0"
    for svc in (worker, api):
        assert svc["build"]["dockerfile"] == "Dockerfile"
        deps = svc["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["temporal"]["condition"] == "service_healthy"


def test_scaled_replicas_follow_the_environment(raw: dict[str, Any]) -> None:
    resolved = interpolate(raw, {**REQUIRED, "OPSFLOW_WORKER_REPLICAS": "6"})
    assert int(resolved["services"]["worker"]["deploy"]["replicas"]) == 6


def test_opsflow_services_are_configured_by_environment(services: dict[str, Any]) -> None:
    for name in ("worker", "api", "migrate"):
        env = env_of(services[name])
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["DATABASE_URL"] == (
            "postgresql://opsflow_service:service-secret@postgresql:5432/opsflow"
        )
        assert env["DATABASE_ADMIN_URL"].startswith("postgresql://opsflow:owner-secret@")
        assert env["TARGET_DATABASE_URL"] == REQUIRED["TARGET_DATABASE_URL"]
        assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["S3_SECRET_ACCESS_KEY"] == REQUIRED["S3_SECRET_ACCESS_KEY"]
        assert env["SMTP_HOST"] == REQUIRED["SMTP_HOST"]
    minio = env_of(services["minio"])
    assert minio["MINIO_ROOT_PASSWORD"] == REQUIRED["MINIO_ROOT_PASSWORD"]
    setup = " ".join(services["minio-setup"]["command"])
    for bucket in ("S3_AUDIT_BUCKET", "S3_BACKUP_BUCKET", "S3_ATTACHMENTS_BUCKET"):
        assert f"$${bucket}" not in setup and f"${bucket}" in setup


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_each_secret_is_required_not_defaulted(raw: dict[str, Any], missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(MissingVariable, match=missing):
        interpolate(raw, env)


def test_no_secret_is_written_inline(raw: dict[str, Any]) -> None:
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_PWD$|ACCESS_KEY")
    seen = 0

    def walk(node: Any) -> None:
        nonlocal seen
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str | int) and secretish.search(str(key)):
                    seen += 1
                    text = str(value)
                    assert text.startswith("${") or text == "", f"{key} holds a literal value"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(raw)
    assert seen >= 8
    text = COMPOSE.read_text()
    for value in REQUIRED.values():
        assert value not in text


def test_images_build_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert "pip install -r requirements.lock" in dockerfile
    assert "USER opsflow" in dockerfile
    assert (ROOT / "requirements.lock").is_file()
