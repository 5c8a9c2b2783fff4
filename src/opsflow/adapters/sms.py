"""SMS through an HTTP gateway (a webhook URL and bearer token), with the notifications ledger.

Each message carries an idempotency key, sent as the ``Idempotency-Key`` header and used as the
key of its ``notifications`` row. A retry after a crash between the gateway's answer and the
ledger update sends the same key again; the gateway recognises it (answers 200 "duplicate"),
so the person gets one SMS and the ledger ends ``sent``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog
from psycopg_pool import AsyncConnectionPool

from opsflow.adapters import notifications
from opsflow.config import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Proxy:
    """Where a request goes through, and its credentials as a header (never in ``repr``)."""

    url: str
    headers: dict[str, str] | None = field(default=None, repr=False)


def proxy_for(url: str) -> Proxy | None:
    """Return the proxy ``HTTP(S)_PROXY`` names for ``url``, unless ``NO_PROXY`` exempts it.

    Read once per gateway. aiohttp's ``trust_env`` read the environment again for every
    request, in a thread (a hop to the thread pool and back for each SMS). Credentials in the
    proxy URL go as a ``Proxy-Authorization`` header, as aiohttp did with them.
    """
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    where = urlsplit(proxy)
    if where.username is None:
        return Proxy(url=proxy)
    auth = aiohttp.encode_basic_auth(unquote(where.username), unquote(where.password or ""))
    bare = where._replace(netloc=where.netloc.rpartition("@")[2]).geturl()
    return Proxy(url=bare, headers={"Proxy-Authorization": auth})


class SmsDeliveryError(RuntimeError):
    """The gateway refused or could not be reached (retryable)."""


@dataclass
class SmsGateway:
    """Where SMS go. The token stays out of ``repr``.

    One HTTP session per event loop, kept between messages: its connection pool and TLS
    context are built once, not per SMS (building them cost more CPU than the send). aiohttp
    (C HTTP parser): a POST costs the worker about 0.4 ms of CPU against 2.7 ms through httpx,
    and every escalation sends one.
    """

    url: str | None
    token: str | None = None
    timeout_s: float = 10.0
    _sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # HTTP(S)_PROXY / NO_PROXY as operators expect, read when the gateway is built.
    _proxy: Proxy | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._proxy = proxy_for(self.url) if self.url else None

    @classmethod
    def from_settings(cls, s: Settings) -> SmsGateway:
        """Build from ``SMS_WEBHOOK_URL`` / ``SMS_WEBHOOK_TOKEN``."""
        return cls(
            url=s.sms_webhook_url,
            token=s.sms_webhook_token.get_secret_value() if s.sms_webhook_token else None,
        )

    def __repr__(self) -> str:
        return f"SmsGateway(url={self.url!r})"

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old in [k for k in self._sessions if k.is_closed()]:
                del self._sessions[old]  # sessions of loops that ended
            session = self._sessions[loop] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return session

    async def aclose(self) -> None:
        """Close this event loop's session (the worker calls it when it stops)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    async def post(self, key: str, to: list[str], text: str) -> bool:
        """POST one message; return True when the gateway saw this key before.

        Raises:
            SmsDeliveryError: a network error or a non-2xx answer.

        """
        if not self.url:
            raise SmsDeliveryError("SMS_WEBHOOK_URL is not set")
        headers = {"Idempotency-Key": key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._session().post(
                self.url,
                json={"to": to, "text": text},
                headers=headers,
                proxy=self._proxy.url if self._proxy else None,
                proxy_headers=self._proxy.headers if self._proxy else None,
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SmsDeliveryError(f"SMS gateway unreachable: {type(exc).__name__}") from None
        if status >= 300:
            raise SmsDeliveryError(f"SMS gateway answered {status}")
        try:
            body = json.loads(raw)
        except ValueError:
            return False
        return bool(isinstance(body, dict) and body.get("duplicate"))


async def deliver_sms(
    pool: AsyncConnectionPool, gateway: SmsGateway, key: str, to: list[str], text: str
) -> str:
    """Send ``text`` to ``to`` at most once per ``key``; return the notification status.

    Statuses: ``sent``, or ``suppressed`` when there is no recipient. A failure is recorded
    (``failed``, counted by health-check) and raised, so the activity retries.

    """
    status = await notifications.claim(pool, key, "sms", to, text[:200])
    if status in notifications.DONE:
        return status
    if not to:
        await notifications.set_status(pool, key, "suppressed", None)
        return "suppressed"
    try:
        duplicate = await gateway.post(key, to, text)
    except SmsDeliveryError as exc:
        await notifications.set_status(pool, key, "failed", str(exc))
        log.warning("sms delivery failed", key=key, error=str(exc))
        raise
    if duplicate:
        log.info("sms already delivered by the gateway; recording it", key=key)
    await notifications.set_status(pool, key, "sent", None)
    return "sent"
