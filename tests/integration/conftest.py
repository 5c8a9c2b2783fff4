"""The real platform, once per session: Temporal, PostgreSQL, SeaweedFS, sinks, worker, API.

Everything listens on free ports and keeps its state in a temporary folder, and the databases
come from the ``databases`` fixture (unique names), so several people can run the suite on one
machine at once. Worker and API logs are in ``<state>/logs/``; a component that does not come
up fails the session with the tail of its log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client

from opsflow.dev.ports import DevPorts
from opsflow.dev.postgres import DatabaseUrls
from opsflow.dev.stack import Stack, StackOptions, clean_environ


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder needs the real servers.
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The running platform (see :class:`opsflow.dev.stack.Stack` for what it offers)."""
    state = tmp_path_factory.mktemp("stack")
    urls = DatabaseUrls(
        server_admin_url=databases.server_admin_url,
        database_url=databases.opsflow_url,
        database_admin_url=databases.opsflow_admin_url,
        target_database_url=databases.app_url,
        private=False,
    )
    options = StackOptions(
        state_dir=state,
        ports=DevPorts.free(),
        environ=clean_environ(),
        database=urls,
        # Tests start what they need; a schedule firing mid-test would add mails and runs.
        sync_schedules=False,
        admin_token=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    running = Stack(options)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture(scope="session")
async def temporal_client(stack: Stack) -> AsyncIterator[Client]:
    """A Temporal client connected to the stack's dev server and namespace."""
    assert stack.settings is not None
    client = await Client.connect(
        stack.temporal_address, namespace=stack.settings.temporal_namespace
    )
    yield client
