"""Child processes of the local stack: start with a log file, wait until ready, stop in order.

Children run in their own session, so a Ctrl-C in the terminal reaches only the supervisor,
which then stops them in a chosen order (worker first, gracefully). On Linux each child also
gets ``PR_SET_PDEATHSIG``: if the supervisor itself is killed, its children do not outlive it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from opsflow.dev.ports import port_open

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this (child) process when its parent goes away."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class StartupError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One child process with its command, environment and log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # What to send for a graceful stop, and how long to wait before SIGKILL.
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 20.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the process, appending its stdout and stderr to :attr:`log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(
            f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode()
        )
        self._log.flush()
        self.proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int | None:
        """The process id while it has been started."""
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        """Return True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        """Return the exit status once it ended (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop gracefully: the stop signal, then SIGKILL after the timeout.

        Args:
            timeout: Seconds to wait for a graceful exit (default :attr:`stop_timeout`).

        Returns:
            The exit status, or None if it was never started.

        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children of the child (if any) go too: they share its process group.
        self._signal_group(signal.SIGKILL)
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process group at once (crash simulation) and reap it."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._close_log()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 40) -> str:
        """Return the last lines of this process's log."""
        return log_tail(self.log_path, lines)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it is true; raise with the log tail on exit or timeout.

        Args:
            ready: A cheap probe (port open, HTTP answer...).
            timeout: Seconds to wait.
            what: What is awaited, for the error message.

        Raises:
            StartupError: The process ended or the probe never succeeded.

        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                code = self.returncode()
                raise StartupError(
                    f"{self.name} exited with status {code} before {what}; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            try:
                if ready():
                    return
            except Exception:  # noqa: S110 - any probe failure means "not yet"
                pass
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{self.name} not ready after {timeout:.0f}s ({what}); "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.2)


def tcp_ready(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    """Return a probe that is true once ``host:port`` accepts connections."""
    return lambda: port_open(port, host)


def http_ready(url: str, ok: Callable[[int], bool] = lambda s: s < 500) -> Callable[[], bool]:
    """Return a probe that is true once ``url`` answers with a status ``ok`` accepts."""

    def probe() -> bool:
        try:
            return ok(httpx.get(url, timeout=2.0).status_code)
        except httpx.HTTPError:
            return False

    return probe


def wait_http(
    url: str, timeout: float = 30.0, ok: Callable[[int], bool] = lambda s: s < 500
) -> int:
    """Wait until ``url`` answers with a status ``ok`` accepts; return that status.

    Raises:
        TimeoutError: It never did within ``timeout`` seconds.

    """
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            status = httpx.get(url, timeout=2.0).status_code
            if ok(status):
                return status
            last = f"status {status}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last})")
