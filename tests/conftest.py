"""Session-wide test setup: the database fixture plugin and a safe process exit."""

from __future__ import annotations

import os
import sys

import pytest

pytest_plugins = ["tests.fixtures.databases"]

_EXIT_STATUS: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with the session's status before the interpreter shuts down.

    A process that used a Temporal client can abort at interpreter exit (``Fatal Python
    error: PyGILState_Release``, exit 134, sdk-python issue 300) after every test passed, so
    once pytest has reported everything, ``os._exit`` skips the interpreter's teardown.
    """
    if "status" not in _EXIT_STATUS:
        return  # not a test session (e.g. --help or a collection error before it started)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS["status"])
