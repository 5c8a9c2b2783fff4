"""SMTP delivery with test mode, an allowlist and a notifications ledger.

Every mail carries an idempotency key that becomes its ``Message-ID`` and the key of its
``notifications`` row, so a retried activity that already delivered does not send again, and
``health-check`` can count failed deliveries.
"""

from __future__ import annotations

import asyncio
import fnmatch
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email import charset as email_charset
from email.header import Header
from email.message import Message
from email.utils import formatdate

import structlog
from psycopg_pool import AsyncConnectionPool

from opsflow.adapters import notifications
from opsflow.config import Settings
from opsflow.shared.common import MailMessage

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to deliver mail."""

    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    test_mode: bool = True
    allowlist: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: Settings) -> SmtpConfig:
        """Build from settings (the password stays out of repr)."""
        return cls(
            host=s.smtp_host,
            port=s.smtp_port,
            sender=s.smtp_from,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            starttls=s.smtp_starttls,
            test_mode=s.mail_test_mode,
            allowlist=tuple(s.mail_allowlist),
        )

    def __repr__(self) -> str:
        return f"SmtpConfig(host={self.host!r}, port={self.port}, test_mode={self.test_mode})"


# UTF-8 bodies as quoted-printable: readable in the raw message, safe over 7-bit relays.
_UTF8 = email_charset.Charset("utf-8")
_UTF8.header_encoding = email_charset.QP
_UTF8.body_encoding = email_charset.QP


def _one_line(value: str) -> str:
    """Put a header value on one line: a CR or LF in it could start a header of its own."""
    return " ".join(value.splitlines())


def message_id(key: str) -> str:
    """Deterministic Message-ID for an idempotency key."""
    safe = "".join(c if c.isalnum() or c in "-._" else "." for c in key)
    return f"<{safe}@opsflow>"


#: An idle SMTP connection is reused for this long. Servers drop idle clients only after
#: minutes (RFC 5321 asks for at least five), so a reused connection is still open.
SMTP_REUSE_SECONDS = 30.0
#: At most this many idle connections are kept (more are opened while many mails go out).
SMTP_IDLE_MAX = 4


def _quit(smtp: smtplib.SMTP) -> None:
    """Say goodbye to the server; just close if the connection is already gone."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


class Mailer:
    """Sends messages over SMTP (blocking I/O runs in a thread), reusing connections.

    A connection that delivered a message goes back to a small idle list and carries the next
    one: connect, EHLO, STARTTLS and login once, not for every mail (an escalation sends one).
    A connection that failed in any way is closed, never reused; the caller's retry opens a
    new one. :meth:`close` says goodbye to the idle ones.
    """

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._lock = threading.Lock()

    def allowed(self, address: str) -> bool:
        """In test mode, only allowlisted addresses receive mail."""
        if not self.config.test_mode:
            return True
        return any(fnmatch.fnmatch(address.lower(), p.lower()) for p in self.config.allowlist)

    def build(self, msg: MailMessage, recipients: list[str]) -> Message[str, str | Header]:
        """Build the MIME message (one text/plain part).

        The classic (``compat32``) message classes: the default policy's ``EmailMessage``
        parses every header it is given back into objects, 2 ms of CPU per mail against
        0.4 ms, and a worker sends one per escalation. Non-ASCII text is encoded explicitly.
        """
        em: Message[str, str | Header] = Message()
        em.set_payload(msg.body, "us-ascii" if msg.body.isascii() else _UTF8)
        subject = _one_line(msg.subject)
        em["From"] = self.config.sender
        em["To"] = ", ".join(recipients)
        em["Subject"] = subject if subject.isascii() else Header(subject, _UTF8)
        em["Date"] = formatdate(localtime=False, usegmt=True)
        em["Message-ID"] = message_id(msg.idempotency_key)
        em["X-Opsflow-Kind"] = _one_line(msg.kind)
        return em

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        smtp = smtplib.SMTP(c.host, c.port, timeout=30)
        try:
            if c.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if c.username and c.password:
                smtp.login(c.username, c.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _checkout(self) -> smtplib.SMTP:
        """Return an idle connection used within SMTP_REUSE_SECONDS, else a new one."""
        stale: list[smtplib.SMTP] = []
        reused: smtplib.SMTP | None = None
        now = time.monotonic()
        with self._lock:
            while self._idle and reused is None:
                smtp, since = self._idle.pop()
                if now - since < SMTP_REUSE_SECONDS:
                    reused = smtp
                else:
                    stale.append(smtp)
        for smtp in stale:
            _quit(smtp)
        return reused if reused is not None else self._connect()

    def _send_blocking(self, em: Message[str, str | Header], recipients: list[str]) -> None:
        smtp = self._checkout()
        try:
            smtp.send_message(em, to_addrs=recipients)
        except BaseException:
            smtp.close()  # in an unknown state: never reused
            raise
        with self._lock:
            if len(self._idle) < SMTP_IDLE_MAX:
                self._idle.append((smtp, time.monotonic()))
                return
        _quit(smtp)

    def close(self) -> None:
        """Close the idle connections (blocking; a worker calls it once, when it stops)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for smtp, _ in idle:
            _quit(smtp)

    async def send(self, msg: MailMessage, recipients: list[str]) -> None:
        """Deliver to the given recipients."""
        await asyncio.to_thread(self._send_blocking, self.build(msg, recipients), recipients)


async def deliver_mail(pool: AsyncConnectionPool, mailer: Mailer, msg: MailMessage) -> str:
    """Deliver ``msg`` at most once per idempotency key; return the notification status.

    Statuses: ``sent``; ``suppressed`` (test mode dropped every recipient); raises on an SMTP
    failure after recording it, so the activity retries.
    """
    allowed = [r for r in msg.to if mailer.allowed(r)]
    status = await notifications.claim(pool, msg.idempotency_key, "mail", msg.to, msg.subject)
    if status in notifications.DONE:
        return status
    if not allowed:
        await notifications.set_status(pool, msg.idempotency_key, "suppressed", None)
        log.info("mail suppressed by test mode", key=msg.idempotency_key, recipients=len(msg.to))
        return "suppressed"
    try:
        await mailer.send(msg, allowed)
    except (OSError, smtplib.SMTPException) as exc:
        await notifications.set_status(
            pool, msg.idempotency_key, "failed", f"{type(exc).__name__}: {exc}"
        )
        log.warning("mail delivery failed", key=msg.idempotency_key, error=type(exc).__name__)
        raise
    await notifications.set_status(pool, msg.idempotency_key, "sent", None)
    return "sent"
