"""The MX listener over real sockets: smtplib (and raw sockets where smtplib cannot express
the attack) against SmtpRunner on an event loop in a background thread.

The listener's handlers run on worker threads with their own database connections, so
every test here is transactional (committed data). Celery has no worker in tests, so a test
that needs the message filed calls the delivery service itself after the 250.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from apps.mailboxes import services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message, MessageRecipient
from apps.mailboxes.tasks import message_deliver_task
from apps.relay.roles import SmtpRunner
from apps.relay.smtp import HardenedSMTP
from tests.factories import AliasFactory, DomainFactory, MailboxFactory

pytestmark = pytest.mark.django_db(transaction=True)

ALICE = "alice@alpha.test"
SENDER = "sender@remote.test"
CLIENT_HELO = "client.test"
QUEUED = re.compile(rb"2\.0\.0 Ok: queued as ([0-9A-F]+)")


# --- The listener ----------------------------------------------------------------------


@dataclass
class Listener:
    loop: asyncio.AbstractEventLoop
    runners: list[SmtpRunner] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.runners[0].port

    def run(self, coro, timeout: float = 40):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, port: int = 0) -> SmtpRunner:
        runner = SmtpRunner(host="127.0.0.1", port=port)
        self.run(runner.start())
        self.runners.append(runner)
        return runner

    def stop(self) -> None:
        while self.runners:
            self.run(self.runners.pop().stop())

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname=CLIENT_HELO, timeout=10)

    def wire(self) -> Wire:
        return Wire(self.port)


def open_sessions() -> int:
    return sum(HardenedSMTP.connections_per_ip.values())


def wait_for_no_sessions(timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while open_sessions() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_sessions() == 0, dict(HardenedSMTP.connections_per_ip)


@pytest.fixture
def listener(transactional_db, monkeypatch) -> Iterator[Listener]:
    # The listener's worker threads close their database connections after each call
    # (run_db), so none outlives the test database.
    monkeypatch.setitem(connections.settings[DEFAULT_DB_ALIAS], "CONN_MAX_AGE", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="smtp-loop", daemon=True)
    thread.start()
    handle = Listener(loop=loop)
    try:
        handle.start()
        yield handle
    finally:
        handle.stop()
        wait_for_no_sessions()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# --- Clients ---------------------------------------------------------------------------


class Wire:
    """A raw SMTP client: write any bytes, read whole (multi-line) replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8", errors="replace")

    def reply(self) -> str:
        """The next reply; a multi-line reply comes back joined with newlines."""
        lines = [self._line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self._line())
        return "\n".join(lines)

    def replies(self, count: int) -> list[str]:
        return [self.reply() for _ in range(count)]

    def command(self, line: bytes) -> str:
        self.send(line + b"\r\n")
        return self.reply()

    def hello(self) -> None:
        assert self.reply().startswith("220 ")
        assert self.command(b"EHLO " + CLIENT_HELO.encode()).startswith("250-")

    def closed_by_server(self, timeout: float = 5) -> bool:
        """Read what is left until the server closes (True) or `timeout` passes (False)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def rfc5322(subject: str = "Hello", body: str = "Hello Alice.", *, to: str = ALICE) -> bytes:
    return (
        f"From: Sender <{SENDER}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@remote.test>\r\n"
        "Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def queue_id_of(reply: bytes | str) -> str:
    raw = reply.encode() if isinstance(reply, str) else reply
    match = QUEUED.search(raw)
    assert match, reply
    return match.group(1).decode()


def send(
    listener: Listener,
    recipients: list[str],
    content: bytes | None = None,
    *,
    sender: str = SENDER,
    mail_options: tuple[str, ...] = (),
) -> str:
    """One complete transaction that must succeed; returns the queue id."""
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        assert client.mail(sender, list(mail_options))[0] == 250
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            assert code == 250, (recipient, reply)
        code, reply = client.data(content if content is not None else rfc5322())
        assert code == 250, reply
    return queue_id_of(reply)


def deliver(queue_id: str) -> Message:
    """What the worker does with the task the 250 enqueued (a pass may take other waiting
    messages along)."""
    message = Message.objects.get(queue_id=queue_id)
    services.message_deliver(message_id=message.pk)
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED, message.last_error
    return message


def stored(message: Message) -> bytes:
    return blob_store().read(message.blob_sha256)


def blob_files() -> set[Path]:
    return {p for p in Path(settings.A3_BLOB_DIR).rglob("*") if p.is_file()}


def assert_still_serves(listener: Listener, mailbox: Mailbox) -> None:
    content = rfc5322(subject="Still here", to=mailbox.address)
    queue_id = send(listener, [mailbox.address], content)
    message = deliver(queue_id)
    assert stored(message).endswith(content)
    assert MailItem.objects.filter(mailbox=mailbox, message=message).count() == 1


# --- Greeting, extensions, TLS -----------------------------------------------------------


def test_smtp_banner_and_ehlo_advertise_extensions(listener, settings):
    settings.A3_HOSTNAME = "mx.a3.test"
    client = smtplib.SMTP(local_hostname=CLIENT_HELO, timeout=10)
    try:
        code, banner = client.connect("127.0.0.1", listener.port)
        assert (code, banner) == (220, b"mx.a3.test A3Mailer ESMTP")

        code, reply = client.ehlo(CLIENT_HELO)
        assert code == 250
        assert reply.decode().splitlines()[0] == "mx.a3.test"
        features = set(client.esmtp_features)
        assert {"size", "pipelining", "8bitmime", "smtputf8", "starttls", "enhancedstatuscodes"} <= features
        assert client.esmtp_features["size"] == str(settings.A3_MAX_MESSAGE_SIZE)
        assert "auth" not in features  # the MX takes no logins

        assert client.noop() == (250, b"2.0.0 OK")
        assert client.helo(CLIENT_HELO) == (250, b"mx.a3.test")
    finally:
        client.quit()


def test_smtp_starttls_with_data_dir_certificate_then_delivers(listener, mailbox_a, settings):
    context = ssl.create_default_context(cafile=str(settings.A3_DATA_DIR / "tls-cert.pem"))
    context.check_hostname = False  # the pair is made for A3_HOSTNAME; the chain is verified
    content = rfc5322(subject="Over TLS")
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        assert client.starttls(context=context)[0] == 220
        assert client.sock.version() in {"TLSv1.2", "TLSv1.3"}
        client.ehlo(CLIENT_HELO)
        assert "starttls" not in client.esmtp_features
        assert "auth" not in client.esmtp_features
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(content)
    assert code == 250, reply
    message = deliver(queue_id_of(reply))
    raw = stored(message)
    assert b" with ESMTPS id " + message.queue_id.encode() in raw
    assert raw.endswith(content)
    assert message.subject == "Over TLS"


def test_smtp_starttls_refuses_plaintext_client_hello_garbage(listener, mailbox_a):
    wire = listener.wire()
    wire.hello()
    assert wire.command(b"STARTTLS").startswith("220 ")
    wire.send(b"EHLO this is not a TLS handshake\r\n")
    assert wire.closed_by_server()
    wire.close()
    assert_still_serves(listener, mailbox_a)


# --- Delivery ----------------------------------------------------------------------------


def test_smtp_delivers_to_mailbox_with_trace_headers_and_exact_bytes(listener, mailbox_a, settings):
    settings.A3_HOSTNAME = "mx.a3.test"
    content = (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: Alice <alice@alpha.test>\r\n"
        b"Subject: Quarterly numbers\r\n"
        b"\r\n"
        b"First line.\r\n"
        b".A line that starts with a dot\r\n"
        b"..two dots\r\n"
        b"\r\n"
        b"Last line.\r\n"
    )
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        assert client.mail(SENDER, ["BODY=8BITMIME"]) == (250, b"2.1.0 Sender OK")
        assert client.rcpt(ALICE) == (250, b"2.1.5 Recipient OK")
        assert client.rcpt("Alice@Alpha.Test") == (250, b"2.1.5 Recipient OK (duplicate ignored)")
        code, reply = client.data(content)
    assert code == 250
    queue_id = queue_id_of(reply)

    # Durable before acknowledged: the row and the blob exist as soon as 250 is read.
    message = Message.objects.get(queue_id=queue_id)
    assert message.state == Message.State.RECEIVED
    assert (message.mail_from, message.helo, message.peer_ip) == (SENDER, CLIENT_HELO, "127.0.0.1")
    assert list(message.recipients.values_list("address", flat=True)) == [ALICE]
    raw = stored(message)
    assert message.size == len(raw)
    match = re.fullmatch(
        rb"Return-Path: <sender@remote\.test>\r\n"
        rb"Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n"
        rb"\tby mx\.a3\.test \(A3Mailer\) with ESMTP id " + queue_id.encode() + rb"\r\n"
        rb"\tfor <alice@alpha\.test>;\r\n"
        rb"\t([^\r\n]+)\r\n"
        rb"(.*)",
        raw,
        re.DOTALL,
    )
    assert match, raw[:400]
    assert email.utils.parsedate_to_datetime(match.group(1).decode()).tzinfo is not None
    assert match.group(2) == content  # dot-stuffing undone, nothing else touched

    message_deliver_task(message_id=message.pk)  # what the worker runs

    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert message.subject == "Quarterly numbers"
    item = MailItem.objects.get(message=message)
    assert (item.mailbox_id, item.folder.special_use, item.uid) == (mailbox_a.pk, Folder.SpecialUse.INBOX, 1)
    mailbox_a.refresh_from_db()
    assert mailbox_a.used_bytes == message.size
    assert message.recipients.get().state == MessageRecipient.State.DELIVERED


def test_smtp_null_reverse_path_is_accepted_for_bounces(listener, mailbox_a):
    queue_id = send(listener, [ALICE], rfc5322(subject="Undeliverable"), sender="")
    message = deliver(queue_id)
    assert message.mail_from == ""
    assert stored(message).startswith(b"Return-Path: <>\r\n")
    assert MailItem.objects.filter(message=message, mailbox=mailbox_a).exists()


def test_smtp_unknown_local_recipient_gets_550_5_1_1(listener, mailbox_a):
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        client.mail(SENDER)
        assert client.rcpt("nobody@alpha.test") == (550, b"5.1.1 No such user here")
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(rfc5322())
    assert code == 250
    message = Message.objects.get(queue_id=queue_id_of(reply))
    assert list(message.recipients.values_list("address", flat=True)) == [ALICE]


RELAY_ATTEMPTS = [
    ("victim@elsewhere.example", "554 5.7.1"),
    ("@alpha.test:victim@elsewhere.example", "554 5.7.1"),  # source route
    ("victim%elsewhere.example@alpha.test", "550 5.1.1"),  # percent hack
    ("victim!elsewhere.example@alpha.test", "550 5.1.1"),  # bang path
    ('"victim@elsewhere.example"@alpha.test', "501 5.1.3"),
    ("victim@elsewhere.example@alpha.test", "553 5.1.3"),
    ("alice@[127.0.0.1]", "501 5.1.3"),
    ("postmaster", "501 5.1.3"),
]


def test_smtp_is_never_an_open_relay(listener, mailbox_a, subtests):
    for recipient, expected in RELAY_ATTEMPTS:
        with subtests.test(recipient=recipient):
            wire = listener.wire()
            wire.hello()
            assert wire.command(b"MAIL FROM:<spammer@remote.test>").startswith("250 ")
            assert wire.command(f"RCPT TO:<{recipient}>".encode()).startswith(expected + " ")
            assert wire.command(b"DATA").startswith("503 5.5.1 ")
            assert wire.command(b"QUIT").startswith("221 ")
            wire.close()
    assert not Message.objects.exists()


def test_smtp_disabled_mailbox_domain_and_alias_get_550_5_2_1(listener, mailbox_a):
    MailboxFactory(domain=mailbox_a.domain, local_part="gone", address="gone@alpha.test", is_active=False)
    AliasFactory(domain=mailbox_a.domain, local_part="old", address="old@alpha.test", is_active=False)
    off = DomainFactory(name="off.test", is_active=False)
    MailboxFactory(domain=off, local_part="carl", address="carl@off.test")
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        client.mail(SENDER)
        for address in ["gone@alpha.test", "old@alpha.test", "carl@off.test"]:
            assert client.rcpt(address) == (550, b"5.2.1 Mailbox disabled, not accepting messages")
    assert not Message.objects.exists()


def test_smtp_quota_refusals(listener, mailbox_a):
    Mailbox.objects.filter(pk=mailbox_a.pk).update(quota_bytes=10_000, used_bytes=9_000)
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)

        client.mail(SENDER, ["SIZE=2000"])
        assert client.rcpt(ALICE) == (452, b"4.2.2 Mailbox full, try again later")
        client.rset()

        client.mail(SENDER, ["SIZE=20000"])
        assert client.rcpt(ALICE) == (552, b"5.2.2 Message is larger than the mailbox quota")
        client.rset()

        # Without SIZE the quota is checked once the size is known.
        client.mail(SENDER)
        assert client.rcpt(ALICE)[0] == 250
        assert client.data(rfc5322(body=("x" * 70 + "\r\n") * 20)) == (
            452,
            b"4.2.2 Mailbox full, try again later",
        )

        # A SIZE smaller than what is then sent does not get past the quota either.
        client.mail(SENDER, ["SIZE=100"])
        assert client.rcpt(ALICE)[0] == 250
        assert client.data(rfc5322(body=("y" * 70 + "\r\n") * 30))[0] == 452

        # What fits is accepted.
        client.mail(SENDER, ["SIZE=300"])
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(rfc5322(body="small"))
    assert code == 250
    assert list(Message.objects.values_list("queue_id", flat=True)) == [queue_id_of(reply)]


def test_smtp_message_size_limit_552(listener, mailbox_a, settings):
    settings.A3_MAX_MESSAGE_SIZE = 4096
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        assert client.esmtp_features["size"] == "4096"

        code, reply = client.mail(SENDER, ["SIZE=5000"])
        assert code == 552 and reply.startswith(b"5.3.4 ")

        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(rfc5322(body=("z" * 78 + "\r\n") * 80))  # ~6.5 kB, no SIZE
        assert code == 552 and reply.startswith(b"5.3.4 "), reply

        # The session goes on: a message within the limit is accepted.
        assert client.mail(SENDER, ["SIZE=1000"])[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(rfc5322(body="fits"))
    assert code == 250
    assert list(Message.objects.values_list("queue_id", flat=True)) == [queue_id_of(reply)]


# --- Pipelining, UTF-8, many recipients, aliases --------------------------------------


def test_smtp_pipelined_commands_in_one_write(listener, mailbox_a):
    first, second = rfc5322(subject="one"), rfc5322(subject="two")
    wire = listener.wire()
    wire.hello()
    wire.send(
        b"MAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@alpha.test>\r\n"
        b"RCPT TO:<nobody@alpha.test>\r\n"
        b"RCPT TO:<victim@elsewhere.example>\r\n"
        b"DATA\r\n"
    )
    replies = wire.replies(5)
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "554 5.7.1", "354 End d"]
    wire.send(
        first + b".\r\n"
        b"MAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@alpha.test>\r\n"
        b"DATA\r\n" + second + b".\r\n"
        b"QUIT\r\n"
    )
    replies = wire.replies(6)
    assert [r[:3] for r in replies] == ["250", "250", "250", "354", "250", "221"]
    assert wire.closed_by_server()
    wire.close()

    for reply, content in [(replies[0], first), (replies[4], second)]:
        message = deliver(queue_id_of(reply))
        assert stored(message).endswith(content)
        assert MailItem.objects.filter(message=message, mailbox=mailbox_a).count() == 1


def test_smtp_smtputf8_delivers_to_non_ascii_address_on_idn_domain(listener):
    domain = DomainFactory(name="xn--bcher-kva.example")  # bücher.example
    mailbox = MailboxFactory(domain=domain, local_part="jörg", address="jörg@xn--bcher-kva.example")
    content = (
        "From: Müller <müller@absender.example>\r\n"
        "To: Jörg <jörg@bücher.example>\r\n"
        "Subject: Grüße aus Köln\r\n"
        "\r\n"
        "Schöne Grüße — ✉\r\n"
    ).encode()
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        assert client.mail("müller@absender.example", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt("Jörg@Bücher.example")[0] == 250
        code, reply = client.data(content)
    assert code == 250, reply

    message = deliver(queue_id_of(reply))
    assert message.mail_from == "müller@absender.example"
    assert list(message.recipients.values_list("address", flat=True)) == ["jörg@xn--bcher-kva.example"]
    raw = stored(message)
    assert raw.startswith("Return-Path: <müller@absender.example>\r\n".encode())
    assert b" with UTF8SMTP id " in raw
    assert raw.endswith(content)
    assert message.subject == "Grüße aus Köln"
    assert MailItem.objects.filter(message=message, mailbox=mailbox).count() == 1


def test_smtp_non_ascii_address_without_smtputf8_gets_553_5_6_7(listener):
    domain = DomainFactory(name="xn--bcher-kva.example")
    MailboxFactory(domain=domain, local_part="jörg", address="jörg@xn--bcher-kva.example")
    wire = listener.wire()
    wire.hello()
    reply = wire.command("MAIL FROM:<müller@absender.example>".encode())
    assert reply.startswith("553 5.6.7 ")
    assert wire.command(b"MAIL FROM:<sender@remote.test>").startswith("250 ")
    assert wire.command("RCPT TO:<jörg@bücher.example>".encode()).startswith("553 5.6.7 ")
    assert wire.command("RCPT TO:<jörg@xn--bcher-kva.example>".encode()).startswith("553 5.6.7 ")
    assert wire.command(b"DATA").startswith("503 ")
    wire.close()
    assert not Message.objects.exists()


def test_smtp_accepts_100_recipients_and_refuses_the_101st_with_452_4_5_3(listener, mailbox_a):
    AliasFactory(domain=mailbox_a.domain, local_part="", address="@alpha.test", destinations=[ALICE])
    recipients = [f"r{i:03}@alpha.test" for i in range(101)]
    with listener.smtp() as client:
        refused = client.sendmail(SENDER, recipients, rfc5322(subject="Everyone"))
    assert refused == {"r100@alpha.test": (452, b"4.5.3 Too many recipients")}

    message = Message.objects.get()
    assert sorted(message.recipients.values_list("address", flat=True)) == recipients[:100]
    deliver(message.queue_id)
    assert MailItem.objects.filter(message=message).count() == 1  # one copy for the catch-all target
    assert message.recipients.filter(state=MessageRecipient.State.DELIVERED).count() == 100


def test_smtp_alias_and_catch_all_expand_to_one_copy_per_mailbox(listener, mailbox_a):
    domain = mailbox_a.domain
    carol = MailboxFactory(domain=domain, local_part="carol", address="carol@alpha.test")
    AliasFactory(
        domain=domain, local_part="team", address="team@alpha.test", destinations=[ALICE, carol.address]
    )
    AliasFactory(domain=domain, local_part="boss", address="boss@alpha.test", destinations=[ALICE])
    AliasFactory(domain=domain, local_part="", address="@alpha.test", destinations=[carol.address])

    queue_id = send(listener, ["team@alpha.test", "boss@alpha.test", ALICE, "whoever@alpha.test"])
    message = deliver(queue_id)

    assert sorted(MailItem.objects.filter(message=message).values_list("mailbox__address", flat=True)) == [
        ALICE,
        carol.address,
    ]
    assert set(message.recipients.values_list("state", flat=True)) == {MessageRecipient.State.DELIVERED}


# --- SMTP smuggling --------------------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<smuggler@evil.test>\r\n"
    b"RCPT TO:<alice@alpha.test>\r\n"
    b"DATA\r\n"
    b"From: CEO <ceo@alpha.test>\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"Please wire the money.\r\n"
)


FAKE_ENDS_OF_DATA = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-lf": b"\r.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "lone-dot-cr": b"\r\n.\r",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-cr": b"\n.\r",
}


def smuggle(listener: Listener, fake_end: bytes) -> str:
    """One DATA section hiding a second transaction behind `fake_end`; returns the reply
    to the real end of data."""
    wire = listener.wire()
    wire.hello()
    wire.send(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\n")
    assert [r[:3] for r in wire.replies(3)] == ["250", "250", "354"]
    wire.send(b"From: sender@remote.test\r\nSubject: real\r\n\r\nThe real body." + fake_end)
    wire.send(SMUGGLED + b"\r\n.\r\n")
    final = wire.reply()
    assert wire.command(b"QUIT").startswith("221 ")  # no reply was owed to smuggled commands
    wire.close()
    return final


def test_smtp_smuggling_never_stores_the_embedded_message(listener, mailbox_a, subtests):
    for name, fake_end in FAKE_ENDS_OF_DATA.items():
        with subtests.test(fake_end=name):
            final = smuggle(listener, fake_end)
            # Our policy: any bare CR or LF refuses the whole message.
            assert final.startswith("550 5.6.0 "), final
            assert not Message.objects.exists()
    assert_still_serves(listener, mailbox_a)


def test_smtp_smuggling_with_nul_before_dot_is_just_data(listener, mailbox_a):
    final = smuggle(listener, b"\r\n\x00.\r\n")
    assert final.startswith("250 2.0.0 ")
    message = Message.objects.get()  # exactly one message, and never the smuggler's
    assert message.mail_from == SENDER
    assert list(message.recipients.values_list("address", flat=True)) == [ALICE]
    assert stored(message).endswith(b"The real body.\r\n\x00.\r\n" + SMUGGLED + b"\r\n")


def test_smtp_dot_stuffed_lines_are_not_an_end_of_data(listener, mailbox_a):
    content = b"Subject: dots\r\n\r\n..\r\n...\r\n.MAIL FROM:<x@y.test>\r\n"
    queue_id = send(listener, [ALICE], content)
    assert stored(Message.objects.get(queue_id=queue_id)).endswith(content)
    assert Message.objects.count() == 1


# --- Hostile clients -------------------------------------------------------------------


def test_smtp_malformed_commands_get_errors_with_enhanced_codes(listener, mailbox_a):
    wire = listener.wire()
    assert wire.reply().startswith("220 ")
    exchanges = [
        (b"", "500 5.5.2 "),
        (b"MAIL FROM:<sender@remote.test>", "503 5.5.1 "),  # before EHLO
        (b"EHLO", "501 "),  # RFC 2034: replies to EHLO carry no enhanced code
        (b"\xff\xfe\xfd", "500 5.5.2 "),
        (b"FOO bar", "500 5.5.2 "),
        (b"EHLO " + CLIENT_HELO.encode(), "250-"),
        (b"RCPT TO:<alice@alpha.test>", "503 5.5.1 "),  # before MAIL
        (b"MAIL FROM sender@remote.test", "501 5.5.4 "),
        (b"MAIL FROM:<sender@remote.test> BODY=9BIT", "501 5.5.4 "),
        (b"MAIL FROM:<" + b"a" * 600 + b"@remote.test>", "500 5.5.2 "),
    ]
    for line, expected in exchanges:
        assert wire.command(line).startswith(expected), line
    # Nine errors so far, one short of the cap: the session still works.
    wire.send(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\n")
    assert [r[:3] for r in wire.replies(3)] == ["250", "250", "354"]
    wire.send(rfc5322(subject="after errors") + b".\r\n")
    assert wire.reply().startswith("250 2.0.0 Ok: queued as ")
    wire.close()
    assert Message.objects.count() == 1
    assert_still_serves(listener, mailbox_a)


def test_smtp_too_many_errors_get_421_and_close(listener, mailbox_a, settings):
    assert settings.A3_SMTP_MAX_ERRORS == 10
    wire = listener.wire()
    wire.hello()
    wire.send(b"RCPT TO:<alice@alpha.test>\r\n" * 12)
    replies = wire.replies(11)
    assert [r[:9] for r in replies[:10]] == ["503 5.5.1"] * 10
    assert replies[10].startswith("421 4.7.0 Too many errors")
    assert wire.closed_by_server()
    wire.close()
    assert_still_serves(listener, mailbox_a)


@pytest.mark.parametrize("phase", ["command", "data"])
def test_smtp_megabytes_without_line_end_are_cut_off(listener, mailbox_a, phase):
    wire = listener.wire()
    wire.hello()
    if phase == "data":
        wire.send(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\n")
        assert [r[:3] for r in wire.replies(3)] == ["250", "250", "354"]
    garbage = bytes(range(33, 127)) * 700  # ~64 kB, no CR or LF
    try:
        for _ in range(10 * 1024 * 1024 // len(garbage)):
            wire.send(garbage)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server hung up on us mid-stream
    # Without ever sending a line end, the session is over: memory stays bounded.
    assert wire.closed_by_server()
    assert b"421 4.7.0 " in wire.buffer or not wire.buffer
    wire.close()
    assert not Message.objects.exists()
    assert_still_serves(listener, mailbox_a)


def test_smtp_client_disconnecting_mid_data_leaves_no_message_or_blob(listener, mailbox_a):
    before = blob_files()
    wire = listener.wire()
    wire.hello()
    wire.send(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\n")
    assert [r[:3] for r in wire.replies(3)] == ["250", "250", "354"]
    wire.send(b"From: sender@remote.test\r\nSubject: cut\r\n\r\n" + b"half a body\r\n" * 500)
    wire.close()
    wait_for_no_sessions()

    assert not Message.objects.exists()
    assert blob_files() == before
    assert_still_serves(listener, mailbox_a)


def test_smtp_nul_bytes(listener, mailbox_a):
    wire = listener.wire()
    assert wire.reply().startswith("220 ")
    assert wire.command(b"EHLO client\x00.test").startswith("250-")
    assert wire.command(b"MAIL FROM:<send\x00er@remote.test>").startswith("553 5.1.7 ")
    assert wire.command(b"MAIL FROM:<sender@remote.test>").startswith("250 ")
    assert wire.command(b"RCPT TO:<alice\x00@alpha.test>").startswith("501 5.1.3 ")
    assert wire.command(b"RCPT TO:<alice@alpha.test>").startswith("250 ")
    assert wire.command(b"DATA").startswith("354 ")
    content = b"From: sender@remote.test\r\nSubject: nul\x00here\r\n\r\nbody \x00 with nul\r\n"
    wire.send(content + b".\r\n")
    reply = wire.reply()
    assert reply.startswith("250 2.0.0 "), reply
    wire.close()

    message = deliver(queue_id_of(reply))
    assert message.helo == "client.test"
    assert stored(message).endswith(content)  # the bytes are kept as sent
    assert message.state == Message.State.DELIVERED
    assert "\x00" not in message.subject and message.subject.startswith("nul")
    assert MailItem.objects.filter(message=message, mailbox=mailbox_a).exists()
    assert_still_serves(listener, mailbox_a)


def test_smtp_2000_header_lines_are_stored_and_delivered(listener, mailbox_a):
    headers = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"v" * 40) for i in range(2000))
    content = headers + b"Subject: many headers\r\nFrom: sender@remote.test\r\n\r\nbody\r\n"
    queue_id = send(listener, [ALICE], content)
    message = deliver(queue_id)
    assert stored(message).endswith(content)
    assert message.subject == "many headers"
    assert MailItem.objects.filter(message=message, mailbox=mailbox_a).exists()
    assert_still_serves(listener, mailbox_a)


def test_smtp_connections_over_per_ip_cap_get_421_4_7_0(listener, mailbox_a, settings):
    settings.A3_SMTP_MAX_CONNECTIONS_PER_IP = 3
    held = [listener.wire() for _ in range(3)]
    for wire in held:
        assert wire.reply().startswith("220 ")

    refused = listener.wire()
    assert refused.reply().startswith("421 4.7.0 Too many connections")
    assert refused.closed_by_server()
    refused.close()

    held.pop().close()
    deadline = time.monotonic() + 5
    while open_sessions() > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    replacement = listener.wire()
    assert replacement.reply().startswith("220 ")  # a slot was freed

    for wire in [*held, replacement]:
        wire.close()
    wait_for_no_sessions()
    assert_still_serves(listener, mailbox_a)


# --- The role: shared port and shutdown ------------------------------------------------


def test_smtp_runner_shares_its_port_with_a_second_listener(listener, mailbox_a):
    second = listener.start(port=listener.port)  # SO_REUSEPORT: a second smtpd process
    assert second.port == listener.port
    assert second.describe() == f"smtp://127.0.0.1:{listener.port} (MX, STARTTLS)"
    for _ in range(4):
        assert_still_serves(listener, mailbox_a)


def test_smtp_runner_stop_says_421_to_open_sessions_and_stops_listening(listener, mailbox_a):
    wire = listener.wire()
    wire.hello()
    port = listener.port
    listener.stop()

    assert wire.reply().startswith("421 4.3.2 ")
    assert wire.closed_by_server()
    wire.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- SRS bounces -------------------------------------------------------------------------


def test_bounce_to_our_srs_address_is_relayed_back_to_the_original_sender(listener, settings):
    from apps.relay import services as relay_services
    from apps.relay.models import QueueItem

    srs = relay_services.srs_forward("sender@origin.test")
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        assert client.mail("<>")[0] == 250
        assert client.rcpt(srs)[0] == 250
        report = (
            f"From: MAILER-DAEMON@remote.test\r\nTo: <{srs}>\r\nSubject: Undelivered\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
            ' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nNo such user.\r\n--b--\r\n'
        ).encode()
        code, reply = client.data(report)
        assert code == 250, reply
    item = QueueItem.objects.get(message__queue_id=queue_id_of(reply))
    assert item.kind == QueueItem.Kind.BOUNCE and item.sender == ""
    assert list(item.recipients.values_list("address", flat=True)) == ["sender@origin.test"]


def test_srs_address_takes_reports_only_and_checks_its_hash(listener, settings):
    from apps.relay import services as relay_services

    srs = relay_services.srs_forward("sender@origin.test")
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        client.mail(SENDER)
        code, reply = client.rcpt(srs)
        assert code == 550 and b"5.7.1" in reply
        client.rset()
        client.mail("<>")
        code, _ = client.rcpt(srs.replace("SRS0=", "SRS0=zz", 1))
        assert code == 550


def test_srs_address_refuses_content_that_is_not_a_report(listener, settings):
    from apps.relay import services as relay_services

    srs = relay_services.srs_forward("victim@origin.test")
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        client.mail("<>")
        assert client.rcpt(srs)[0] == 250
        code, reply = client.data(rfc5322(subject="Buy now", to=srs))
    assert code == 550 and b"5.7.1" in reply
    assert not Message.objects.exists()


def test_mail_loop_is_refused_by_hop_count(listener, mailbox_a):
    looping = b"".join(
        b"Received: from hop%d.test by hop%d.test; Sat, 21 Nov 2026 10:00:00 +0000\r\n" % (n, n)
        for n in range(51)
    )
    with listener.smtp() as client:
        client.ehlo(CLIENT_HELO)
        client.mail(SENDER)
        client.rcpt(ALICE)
        code, reply = client.data(looping + rfc5322())
    assert code == 554 and b"5.4.6" in reply
