"""Serve the API with uvicorn: ``python -m opsflow.api``.

Ends with ``os._exit`` after a clean shutdown: a process that used a Temporal client can abort
at interpreter exit (sdk-python issue 300), which would turn a clean stop into exit 134.
"""

from __future__ import annotations

import gc
import logging
import os

import structlog
import uvicorn

from opsflow.api.app import create_app
from opsflow.config import Settings, get_settings
from opsflow.logs import configure_logging


def serve(settings: Settings) -> int:
    """Run the API until SIGINT/SIGTERM; return the process exit status."""
    log = structlog.get_logger("opsflow.api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # configure_logging owns logging: JSON lines, redacted
        access_log=False,  # the request log (with route, actor, latency) replaces it
        server_header=False,
        loop="uvloop",  # C event loop and HTTP parser: less CPU per request than asyncio + h11
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    try:
        config.load()  # imports the loop and protocol modules now, so the freeze has them
        # Modules, the app and its routes live as long as the process: out of the collector's
        # full passes, which would walk all of it mid-request (about 0.1 s each in the worker).
        gc.freeze()
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:
        log.exception("api crashed")
        return 1
    return 0 if server.started else 1


def main() -> None:
    """Entry point: configure logging, serve, exit hard after shutdown."""
    settings = get_settings()
    configure_logging(settings, "api")
    status = serve(settings)
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":
    main()
