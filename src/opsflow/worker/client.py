"""Temporal client construction (the API, CLI and worker all connect through here)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from opsflow.config import Settings
from opsflow.worker.converter import DATA_CONVERTER


def metrics_runtime(bind_address: str) -> Runtime:
    """Return a runtime that serves the SDK's Prometheus metrics on ``bind_address``."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """Connect to the configured Temporal frontend and namespace."""
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key,
        tls=settings.temporal_tls,
        runtime=runtime,
        data_converter=DATA_CONVERTER,
    )
