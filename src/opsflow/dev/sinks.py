"""Local stand-ins for the outside world the runbooks talk to: mail, SMS/webhooks, app health.

- :class:`MailSink` is an SMTP server (aiosmtpd) that keeps every accepted message as one
  ``.eml`` file. Two headers are prepended so tests can see the SMTP envelope (Bcc included):
  ``X-Opsflow-Envelope-From`` and ``X-Opsflow-Envelope-To``.
- :class:`HttpSink` is a small HTTP server:

  ``POST /sms`` and ``POST /webhook/<name>``
      A JSON body is stored as one file ``<time>-<seq>-<channel>.json`` holding
      ``{"channel", "path", "received_at", "idempotency_key", "body"}``. When a token is set,
      ``Authorization: Bearer <token>`` is required (401 otherwise). A repeated
      ``Idempotency-Key`` on the same channel stores nothing and answers 200 with
      ``"duplicate": true``; a new message answers 201. Not JSON: 400; over 1 MiB: 413.
  ``GET /api/health``
      The operated application's health URL in development: ``{"status": "ok"}`` by default.
  ``PUT /api/health``
      ``{"status": "...", "code": 200, "delay_ms": 0}`` changes what ``GET /api/health``
      answers (for health-check tests and demos).
  ``POST /_sink/faults``
      ``{"fail_next": N, "status": 503, "mail_fail_next": M}``: the next N SMS/webhook posts
      answer ``status`` and store nothing; the next M mails are refused with a 451.
  ``GET /_sink/messages``
      Every stored SMS/webhook envelope, oldest first.

Both bind to 127.0.0.1 only and run in background threads of the process that owns them.
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

HOST = "127.0.0.1"
MAX_BODY = 1024 * 1024
_CHANNEL_RE = re.compile(r"^/(sms|webhook/[A-Za-z0-9_.-]{1,100})/?$")
_SEQ = itertools.count()


def _stamp() -> str:
    """Return a sortable, unique file-name prefix: UTC time (microseconds) and a sequence."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{next(_SEQ):06d}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so a reader never sees a half-written file (write, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------- mail


