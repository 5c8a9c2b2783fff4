"""The local mail and SMS/webhook sinks: what they store, refuse and deduplicate."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from opsflow.adapters.sms import Proxy, SmsGateway, proxy_for
from opsflow.dev.ports import DevPorts
from opsflow.dev.sinks import HttpSink, MailSink, read_envelopes, read_mails


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[tuple[MailSink, HttpSink, str]]:
    ports = DevPorts.free()
    mail = MailSink(tmp_path / "mail", ports.smtp)
    http = HttpSink(tmp_path / "sms", ports.sms, token="s3cret-token", mail=mail)
    mail.start()
    http.start()
    try:
        yield mail, http, f"http://127.0.0.1:{ports.sms}"
    finally:
        http.stop()
        mail.stop()


def _send(port: int, to: list[str], subject: str, bcc: list[str] | None = None) -> None:
    msg = EmailMessage()
    msg["From"] = "opsflow@localhost"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("body text")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg, to_addrs=to + (bcc or []))


def test_mail_sink_keeps_each_message_as_eml_with_envelope(
    sinks: tuple[MailSink, HttpSink, str],
) -> None:
    mail, _http, _url = sinks
    _send(mail.port, ["a@example.com"], "first", bcc=["hidden@example.com"])
    _send(mail.port, ["b@example.com"], "second")
    files = sorted(mail.folder.glob("*.eml"))
    assert len(files) == 2
    msgs = read_mails(mail.folder)
    assert [m["Subject"] for m in msgs] == ["first", "second"]
    assert msgs[0]["X-Opsflow-Envelope-To"] == "a@example.com, hidden@example.com"
    assert msgs[0]["X-Opsflow-Envelope-From"] == "opsflow@localhost"
    assert "Bcc" not in msgs[0]
    assert msgs[1].get_content().strip() == "body text"


def test_mail_sink_accepts_login_without_tls(sinks: tuple[MailSink, HttpSink, str]) -> None:
    mail, _http, _url = sinks
    with smtplib.SMTP("127.0.0.1", mail.port, timeout=10) as smtp:
        smtp.login("user", "password")
        smtp.sendmail("x@localhost", ["y@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
    assert len(mail.messages()) == 1


def test_mail_sink_fault_injection_refuses_then_recovers(
    sinks: tuple[MailSink, HttpSink, str],
) -> None:
    mail, _http, url = sinks
    r = httpx.post(f"{url}/_sink/faults", json={"mail_fail_next": 1})
    assert r.status_code == 200
    with pytest.raises(smtplib.SMTPDataError) as err:
        _send(mail.port, ["a@example.com"], "refused")
    assert err.value.smtp_code == 451
    _send(mail.port, ["a@example.com"], "accepted")
    assert [m["Subject"] for m in mail.messages()] == ["accepted"]


def test_sms_sink_requires_the_bearer_token(sinks: tuple[MailSink, HttpSink, str]) -> None:
    _mail, http, url = sinks
    assert httpx.post(f"{url}/sms", json={"to": "+1"}).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert httpx.post(f"{url}/sms", json={"to": "+1"}, headers=bad).status_code == 401
    assert http.messages() == []


def test_sms_sink_stores_json_and_deduplicates_by_idempotency_key(
    sinks: tuple[MailSink, HttpSink, str],
) -> None:
    _mail, http, url = sinks
    auth = {"Authorization": "Bearer s3cret-token"}
    first = httpx.post(
        f"{url}/sms",
        json={"to": "+15550001", "text": "disk full"},
        headers={**auth, "Idempotency-Key": "k-1"},
    )
    assert first.status_code == 201
    assert first.json()["stored"] is True
    again = httpx.post(
        f"{url}/sms",
        json={"to": "+15550001", "text": "disk full"},
        headers={**auth, "Idempotency-Key": "k-1"},
    )
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    # The same key on another channel is another message.
    hook = httpx.post(
        f"{url}/webhook/pager", json={"event": "x"}, headers={**auth, "Idempotency-Key": "k-1"}
    )
    assert hook.status_code == 201
    plain = httpx.post(f"{url}/sms", json={"to": "+2"}, headers=auth)
    assert plain.status_code == 201
    stored = read_envelopes(http.folder)
    assert [(e["channel"], e["idempotency_key"]) for e in stored] == [
        ("sms", "k-1"),
        ("webhook/pager", "k-1"),
        ("sms", None),
    ]
    assert stored[0]["body"] == {"to": "+15550001", "text": "disk full"}
    listed = httpx.get(f"{url}/_sink/messages").json()["messages"]
    assert len(listed) == 3


def test_sms_sink_remembers_keys_across_restart(tmp_path: Path) -> None:
    port = DevPorts.free().sms
    first = HttpSink(tmp_path, port)
    first.start()
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/sms", json={}, headers={"Idempotency-Key": "a"})
        assert r.status_code == 201
    finally:
        first.stop()
    second = HttpSink(tmp_path, port)
    second.start()
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/sms", json={}, headers={"Idempotency-Key": "a"})
        assert r.status_code == 200
        assert len(second.messages()) == 1
    finally:
        second.stop()


def test_sms_sink_refuses_bad_bodies_and_paths(sinks: tuple[MailSink, HttpSink, str]) -> None:
    _mail, http, url = sinks
    auth = {"Authorization": "Bearer s3cret-token", "Content-Type": "application/json"}
    assert httpx.post(f"{url}/sms", content=b"{not json", headers=auth).status_code == 400
    big = b'"' + b"x" * (1024 * 1024 + 10) + b'"'
    assert httpx.post(f"{url}/sms", content=big, headers=auth).status_code == 413
    assert httpx.post(f"{url}/other", json={}, headers=auth).status_code == 404
    assert httpx.post(f"{url}/webhook/../../etc", json={}, headers=auth).status_code == 404
    assert http.messages() == []


def test_sms_sink_fault_injection(sinks: tuple[MailSink, HttpSink, str]) -> None:
    _mail, http, url = sinks
    auth = {"Authorization": "Bearer s3cret-token"}
    http.fail_next(2, status=502)
    assert httpx.post(f"{url}/sms", json={}, headers=auth).status_code == 502
    assert httpx.post(f"{url}/sms", json={}, headers=auth).status_code == 502
    assert httpx.post(f"{url}/sms", json={}, headers=auth).status_code == 201
    assert len(http.messages()) == 1


def test_app_health_endpoint_is_settable(sinks: tuple[MailSink, HttpSink, str]) -> None:
    _mail, http, url = sinks
    ok = httpx.get(f"{url}/api/health")
    assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
    r = httpx.put(f"{url}/api/health", json={"status": "degraded", "code": 503})
    assert r.status_code == 200
    down = httpx.get(f"{url}/api/health")
    assert (down.status_code, down.json()) == (503, {"status": "degraded"})
    http.set_health()
    assert httpx.get(f"{url}/api/health").json() == {"status": "ok"}


def _send_with_id(port: int, message_id: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "opsflow@localhost"
    msg["To"] = "a@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content("body")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


def test_mail_sink_delivers_a_message_id_once_even_across_restart(tmp_path: Path) -> None:
    port = DevPorts.free().smtp
    mail = MailSink(tmp_path / "mail", port)
    mail.start()
    try:
        _send_with_id(port, "<k1@opsflow>", "first")
        _send_with_id(port, "<k1@opsflow>", "retry after a crash")
        _send_with_id(port, "<k2@opsflow>", "other")
        assert mail.duplicates() == ["<k1@opsflow>"]
    finally:
        mail.stop()
    again = MailSink(tmp_path / "mail", port)
    again.start()
    try:
        _send_with_id(port, "<k1@opsflow>", "retry after a sink restart")
        _send(port, ["b@example.com"], "no message id")
    finally:
        again.stop()
    subjects = [str(m["Subject"]) for m in read_mails(tmp_path / "mail")]
    assert sorted(subjects) == ["first", "no message id", "other"]


def test_mail_sink_envelope_keeps_plain_and_unusual_addresses(tmp_path: Path) -> None:
    """Plain addresses take the sink's fast path; quoted local parts go to aiosmtpd's parser."""
    port = DevPorts.free().smtp
    mail = MailSink(tmp_path / "mail", port)
    mail.start()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.mail("ops+sla@example.com", ["BODY=8BITMIME"])[0] == 250
            assert smtp.rcpt("sup.one@example.com")[0] == 250
            assert smtp.rcpt('"two words"@example.com')[0] == 250
            # Not an address at all: refused by aiosmtpd's own parser, as before.
            assert smtp.rcpt("<@@>")[0] == 553
            assert smtp.data(b"Subject: envelope\r\n\r\nbody\r\n")[0] == 250
    finally:
        mail.stop()
    (stored,) = read_mails(tmp_path / "mail")
    assert stored["X-Opsflow-Envelope-From"] == "ops+sla@example.com"
    assert stored["X-Opsflow-Envelope-To"] == 'sup.one@example.com, "two words"@example.com'


def test_mail_sink_reads_a_folded_message_id(tmp_path: Path) -> None:
    """A Message-ID folded onto a second line is the same id: the retry is a duplicate."""
    port = DevPorts.free().smtp
    mail = MailSink(tmp_path / "mail", port)
    mail.start()
    try:
        for raw in (
            b"Message-ID: <fold@opsflow>\r\nSubject: one\r\n\r\nbody\r\n",
            b"Message-ID:\r\n <fold@opsflow>\r\nSubject: again\r\n\r\nbody\r\n",
        ):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail("opsflow@localhost", ["a@example.com"], raw)
        assert mail.duplicates() == ["<fold@opsflow>"]
    finally:
        mail.stop()
    assert [str(m["Subject"]) for m in read_mails(tmp_path / "mail")] == ["one"]


def test_mail_sink_tells_listeners_of_each_stored_message_once(
    sinks: tuple[MailSink, HttpSink, str],
) -> None:
    mail, _http, _url = sinks
    heard: list[Path] = []
    mail.listen(heard.append)
    _send_with_id(mail.port, "<l1@opsflow>", "one")
    _send_with_id(mail.port, "<l1@opsflow>", "one again")  # a duplicate: not stored, not told
    _send(mail.port, ["b@example.com"], "two")
    # The listener runs before the SMTP answer: both calls are there once send_message returns.
    assert [p.name for p in heard] == sorted(p.name for p in mail.folder.glob("*.eml"))
    assert [str(m["Subject"]) for m in read_mails(mail.folder)] == ["one", "two"]


async def test_sms_gateway_keeps_one_client_per_event_loop(
    sinks: tuple[MailSink, HttpSink, str],
) -> None:
    """The gateway builds its HTTP session once, not per SMS, and closes it when told."""
    _mail, http, url = sinks
    gateway = SmsGateway(url=f"{url}/sms", token="s3cret-token")
    assert await gateway.post("gw-1", ["+15550001"], "first") is False
    session = gateway._session()
    assert await gateway.post("gw-2", ["+15550001"], "second") is False
    assert gateway._session() is session  # the same session carried the second message
    assert await gateway.post("gw-1", ["+15550001"], "first") is True  # the sink's dedup
    assert [e["idempotency_key"] for e in read_envelopes(http.folder)] == ["gw-1", "gw-2"]
    await gateway.aclose()
    assert session.closed
    assert await gateway.post("gw-3", ["+15550001"], "after close") is False  # a new session
    assert gateway._session() is not session
    await gateway.aclose()


def test_sms_gateway_reads_the_proxy_settings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY and NO_PROXY apply as before, read when the gateway is built."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("http://sms.example.com/sms") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://u%40x:p%3Ass@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,.corp.example")
    found = proxy_for("https://sms.example.com/sms")
    assert found is not None
    assert found.url == "http://proxy.internal:3128"
    # base64 of "u@x:p:ss": the user and password percent-decoded, as aiohttp decoded them
    assert found.headers == {"Proxy-Authorization": "Basic dUB4OnA6c3M="}
    assert "p:ss" not in repr(found) and "dUB4OnA6c3M" not in repr(found)
    assert proxy_for("https://gw.corp.example/sms") is None  # NO_PROXY
    assert proxy_for("http://sms.example.com/sms") is None  # no HTTP_PROXY for http
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:8080")
    gateway = SmsGateway(url="http://sms.example.com/sms")
    assert gateway._proxy == Proxy(url="http://proxy.internal:8080")
    assert SmsGateway(url="http://127.0.0.1:9/sms")._proxy is None
