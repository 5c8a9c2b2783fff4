"""Structured logging for every opsflow process: JSON lines on stderr, secrets redacted.

``configure_logging`` routes both structlog and the standard library's ``logging`` (uvicorn,
temporalio, psycopg, botocore) through one pipeline, so every line is JSON with an ISO
timestamp, the level, the component and whatever context is bound, and every line goes through
:func:`redact_event` first. Redaction is a last line of defence: code must still never log a
secret on purpose.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor, WrappedLogger

from opsflow.config import Settings

REDACTED = "***"

# Keys whose values are secrets wherever they appear in an event (nested dicts included).
_SECRET_KEY = re.compile(
    r"token|password|passwd|pwd|secret|authorization|api[_-]?key|private[_-]?key|credential"
    r"|cookie|session[_-]?key",
    re.IGNORECASE,
)
# Keys that match the pattern above but only name or count things; hiding them would make
# the logs useless for tracing who did what.
_SAFE_KEYS = frozenset({"token_name", "token_id", "token_role", "token_count"})

# Patterns redacted inside any string value: opsflow bearer tokens, Authorization headers,
# passwords in connection URLs and in libpq / key=value strings.
_TOKEN = re.compile(r"opsf_[A-Za-z0-9_\-]{4,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+")
# userinfo up to the last "@" before the host: a password may itself contain "@" or ":".
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*):[^\s/]*@")
_KV_SECRET = re.compile(
    r"(?i)\b([a-z_]*(?:password|passwd|secret|api_key|apikey|access_key|token)[a-z_]*)"
    # "key=value", "key: value", '"key": "value"'; not "token:alice" (an actor id, no space).
    r"([\"']?\s*(?:=|:\s)\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&)]+)"
)
_KV_SAFE = frozenset(k.lower() for k in _SAFE_KEYS)
# Each pattern above needs one of these words to match: a string without any is left as it
# is after one scan instead of four (most strings of a log line: routes, ids, actors).
_MAYBE_SECRET = re.compile(
    r"(?i)bearer|opsf_|://|password|passwd|secret|api_key|apikey|access_key|token"
)


def redact_text(text: str) -> str:
    """Return ``text`` with tokens, bearer credentials and passwords replaced by ``***``."""
    if not text or not _MAYBE_SECRET.search(text):
        return text
    text = _BEARER.sub(r"\1 " + REDACTED, text)
    text = _TOKEN.sub("opsf_" + REDACTED, text)
    text = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", text)

    def _kv(match: re.Match[str]) -> str:
        if match.group(1).lower() in _KV_SAFE:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{REDACTED}"

    return _KV_SECRET.sub(_kv, text)


def is_secret_key(key: object) -> bool:
    """Return True if a mapping key names a secret (``password``, ``api_key``, ...)."""
    return isinstance(key, str) and _names_secret(key)


# Every key of every log line is checked, and keys repeat (event, level, route, actor...):
# the answer per key is kept, bounded, instead of a regex search each time.
@functools.lru_cache(maxsize=4096)
def _names_secret(key: str) -> bool:
    return key.lower() not in _SAFE_KEYS and bool(_SECRET_KEY.search(key))


def redact_value(value: Any, depth: int = 0) -> Any:
    """Redact a value of any shape: strings by pattern, mappings by key name, recursively."""
    if depth > 20:
        # Cycles or absurd nesting: a marker is safer than recursing forever.
        return "<nested too deep>"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(k) and v is not None else redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered with str() by the JSON renderer; redact that rendering, since
    # objects such as exceptions or settings can carry a URL with a password in their text.
    return redact_text(str(value))


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Structlog processor: redact secrets from every key and value of an event."""
    out: EventDict = {}
    for key, value in event_dict.items():
        if is_secret_key(key) and value is not None:
            out[key] = REDACTED
        else:
            out[key] = redact_value(value)
    return out


def _add_component(component: str) -> Processor:
    def processor(
        _logger: WrappedLogger, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("component", component)
        return event_dict

    return processor


# The handler configure_logging installed last, so a second call replaces it (tests, the dev
# supervisor) instead of printing every line twice.
_installed_handler: logging.Handler | None = None


def configure_logging(settings: Settings, component: str) -> None:
    """Send structlog and stdlib logging to stderr as redacted JSON lines.

    Args:
        settings: Process settings; ``settings.log_level`` (e.g. ``INFO``) sets the level.
        component: Name of the process (``api``, ``worker``, ``cli``), added to every line.

    """
    global _installed_handler
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_component(component),
    ]
    formatter = ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            # Redact last but before rendering, so rendered tracebacks are covered too.
            redact_event,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _installed_handler = handler
    # Uvicorn installs its own handlers unless told otherwise; ours must be the only ones, and
    # its access log is replaced by the API's request log (which knows the route and actor).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers.clear()
        lib_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests and the dev supervisor reconfigure within one process.
        cache_logger_on_first_use=False,
    )