class _MailHandler:
    """aiosmtpd handler: one ``.eml`` file per accepted message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fail_next = 0
        self._lock = threading.Lock()
        # Mail readers drop a second copy with the same Message-ID; the sink does the same, so
        # a sender's retry after a crash between send and record is delivered once. Seeded
        # from the folder so a restarted sink still knows what it kept. ``duplicates`` lists
        # the Message-IDs dropped, for tests that prove a retry really re-sent.
        self.duplicates: list[str] = []
        # Called with each stored file's path (in the sink's thread), e.g. by the bench,
        # which would otherwise poll the folder.
        self.listeners: list[Callable[[Path], None]] = []
        self._seen: set[str] = {
            mid for path in sorted(folder.glob("*.eml")) if (mid := _message_id(path.read_bytes()))
        }

    def take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.take_failure():
            return "451 4.3.0 Temporary failure (opsflow mail sink told to fail)"
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        head = (
            f"X-Opsflow-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Opsflow-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        mid = _message_id(bytes(content))
        with self._lock:
            if mid and mid in self._seen:
                self.duplicates.append(mid)
                return "250 Message accepted (duplicate Message-ID, already delivered)"
            if mid:
                self._seen.add(mid)
        name = f"{_stamp()}-{uuid.uuid4().hex[:8]}.eml"
        _write_atomic(self.folder / name, head + bytes(content))
        for listener in list(self.listeners):
            listener(self.folder / name)
        return "250 Message accepted for delivery"


def _message_id(raw: bytes) -> str | None:
    """Return the Message-ID header of a raw message (headers only are parsed).

    With the compat32 policy: the default policy builds a structured header object for every
    header of the message, which cost the sink more CPU than storing the mail. A msg-id has
    no whitespace inside (RFC 5322), so a folded one is joined back by dropping it.
    """
    value = BytesHeaderParser().parsebytes(raw).get("Message-ID")
    return ("".join(str(value).split()) or None) if value else None


# A plain "<local@domain>" (what opsflow's mailer sends), with the ESMTP parameters after it.
_PLAIN_PATH = re.compile(r"\s*<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>")


class _SinkSMTP(SMTP):
    """aiosmtpd's server with a fast path for plain addresses in MAIL FROM and RCPT TO.

    aiosmtpd parses each address with the email package's full RFC 5322 parser (about 0.1 ms
    a time, four times per escalation mail, on the cores the bench measures); a plain
    ``<local@domain>`` needs one match. Anything else (quoted local parts, comments, source
    routes, over-long local parts) goes to aiosmtpd's parser as before.
    """

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.match(arg)
        if match is not None:
            local = match.group(1).rpartition("@")[0]
            if not self.local_part_limit or len(local) <= self.local_part_limit:
                return match.group(1), arg[match.end() :]
        return super()._getaddr(arg)


class _SinkController(Controller):
    def factory(self) -> SMTP:
        return _SinkSMTP(self.handler, **self.SMTP_kwargs)


def _accept_any_login(*_args: Any) -> AuthResult:
    # The sink stands in for a relay: any credentials are fine, so an adapter configured
    # with SMTP_USERNAME/SMTP_PASSWORD works against it unchanged.
    return AuthResult(success=True)


class MailSink:
    """An SMTP server on 127.0.0.1 that stores each message as an ``.eml`` file."""

    def __init__(self, folder: Path, port: int, host: str = HOST) -> None:
        """Prepare the sink (nothing listens until :meth:`start`).

        Args:
            folder: Where the ``.eml`` files go (created if missing).
            port: TCP port to listen on.
            host: Address to bind (loopback by default).

        """
        self.folder = folder
        self.port = port
        self.host = host
        self._handler = _MailHandler(folder)
        self._controller: Controller | None = None

    def start(self) -> None:
        """Start listening (in a background thread); returns once the server answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        controller = _SinkController(
            self._handler,
            hostname=self.host,
            port=self.port,
            auth_require_tls=False,
            authenticator=_accept_any_login,
            data_size_limit=50 * 1024 * 1024,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def duplicates(self) -> list[str]:
        """Return the Message-IDs received again and dropped, oldest first."""
        with self._handler._lock:
            return list(self._handler.duplicates)

    def fail_next(self, count: int) -> None:
        """Refuse the next ``count`` messages with a temporary (451) failure."""
        with self._handler._lock:
            self._handler.fail_next = max(0, count)

    def messages(self) -> list[EmailMessage]:
        """Return every stored message, oldest first."""
        return read_mails(self.folder)

    def listen(self, listener: Callable[[Path], None]) -> None:
        """Call ``listener(path)`` for each message stored from now on (in the sink's thread)."""
        self._handler.listeners.append(listener)


def read_mails(folder: Path) -> list[EmailMessage]:
    """Parse every ``.eml`` file of ``folder``, oldest first.

    Args:
        folder: A mail sink's folder.

    Returns:
        The messages (``email.message.EmailMessage`` with the default policy).

    """
    parser = BytesParser(policy=policy.default)
    found: list[EmailMessage] = []
    for path in sorted(folder.glob("*.eml")):
        with path.open("rb") as fh:
            msg = parser.parse(fh)
        assert isinstance(msg, EmailMessage)  # policy.default builds EmailMessage
        found.append(msg)
    return found


# ------------------------------------------------------------------------------------- HTTP


@dataclass
class _HealthState:
    status: str = "ok"
    code: int = 200
    delay_ms: int = 0


@dataclass
class _HttpState:
    folder: Path
    token: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: set[tuple[str, str]] = field(default_factory=set)
    fail_next: int = 0
    fail_status: int = 503
    health: _HealthState = field(default_factory=_HealthState)
    mail: MailSink | None = None


def read_envelopes(folder: Path) -> list[dict[str, Any]]:
    """Return every stored SMS/webhook envelope of ``folder``, oldest first.

    Args:
        folder: An HTTP sink's folder.

    """
    found: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict):
            found.append(data)
    return found


