"""The bench stack's worker between parts: running, and past its one-time dbt warm-up.

The parts of ``make bench`` share one private stack, and a part may leave its worker stopped
(the API start bench's quiet phase does). A part that needs the worker calls
:func:`ensure_worker` first, then :func:`wait_dbt_warm` with the offset it returned, so that
neither a stopped worker nor the warm-up of a restarted one lands in its figures.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

# What the worker logs when its dbt warm-up is over (either way).
DBT_WARM_UP_DONE = (b"dbt ready (project parsed)", b"dbt warm-up failed")


def worker_log_size(stack: Any) -> int:
    """Bytes in the worker's log so far (a later warm-up's line comes after them)."""
    path = stack.worker.log_path if stack.worker is not None else None
    return path.stat().st_size if path is not None and path.exists() else 0


def ensure_worker(stack: Any) -> int:
    """Start the stack's worker again if a part stopped it; return where its log starts.

    Returns:
        The offset in the worker's log from which its warm-up line counts: 0 for a worker
        running since the stack started (its whole log), else the log's size before the
        restart (an earlier process's line must not count).

    """
    if stack.worker is not None and stack.worker.running():
        return 0
    offset = worker_log_size(stack)
    stack.restart_worker()
    return offset


async def wait_dbt_warm(stack: Any, log_offset: int, limit: float = 300) -> float:
    """Wait until the worker's log, after ``log_offset``, says its dbt warm-up is over.

    A worker imports and parses dbt once, in a thread, at its first quiet second 20 s after
    it starts (``WORKER_DBT_WARMUP_DELAY``): several seconds of CPU and the GIL. The bench
    lets that happen before it measures, so a one-time start-up cost does not land in the
    middle of one side's figures. Only new bytes of the log are read. Returns the seconds
    waited.

    Raises:
        TimeoutError: no such line within ``limit`` seconds.
        RuntimeError: the worker is not running (the line would never come).

    """
    assert stack.worker is not None
    t0 = time.monotonic()
    seen = b""
    while not any(line in seen for line in DBT_WARM_UP_DONE):
        if time.monotonic() - t0 > limit:
            raise TimeoutError(f"the worker did not warm up dbt within {limit:.0f} s")
        if not stack.worker.running():
            raise RuntimeError(f"the worker is not running (see {stack.worker.log_path})")
        await asyncio.sleep(0.5)
        with stack.worker.log_path.open("rb") as log:
            log.seek(log_offset + len(seen))
            seen += log.read()
    return time.monotonic() - t0
