"""The worker warns about long garbage-collector passes, from the event loop."""

from __future__ import annotations

import asyncio
import gc

from structlog.testing import capture_logs

from opsflow.worker.gc_watch import GcPause, GcPauseWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_pass_is_noted_and_logged_once_a_short_one_is_not() -> None:
    clock = Clock()
    watch = GcPauseWatch(threshold_s=0.25, clock=clock)
    watch("start", {"generation": 0, "collected": 0})
    clock.now += 0.01
    watch("stop", {"generation": 0, "collected": 3})
    watch("start", {"generation": 2, "collected": 0})
    clock.now += 1.2
    watch("stop", {"generation": 2, "collected": 1154})
    with capture_logs() as logs:
        assert watch.flush() == [GcPause(seconds=1.2, generation=2, collected=1154)]
        assert watch.flush() == []  # each pause is reported once
    assert len(logs) == 1
    assert logs[0]["event"] == "garbage collection paused the worker"
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["seconds"] == 1.2 and logs[0]["generation"] == 2
    assert "WORKER_MAX_CACHED_WORKFLOWS" in logs[0]["hint"]


def test_installed_it_times_real_passes_and_removed_it_stops() -> None:
    watch = GcPauseWatch(threshold_s=0.0)  # every pass counts
    watch.install()
    watch.install()  # once only
    try:
        assert gc.callbacks.count(watch) == 1
        gc.collect()
        with capture_logs():
            pauses = watch.flush()
        # The full pass asked for (passes of younger generations may come with it).
        assert 2 in [p.generation for p in pauses]
        assert all(p.seconds >= 0 for p in pauses)
    finally:
        watch.remove()
    assert watch not in gc.callbacks
    with capture_logs():
        watch.flush()  # whatever came between the flush and the removal
    gc.collect()
    assert watch.flush() == []


def test_report_flushes_from_the_loop_and_once_more_when_cancelled() -> None:
    clock = Clock()
    watch = GcPauseWatch(threshold_s=0.25, clock=clock)

    async def scenario() -> list[str]:
        with capture_logs() as logs:
            task = asyncio.create_task(watch.report(interval_s=0.01))
            watch("start", {"generation": 2, "collected": 0})
            clock.now += 0.5
            watch("stop", {"generation": 2, "collected": 7})
            for _ in range(100):
                await asyncio.sleep(0.01)
                if logs:
                    break
            # Noted just before the stop: the last flush still reports it.
            watch("start", {"generation": 1, "collected": 0})
            clock.now += 0.3
            watch("stop", {"generation": 1, "collected": 1})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return [f"{e['generation']}:{e['seconds']}" for e in logs]

    assert asyncio.run(scenario()) == ["2:0.5", "1:0.3"]