class _Handler(BaseHTTPRequestHandler):
    server_version = "opsflow-sink/1"
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes; with Nagle's algorithm the body waited
    # for the client's delayed ACK, 40 ms per request on a kept-alive connection.
    disable_nagle_algorithm = True

    @property
    def state(self) -> _HttpState:
        state: _HttpState = self.server.state  # type: ignore[attr-defined]
        return state

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines could carry tokens in query strings; keep the terminal quiet instead.
        return

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self) -> tuple[Any, int | None]:
        """Return (parsed body, None) or (None, error status) after draining the body."""
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            return None, 400
        if length > MAX_BODY:
            self.close_connection = True
            return None, 413
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(raw or b"null"), None
        except ValueError:
            return None, 400

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/health":
            health = self.state.health
            if health.delay_ms > 0:
                time.sleep(health.delay_ms / 1000)
            self._reply(health.code, {"status": health.status})
        elif path == "/_sink/messages":
            with self.state.lock:
                self._reply(200, {"messages": read_envelopes(self.state.folder)})
        else:
            self._reply(404, {"error": "not found"})

    def do_PUT(self) -> None:
        if self.path.split("?", 1)[0] != "/api/health":
            self._reply(404, {"error": "not found"})
            return
        body, error = self._read_json()
        if error is not None or not isinstance(body, dict):
            self._reply(error or 400, {"error": "expected a JSON object"})
            return
        health = self.state.health
        with self.state.lock:
            health.status = str(body.get("status", health.status))
            health.code = int(body.get("code", health.code))
            health.delay_ms = int(body.get("delay_ms", health.delay_ms))
        self._reply(200, {"status": health.status, "code": health.code})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_sink/faults":
            self._faults()
            return
        match = _CHANNEL_RE.match(path)
        if match is None:
            self._reply(404, {"error": "not found"})
            return
        state = self.state
        if state.token is not None:
            expected = f"Bearer {state.token}".encode()
            given = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(given, expected):
                self._read_json()
                self._reply(401, {"error": "missing or bad bearer token"})
                return
        body, error = self._read_json()
        if error is not None:
            self._reply(error, {"error": "body must be JSON of at most 1 MiB"})
            return
        channel = match.group(1)
        key = self.headers.get("Idempotency-Key")
        with state.lock:
            if state.fail_next > 0:
                state.fail_next -= 1
                self._reply(state.fail_status, {"error": "sink told to fail"})
                return
            if key is not None and (channel, key) in state.seen:
                self._reply(200, {"stored": False, "duplicate": True})
                return
            message_id = f"{_stamp()}-{channel.replace('/', '_')}"
            envelope = {
                "id": message_id,
                "channel": channel,
                "path": path,
                "received_at": datetime.now(UTC).isoformat(),
                "idempotency_key": key,
                "body": body,
            }
            _write_atomic(state.folder / f"{message_id}.json", json.dumps(envelope).encode())
            if key is not None:
                state.seen.add((channel, key))
        self._reply(201, {"stored": True, "duplicate": False, "id": message_id})

    def _faults(self) -> None:
        body, error = self._read_json()
        if error is not None or not isinstance(body, dict):
            self._reply(error or 400, {"error": "expected a JSON object"})
            return
        state = self.state
        with state.lock:
            state.fail_next = max(0, int(body.get("fail_next", 0)))
            state.fail_status = int(body.get("status", 503))
        if state.mail is not None and "mail_fail_next" in body:
            state.mail.fail_next(int(body["mail_fail_next"]))
        self._reply(200, {"fail_next": state.fail_next, "status": state.fail_status})


class HttpSink:
    """The SMS/webhook sink and development app-health endpoint (see the module notes)."""

    def __init__(
        self,
        folder: Path,
        port: int,
        token: str | None = None,
        host: str = HOST,
        mail: MailSink | None = None,
    ) -> None:
        """Prepare the sink (nothing listens until :meth:`start`).

        Args:
            folder: Where the JSON envelopes go (created if missing).
            port: TCP port to listen on.
            token: Bearer token callers must present; None accepts any caller.
            host: Address to bind (loopback by default).
            mail: A mail sink whose failures ``/_sink/faults`` may also set.

        """
        self.folder = folder
        self.port = port
        self.host = host
        self._state = _HttpState(folder=folder, token=token, mail=mail)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start listening in a background thread (keys already stored count as seen)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for envelope in read_envelopes(self.folder):
            key = envelope.get("idempotency_key")
            if isinstance(key, str):
                self._state.seen.add((str(envelope.get("channel")), key))
        server = ThreadingHTTPServer((self.host, self.port), _Handler)
        server.daemon_threads = True
        server.state = self._state  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"http-sink-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def messages(self) -> list[dict[str, Any]]:
        """Return every stored envelope, oldest first."""
        with self._state.lock:
            return read_envelopes(self.folder)

    def set_health(self, status: str = "ok", code: int = 200, delay_ms: int = 0) -> None:
        """Change what ``GET /api/health`` answers."""
        with self._state.lock:
            self._state.health = _HealthState(status=status, code=code, delay_ms=delay_ms)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` SMS/webhook posts with ``status`` and store nothing."""
        with self._state.lock:
            self._state.fail_next = max(0, count)
            self._state.fail_status = status


def main(argv: list[str] | None = None) -> int:
    """Run both sinks in the foreground until interrupted (``python -m opsflow.dev.sinks``)."""
    parser = argparse.ArgumentParser(description="opsflow's local mail and SMS/webhook sinks")
    parser.add_argument("--mail-dir", type=Path, default=Path(".opsflow/mail"))
    parser.add_argument("--sms-dir", type=Path, default=Path(".opsflow/sms"))
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=1080)
    args = parser.parse_args(argv)
    mail = MailSink(args.mail_dir, args.smtp_port)
    http = HttpSink(
        args.sms_dir, args.http_port, token=os.environ.get("SMS_WEBHOOK_TOKEN"), mail=mail
    )
    mail.start()
    http.start()
    print(f"SMTP sink on {HOST}:{args.smtp_port} -> {args.mail_dir}", flush=True)
    print(f"SMS/webhook sink on http://{HOST}:{args.http_port} -> {args.sms_dir}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        http.stop()
        mail.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
