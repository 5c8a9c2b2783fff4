"""Mail test mode: only allowlisted addresses receive mail outside production."""

from __future__ import annotations

import io
import smtplib
from collections.abc import Iterator
from email import policy
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from opsflow.adapters import mail as mail_module
from opsflow.adapters.mail import Mailer, SmtpConfig, message_id
from opsflow.config import Settings
from opsflow.dev.ports import DevPorts
from opsflow.dev.sinks import MailSink
from opsflow.shared.common import MailMessage


def _mailer(**kw: object) -> Mailer:
    return Mailer(SmtpConfig.from_settings(Settings(_env_file=None, **kw)))  # type: ignore[arg-type]


def test_default_allowlist_admits_reserved_example_domains_only() -> None:
    m = _mailer()
    assert m.config.test_mode is True
    for ok in ("a@example.com", "b@t0001.example.com", "c@example.org", "oncall@localhost"):
        assert m.allowed(ok), ok
    for no in ("a@gmail.com", "b@notexample.com", "c@example.com.evil.io"):
        assert not m.allowed(no), no


def test_production_turns_test_mode_off_unless_forced() -> None:
    assert _mailer(opsflow_env="production").allowed("ceo@company.io")
    assert not _mailer(opsflow_env="production", smtp_test_mode=True).allowed("ceo@company.io")


def test_message_id_is_stable_and_header_safe() -> None:
    key = "dev-role-elevation:production/01a2/granted"
    assert message_id(key) == message_id(key)
    assert message_id(key) == "<dev-role-elevation.production.01a2.granted@opsflow>"
    em = _mailer().build(MailMessage(key, ["a@example.com"], "s", "body"), ["a@example.com"])
    assert em["Message-ID"] == message_id(key)


def test_password_stays_out_of_repr() -> None:
    cfg = SmtpConfig.from_settings(Settings(_env_file=None, smtp_password="hunter2"))  # type: ignore[arg-type]
    assert cfg.password == "hunter2"
    assert "hunter2" not in repr(cfg)


def _wire(em: Message[str, str | Header]) -> EmailMessage:
    """The message as smtplib sends it, parsed back as a mail client would."""
    out = io.BytesIO()
    BytesGenerator(out, policy=em.policy.clone(linesep="\r\n")).flatten(em)
    parsed = BytesParser(policy=policy.default).parsebytes(out.getvalue())
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_non_ascii_subject_and_body_arrive_intact() -> None:
    em = _mailer().build(
        MailMessage("k/1", ["a@example.com"], "Eskaliert — Straße 5", "Grüße\nZeile 2"),
        ["a@example.com", "b@example.com"],
    )
    got = _wire(em)
    assert got["Subject"] == "Eskaliert — Straße 5"
    assert got.get_content().splitlines() == ["Grüße", "Zeile 2"]
    assert got["To"] == "a@example.com, b@example.com"
    assert got["Message-ID"] == message_id("k/1")


def test_a_line_break_in_the_subject_cannot_add_a_header() -> None:
    em = _mailer().build(
        MailMessage("k/2", ["a@example.com"], "hello\r\nBcc: evil@example.com", "body"),
        ["a@example.com"],
    )
    got = _wire(em)
    assert got["Bcc"] is None
    assert got["Subject"] == "hello Bcc: evil@example.com"


# ------------------------------------------------------------ connection reuse (real sink)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[MailSink]:
    mail = MailSink(tmp_path / "mail", DevPorts.free().smtp)
    mail.start()
    try:
        yield mail
    finally:
        mail.stop()


def _counting_mailer(sink: MailSink) -> tuple[Mailer, list[int]]:
    """A mailer for ``sink`` that counts the SMTP connections it opens."""
    mailer = _mailer(smtp_host="127.0.0.1", smtp_port=sink.port)
    opened: list[int] = []
    connect = mailer._connect

    def counted() -> smtplib.SMTP:
        opened.append(1)
        return connect()

    mailer._connect = counted  # type: ignore[method-assign]
    return mailer, opened


def _mail(i: int) -> MailMessage:
    return MailMessage(f"reuse/{i}", ["a@example.com"], f"mail {i}", "body")


async def test_one_connection_carries_consecutive_mails(sink: MailSink) -> None:
    mailer, opened = _counting_mailer(sink)
    for i in range(3):
        await mailer.send(_mail(i), ["a@example.com"])
    assert [str(m["Subject"]) for m in sink.messages()] == ["mail 0", "mail 1", "mail 2"]
    assert len(opened) == 1
    assert len(mailer._idle) == 1
    mailer.close()
    assert mailer._idle == []


async def test_a_failed_connection_is_closed_and_the_retry_opens_a_new_one(
    sink: MailSink,
) -> None:
    mailer, opened = _counting_mailer(sink)
    await mailer.send(_mail(0), ["a@example.com"])
    sink.fail_next(1)
    with pytest.raises(smtplib.SMTPDataError):
        await mailer.send(_mail(1), ["a@example.com"])
    assert mailer._idle == []  # the connection that failed is gone
    await mailer.send(_mail(1), ["a@example.com"])
    assert len(opened) == 2
    assert [str(m["Subject"]) for m in sink.messages()] == ["mail 0", "mail 1"]
    mailer.close()


async def test_a_connection_idle_too_long_is_replaced(
    sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailer, opened = _counting_mailer(sink)
    await mailer.send(_mail(0), ["a@example.com"])
    monkeypatch.setattr(mail_module, "SMTP_REUSE_SECONDS", 0.0)
    await mailer.send(_mail(1), ["a@example.com"])
    assert len(opened) == 2
    assert len(sink.messages()) == 2
    mailer.close()
