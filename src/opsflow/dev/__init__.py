"""The local stack: ``make dev`` / ``opsflow dev`` and the integration tests' fixture.

See :mod:`opsflow.dev.stack` for what starts and :mod:`opsflow.dev.sinks` for the mail and
SMS/webhook sinks.
"""

from opsflow.dev.ports import DevPorts
from opsflow.dev.stack import Stack, StackOptions, run_dev

__all__ = ["DevPorts", "Stack", "StackOptions", "run_dev"]
