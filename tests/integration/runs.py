"""Helpers for integration tests that follow a run through the HTTP API."""

from __future__ import annotations

import time
from typing import Any

import httpx


def wait_run(
    api: httpx.Client, headers: dict[str, str], wid: str, timeout: float = 90.0
) -> dict[str, Any]:
    """Poll ``GET /runs/{wid}`` until the run is no longer RUNNING; return its body."""
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = api.get(f"/runs/{wid}", headers=headers).json()
        if run.get("status") != "RUNNING":
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"{wid} still running after {timeout:.0f} s")
        time.sleep(0.3)
