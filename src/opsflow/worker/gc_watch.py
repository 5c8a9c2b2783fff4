"""Say when Python's garbage collector stops the worker for long.

The worker keeps every cached workflow as Python objects (an SLA workflow about 185 of them:
its instance, its asyncio tasks and coroutines, its info and search attributes, its data
converter). A full pass of the collector walks all of them, and nothing else runs in the
worker meanwhile: no workflow task, no activity, no heartbeat. Measured on the SLA bench (a
2-core machine, 20,500 workflows cached): 1.15 to 1.3 s a pass. A full pass comes when the
long-lived objects have grown by a quarter since the last one, so several times while
thousands of workflows are armed and seldom once the cache is full.

:class:`GcPauseWatch` times every pass and logs a warning for each that took longer than its
threshold, so that a latency spike seen in the Web UI or a benchmark can be told apart from a
slow server. The collector's callback only notes the pause (it can run in any thread, in the
middle of any allocation, even inside the logging code); :meth:`GcPauseWatch.report` logs the
notes from the event loop.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("opsflow.worker")

# A pass this long delays every workflow task that waits behind it noticeably.
DEFAULT_THRESHOLD_S = 0.25


@dataclass(frozen=True)
class GcPause:
    """One collector pass that took at least the threshold."""

    seconds: float
    generation: int
    collected: int


class GcPauseWatch:
    """Times the garbage collector's passes through ``gc.callbacks``."""

    def __init__(
        self,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Watch for passes of at least ``threshold_s`` seconds, timed with ``clock``."""
        self.threshold_s = threshold_s
        self._clock = clock
        self._started = 0.0
        # Appended by the callback, emptied by ``flush``: deque operations are atomic.
        self._pending: deque[GcPause] = deque(maxlen=100)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """Note the start of a pass, and at its end the pass if it was long (``gc.callbacks``)."""
        if phase == "start":
            self._started = self._clock()
            return
        took = self._clock() - self._started
        if took >= self.threshold_s:
            self._pending.append(
                GcPause(round(took, 3), int(info["generation"]), int(info["collected"]))
            )

    def install(self) -> None:
        """Start timing passes."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        """Stop timing passes."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def flush(self) -> list[GcPause]:
        """Log a warning for each long pass noted since the last flush; return them."""
        pauses: list[GcPause] = []
        while self._pending:
            pause = self._pending.popleft()
            pauses.append(pause)
            log.warning(
                "garbage collection paused the worker",
                seconds=pause.seconds,
                generation=pause.generation,
                collected=pause.collected,
                hint="a full pass walks every cached workflow: see WORKER_MAX_CACHED_WORKFLOWS",
            )
        return pauses

    async def report(self, interval_s: float = 1.0) -> None:
        """Flush every ``interval_s`` seconds until cancelled."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.flush()
        finally:
            self.flush()
