"""The submission listener over real sockets with smtplib: STARTTLS before AUTH, mailbox
and app passwords, lockout, sender policy, local delivery with a Sent copy, remote
recipients queued, rate limits."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.test import override_settings

from apps.alerts.models import Alert
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, MailItem, Message
from apps.relay import services
from apps.relay.models import QueueItem
from apps.relay.roles import SubmissionRunner
from tests.factories import TEST_PASSWORD, AliasFactory, MailboxFactory

pytestmark = pytest.mark.django_db(transaction=True)

ALICE = "alice@alpha.test"


@dataclass
class Listener:
    loop: asyncio.AbstractEventLoop
    runners: list[SubmissionRunner] = field(default_factory=list)

    def run(self, coro, timeout: float = 40):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.runners[0].port

    def smtp(self, *, tls: bool = True) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="laptop.home", timeout=10)
        client.ehlo()
        if tls:
            client.starttls(context=_insecure())
            client.ehlo()
        return client

    def smtps(self) -> smtplib.SMTP_SSL:
        host, port = self.runners[0].implicit
        return smtplib.SMTP_SSL(host, port, context=_insecure(), timeout=10)


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def listener(transactional_db, monkeypatch, settings) -> Iterator[Listener]:
    monkeypatch.setitem(connections.settings[DEFAULT_DB_ALIAS], "CONN_MAX_AGE", 0)
    settings.A3_SUBMISSIONS_LISTEN = ("127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="submission-loop", daemon=True)
    thread.start()
    handle = Listener(loop=loop)
    runner = SubmissionRunner(host="127.0.0.1", port=0)
    try:
        handle.run(runner.start())
        handle.runners.append(runner)
        yield handle
    finally:
        for runner in handle.runners:
            handle.run(runner.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def message(*, sender: str = ALICE, to: str = "bob@remote.test", subject: str = "Hi") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@alpha.test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n"
    ).encode()


def send(client: smtplib.SMTP, sender: str, recipients: list[str], raw: bytes) -> tuple[int, bytes]:
    code, reply = client.mail(sender)
    if code != 250:
        return code, reply
    for recipient in recipients:
        code, reply = client.rcpt(recipient)
        if code != 250:
            return code, reply
    return client.data(raw)


# --- TLS and AUTH --------------------------------------------------------------------------


def test_auth_is_offered_only_after_starttls(listener, mailbox_a):
    client = listener.smtp(tls=False)
    assert not client.has_extn("auth")
    assert client.has_extn("starttls")
    code, _ = client.docmd("AUTH", "PLAIN AGFsaWNlQGFscGhhLnRlc3QAeA==")
    assert code in (530, 538)  # STARTTLS first; never credentials in clear text
    code, _ = client.mail(ALICE)
    assert code == 530  # must STARTTLS first
    client.starttls(context=_insecure())
    client.ehlo()
    assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
    client.quit()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_mailbox_password_authenticates(listener, mailbox_a, mechanism):
    client = listener.smtp()
    client.user, client.password = ALICE, TEST_PASSWORD
    code, reply = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
    assert code == 235, reply
    client.quit()


def test_wrong_password_gets_535_578(listener, mailbox_a):
    client = listener.smtp()
    with pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
        client.login(ALICE, "wrong-password")
    assert excinfo.value.smtp_code == 535
    assert b"5.7.8" in excinfo.value.smtp_error


def test_unknown_mailbox_gets_the_same_reply(listener, mailbox_a):
    client = listener.smtp()
    with pytest.raises(smtplib.SMTPAuthenticationError) as unknown:
        client.login("nobody@alpha.test", "wrong-password")
    client = listener.smtp()
    with pytest.raises(smtplib.SMTPAuthenticationError) as known:
        client.login(ALICE, "wrong-password")
    assert (unknown.value.smtp_code, unknown.value.smtp_error) == (
        known.value.smtp_code,
        known.value.smtp_error,
    )


def test_disabled_mailbox_cannot_authenticate(listener, mailbox_a):
    mailbox_a.is_active = False
    mailbox_a.save()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        listener.smtp().login(ALICE, TEST_PASSWORD)


def test_app_password_authenticates_until_revoked(listener, mailbox_a, user_a):
    created = services.app_password_create(actor=user_a, mailbox=mailbox_a, name="Phone")
    client = listener.smtp()
    assert client.login(ALICE, created.secret)[0] == 235
    client.quit()
    services.app_password_revoke(actor=user_a, app_password=created.app_password)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        listener.smtp().login(ALICE, created.secret)


def test_repeated_failures_lock_out_even_the_right_password(listener, mailbox_a, settings):
    for _ in range(settings.A3_LOCKOUT_FAILURES):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            listener.smtp().login(ALICE, "wrong-password")
    client = listener.smtp()
    with pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
        client.login(ALICE, TEST_PASSWORD)
    assert excinfo.value.smtp_code == 454
    assert Alert.objects.filter(kind="accounts.lockout").exists()


def test_implicit_tls_listener_offers_auth_at_once(listener, mailbox_a):
    client = listener.smtps()
    client.ehlo()
    assert client.has_extn("auth")
    assert client.login(ALICE, TEST_PASSWORD)[0] == 235
    code, _ = send(client, ALICE, ["bob@remote.test"], message())
    assert code == 250
    client.quit()


# --- Sender policy -------------------------------------------------------------------------


def test_unauthenticated_mail_is_refused(listener, mailbox_a):
    client = listener.smtp()
    assert client.mail(ALICE)[0] == 530


def test_foreign_envelope_sender_gets_553_571(listener, mailbox_a, mailbox_b):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, reply = client.mail("bob@beta.test")
    assert code == 553 and b"5.7.1" in reply


def test_spoofed_from_header_gets_553_571(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, reply = send(client, ALICE, ["bob@remote.test"], message(sender="ceo@alpha.test"))
    assert code == 553 and b"5.7.1" in reply
    assert not Message.objects.exists()


def test_message_without_from_header_gets_clear_5xx(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, reply = send(
        client, ALICE, ["bob@remote.test"], b"To: bob@remote.test\r\nSubject: x\r\n\r\nbody\r\n"
    )
    assert code == 550 and b"From header" in reply


def test_send_as_alias_is_allowed(listener, mailbox_a, domain_a):
    alias = AliasFactory(
        domain=domain_a, local_part="sales", address="sales@alpha.test", destinations=[ALICE]
    )
    alias.send_as.add(mailbox_a)
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, reply = send(client, "sales@alpha.test", ["bob@remote.test"], message(sender="sales@alpha.test"))
    assert code == 250, reply


def test_alias_without_send_as_is_refused(listener, mailbox_a, domain_a):
    AliasFactory(domain=domain_a, local_part="sales", address="sales@alpha.test", destinations=[ALICE])
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    assert client.mail("sales@alpha.test")[0] == 553


def test_oversized_submission_gets_552(listener, mailbox_a, settings):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    too_big = settings.A3_MAX_MESSAGE_SIZE + 1
    code, _ = client.mail(ALICE, [f"SIZE={too_big}"])
    assert code == 552


# --- Accepting -----------------------------------------------------------------------------


def test_local_and_remote_recipients_with_sent_copy(listener, mailbox_a, mailbox_b):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, reply = send(client, ALICE, ["bob@beta.test", "carol@remote.test"], message(to="bob@beta.test"))
    assert code == 250, reply
    client.quit()
    stored = Message.objects.get()
    assert stored.submitted_by == mailbox_a
    raw = blob_store().read(stored.blob_sha256)
    assert raw.startswith(b"Received: by ")  # the client's address is not revealed
    assert b"ESMTPSA" in raw.split(b"\r\n\r\n")[0]
    assert b"127.0.0.1" not in raw.split(b"\r\n\r\n")[0]
    (item,) = QueueItem.objects.filter(message=stored)
    assert item.domain == "remote.test" and item.sender == ALICE
    assert list(item.recipients.values_list("address", flat=True)) == ["carol@remote.test"]
    mail_services.message_deliver(message_id=stored.pk)
    inbox = MailItem.objects.get(mailbox=mailbox_b)
    assert inbox.folder.special_use == Folder.SpecialUse.INBOX
    sent = MailItem.objects.get(mailbox=mailbox_a)
    assert sent.folder.special_use == Folder.SpecialUse.SENT


def test_sent_copy_can_be_switched_off(listener, mailbox_a):
    mailbox_a.save_sent_copy = False
    mailbox_a.save()
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    assert send(client, ALICE, ["carol@remote.test"], message())[0] == 250
    mail_services.message_deliver(message_id=Message.objects.get().pk)
    assert not MailItem.objects.filter(mailbox=mailbox_a).exists()


def test_unknown_local_recipient_is_refused(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    client.mail(ALICE)
    code, reply = client.rcpt("nobody@alpha.test")
    assert code == 550 and b"5.1.1" in reply


def test_missing_message_id_and_date_are_added(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    raw = b"From: alice@alpha.test\r\nTo: bob@remote.test\r\nSubject: bare\r\n\r\nbody\r\n"
    assert send(client, ALICE, ["bob@remote.test"], raw)[0] == 250
    head = blob_store().read(Message.objects.get().blob_sha256).split(b"\r\n\r\n")[0]
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head


def test_client_ip_is_kept_when_privacy_option_is_off(listener, mailbox_a, settings):
    settings.A3_SUBMISSION_HIDE_CLIENT_IP = False
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    assert send(client, ALICE, ["bob@remote.test"], message())[0] == 250
    head = blob_store().read(Message.objects.get().blob_sha256).split(b"\r\n\r\n")[0]
    assert b"[127.0.0.1]" in head and b"laptop.home" in head


# --- Rate limits ---------------------------------------------------------------------------


def test_mailbox_message_rate_limit_gets_451_471_and_alert(listener, mailbox_a):
    mailbox_a.max_messages_per_hour = 2
    mailbox_a.save()
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    for _ in range(2):
        assert send(client, ALICE, ["bob@remote.test"], message())[0] == 250
    code, reply = client.mail(ALICE)
    assert code == 451 and b"4.7.1" in reply
    assert Alert.objects.filter(kind="relay.rate_limited").count() == 1


def test_recipient_rate_limit_applies_per_domain(listener, mailbox_a, domain_a):
    other = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    domain_a.max_recipients_per_hour = 3
    domain_a.save()
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    assert send(client, ALICE, ["a@remote.test", "b@remote.test"], message())[0] == 250
    client.quit()
    client = listener.smtp()
    client.login(other.address, TEST_PASSWORD)
    client.mail(other.address)
    assert client.rcpt("c@remote.test")[0] == 250
    code, reply = client.rcpt("d@remote.test")
    assert code == 451 and b"4.7.1" in reply


@override_settings(A3_RATE_MAILBOX_MESSAGES_PER_HOUR=1)
def test_server_default_limit_applies_without_override(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    assert send(client, ALICE, ["bob@remote.test"], message())[0] == 250
    assert client.mail(ALICE)[0] == 451


# --- Policy re-checked during the session and at storage ---------------------------------


def test_mailbox_disabled_during_the_session_cannot_send(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    mailbox_a.is_active = False
    mailbox_a.save()
    code, reply = client.mail(ALICE)
    assert code == 550 and b"5.7.1" in reply


def test_spoofed_sender_header_is_refused(listener, mailbox_a):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    raw = message().replace(b"Subject: Hi", b"Sender: ceo@alpha.test\r\nSubject: Hi")
    code, reply = send(client, ALICE, ["bob@remote.test"], raw)
    assert code == 553 and b"Sender header" in reply


def test_internationalised_from_address_is_accepted(listener, domain_a, mailbox_a):
    alias = AliasFactory(domain=domain_a, local_part="josé", address="josé@alpha.test", destinations=[ALICE])
    alias.send_as.add(mailbox_a)
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, _ = client.mail("josé@alpha.test", ["SMTPUTF8"])
    assert code == 250
    assert client.rcpt("bob@remote.test")[0] == 250
    code, reply = client.data(message(sender="josé@alpha.test").decode().encode("utf-8"))
    assert code == 250, reply


def test_limit_is_checked_again_when_storing(transactional_db, mailbox_a):
    mailbox_a.max_messages_per_hour = 1
    mailbox_a.save()
    sender = services.submission_authenticate(username=ALICE, password=TEST_PASSWORD)
    accept = {"sender": sender, "mail_from": ALICE, "recipients": ["bob@remote.test"], "trace": b""}
    services.submission_accept(raw=message(), queue_id=mail_services.new_queue_id(), **accept)
    # A second session that passed MAIL before the first one was stored:
    with pytest.raises(services.RateLimited) as excinfo:
        services.submission_accept(raw=message(), queue_id=mail_services.new_queue_id(), **accept)
    assert excinfo.value.reply.startswith("451 4.7.1")
    assert Message.objects.count() == 1
