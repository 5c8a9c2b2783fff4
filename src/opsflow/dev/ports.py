"""The ports of the local stack: fixed defaults, each overridable by environment, or all free.

``make dev`` uses the well-known ports of DESIGN.md (Temporal 7233, Web UI 8233, S3 8333,
API 8080, SMTP 1025, SMS 1080). Tests ask for :meth:`DevPorts.free`, so several stacks can run
on one machine at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields

HOST = "127.0.0.1"

# SeaweedFS's plugin worker dials the admin server on ``admin.port + 10000`` whatever
# ``-admin.port.grpc`` says (seen with weed 4.48), so that pair must keep this offset.
WEED_GRPC_OFFSET = 10000


@dataclass(frozen=True)
class DevPorts:
    """Every TCP port the local stack listens on (all bound to 127.0.0.1).

    Each field is overridable by the environment variable ``OPSFLOW_<FIELD>_PORT`` upper-cased
    (``temporal`` → ``OPSFLOW_TEMPORAL_PORT``, ``s3`` → ``OPSFLOW_S3_PORT``).
    """

    temporal: int = 7233
    temporal_ui: int = 8233
    temporal_http: int = 7243
    temporal_metrics: int = 7244
    s3: int = 8333
    s3_grpc: int = 18333
    weed_master: int = 9333
    weed_master_grpc: int = 19333
    weed_volume: int = 9340
    weed_volume_grpc: int = 19340
    weed_filer: int = 8888
    weed_filer_grpc: int = 18888
    weed_admin: int = 23646
    smtp: int = 1025
    sms: int = 1080
    api: int = 8080
    worker_metrics: int = 9464
    postgres: int = 55432  # the private cluster, used only when DATABASE_URL is unreachable

    @property
    def weed_admin_grpc(self) -> int:
        """The admin server's gRPC port (always ``weed_admin + 10000``, see module notes)."""
        return self.weed_admin + WEED_GRPC_OFFSET

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DevPorts:
        """Return the default ports, each replaced by its ``OPSFLOW_*_PORT`` variable if set.

        Args:
            environ: Where to read the variables (``os.environ`` when omitted).

        Raises:
            ValueError: A variable is not a port number.

        """
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            name = f"OPSFLOW_{f.name.upper()}_PORT"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                port = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be a port number, got {raw!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"{name} must be between 1 and 65535, got {port}")
            values[f.name] = port
        return cls(**values)

    @classmethod
    def free(cls) -> DevPorts:
        """Return ports that are free right now (the kernel's choice), for tests.

        All sockets stay open until every port is chosen, so no port is handed out twice.
        """
        with contextlib.ExitStack() as stack:
            taken: set[int] = set()

            def grab() -> int:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, 0))
                port = int(sock.getsockname()[1])
                taken.add(port)
                return port

            values: dict[str, int] = {}
            for f in fields(cls):
                if f.name == "weed_admin":
                    continue
                values[f.name] = grab()
            values["weed_admin"] = _free_pair(stack, taken)
            return cls(**values)

    def all_ports(self) -> dict[str, int]:
        """Return every port by name, including derived ones."""
        ports = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        ports["weed_admin_grpc"] = self.weed_admin_grpc
        return ports


def _free_pair(stack: contextlib.ExitStack, taken: set[int]) -> int:
    """Bind a port ``p`` such that ``p + WEED_GRPC_OFFSET`` is free too; return ``p``."""
    for _ in range(200):
        first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        first.bind((HOST, 0))
        port = int(first.getsockname()[1])
        if port in taken or port + WEED_GRPC_OFFSET > 65535:
            continue
        second = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            second.bind((HOST, port + WEED_GRPC_OFFSET))
        except OSError:
            continue
        taken.update({port, port + WEED_GRPC_OFFSET})
        return port
    raise RuntimeError("no free port pair found for the SeaweedFS admin server")


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def busy_ports(ports: DevPorts, skip: set[str] | None = None) -> list[str]:
    """Return ``name=port`` for every port of ``ports`` that something already listens on.

    Args:
        ports: The ports about to be used.
        skip: Names not to check (e.g. ``postgres`` when an outside server is used).

    """
    skip = skip or set()
    return [
        f"{name}={port}"
        for name, port in ports.all_ports().items()
        if name not in skip and port_open(port)
    ]
