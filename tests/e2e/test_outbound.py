"""Outbound mail end to end: a mail client submits to a real installation (STARTTLS,
AUTH), the Celery worker inside it signs with DKIM and relays to a remote server on
loopback, and the signature verifies against the record published in a DNS server the
test runs. Then the crash case (the worker killed mid-delivery still delivers, at worst
twice, never not at all) and a real Postfix as the receiving end."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import TypeVar

import dkim
import dns.resolver
import pytest

from apps.relay.bench.postfix import PrivatePostfix, postfix_installed
from tests.e2e.conftest import ROOT, Proc, Server, admin_token, api, installation
from tests.support.dnsserver import DnsServer, Zone
from tests.support.remote_mta import Behaviour, RemoteMta, free_port

pytestmark = pytest.mark.e2e

T = TypeVar("T")

DOMAIN = "outbound.test"
SENDER = f"sender@{DOMAIN}"
SENDER_PASSWORD = "outbound-e2e-mailbox-password"
EXTERNAL = "external.test"
RECIPIENT = f"someone@{EXTERNAL}"


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the installation's certificate is self-signed
    return context


def wait_for(predicate: Callable[[], T], timeout: float, what: str, server: Server | None = None) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s\n{server.logs() if server else ''}")


def message(message_id: str, subject: str) -> bytes:
    return (
        f"From: Sender <{SENDER}>\r\n"
        f"To: <{RECIPIENT}>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "Hello from the outbound end-to-end test.\r\n" + "A line of body text to sign.\r\n" * 10
    ).encode()


def provision_sender(server: Server, token: str) -> None:
    status, body = api(server, "POST", "/api/v1/domains/", {"name": DOMAIN}, token=token)
    assert status == 201, body
    status, body = api(
        server,
        "POST",
        "/api/v1/mailboxes/",
        {"address": SENDER, "password": SENDER_PASSWORD, "quota_bytes": 0},
        token=token,
    )
    assert status == 201, body


def transport_rule(server: Server, token: str, *, domain: str, port: int, tls: str = "opportunistic") -> None:
    rule = {"domain": domain, "host": "127.0.0.1", "port": port, "tls": tls}
    status, body = api(server, "POST", "/api/v1/transport-rules/", rule, token=token)
    if status in (404, 405):
        # An installation without the transport-rules endpoint: the same service, run
        # against the installation's data dir and database.
        code = f"from apps.relay.services import transport_rule_create\ntransport_rule_create(**{rule!r})"
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return
    assert status == 201, body


def submission_address(server: Server) -> tuple[str, int]:
    host, port = server.env["A3_SUBMISSION_LISTEN"].rsplit(":", 1)
    return host, int(port)


def submit(server: Server, raw: bytes, *, timeout: float = 60) -> str:
    """Send `raw` from SENDER to RECIPIENT through the submission listener (STARTTLS, then
    AUTH); waits for the listener, which starts after the web role. Returns the 250 text."""
    host, port = submission_address(server)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = smtplib.SMTP(host, port, local_hostname="laptop.e2e.test", timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"submission listener never answered\n{server.logs()}") from None
            time.sleep(0.3)
    with client:
        client.ehlo()
        client.starttls(context=_insecure())
        client.ehlo()
        client.login(SENDER, SENDER_PASSWORD)
        client.mail(SENDER)
        code, reply = client.rcpt(RECIPIENT)
        assert code == 250, reply
        code, reply = client.data(raw)
        assert code == 250, reply
    return reply.decode()


def queue_item_sent(server: Server, token: str) -> dict:
    """The queue item for EXTERNAL once the queue API reports it sent."""

    def sent() -> dict | None:
        status, body = api(server, "GET", f"/api/v1/queue/?domain={EXTERNAL}", token=token)
        assert status == 200, body
        (item,) = body["results"]
        return item if item["state"] == "sent" else None

    return wait_for(sent, 30, "the queue item recorded as sent", server)


def dns_txt(dns_port: int) -> Callable[..., bytes | None]:
    """A dkimpy dnsfunc that asks the test's DNS server, as a remote verifier would ask
    the real DNS."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_port
    resolver.lifetime = 5

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(record.strings) for record in answer)

    return lookup


def test_submitted_mail_is_signed_relayed_and_kept_in_sent(tmp_path):
    """Done when: an authenticated client's message reaches the remote server with a
    DKIM signature that verifies against DNS, and the sender has a Sent copy."""
    zone = Zone()
    dns_server = DnsServer(zone).start()
    sink = RemoteMta().start()
    try:
        extra_env = {"A3_DNS_NAMESERVERS": dns_server.address, "A3_HOSTNAME": "mx.outbound.test"}
        with installation(tmp_path, extra_env=extra_env) as server:
            server.start("serve", sys.executable, "manage.py", "serve")
            server.wait_ready()
            token = admin_token(server)
            provision_sender(server, token)
            status, key = api(server, "POST", "/api/v1/dkim-keys/", {"domain": DOMAIN}, token=token)
            assert status == 201, key
            assert key["is_active"] and key["dns_name"].endswith(f"._domainkey.{DOMAIN}")
            zone.txt(key["dns_name"], key["dns_value"])
            status, check = api(server, "POST", f"/api/v1/dkim-keys/{key['id']}/check/", token=token)
            assert status == 200 and check["state"] == "published", check  # found through A3_DNS_NAMESERVERS
            transport_rule(server, token, domain=EXTERNAL, port=sink.port)

            message_id = "<outbound-e2e-1@laptop.e2e.test>"
            reply = submit(server, message(message_id, "Signed and relayed"))
            assert reply.startswith("2.0.0 Ok: queued as "), reply

            wait_for(lambda: sink.received, 60, "the remote server received the message", server)
            (got,) = sink.received
            assert got.mail_from == SENDER and got.recipients == [RECIPIENT]
            assert got.tls  # opportunistic STARTTLS to a server that offers it
            assert got.content.startswith(b"DKIM-Signature:")
            assert f"Message-ID: {message_id}\r\n".encode() in got.content
            assert dkim.verify(got.content, dnsfunc=dns_txt(dns_server.port))
            signature = got.content.split(b"\r\n\r\n", 1)[0]
            assert f"d={DOMAIN};".encode() in signature.replace(b"\r\n\t", b"").replace(b" ", b"")

            query = urllib.parse.urlencode({"mailbox": SENDER, "folder": "Sent"})
            status, sent = api(server, "GET", f"/api/v1/messages/?{query}", token=token)
            assert status == 200, sent
            assert [item["message_id"] for item in sent["results"]] == [message_id]
            assert queue_item_sent(server, token)["attempts"] == 1
    finally:
        sink.stop()
        dns_server.stop()


def _scale_out() -> bool:
    # Separate worker processes need a broker they can share: Redis.
    return bool(os.environ.get("REDIS_URL"))


def _start_worker(server: Server, name: str, env: dict[str, str] | None = None) -> Proc:
    return server.start(
        name,
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_workers",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        "2",
        "-Q",
        "default,mail,scan,backup",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "WARNING",
        env=env,
    )


def _kill(server: Server, proc: Proc) -> None:
    os.killpg(proc.popen.pid, signal.SIGKILL)  # no shutdown of any kind
    assert proc.popen.wait(timeout=10) == -signal.SIGKILL
    server.procs.remove(proc)


def test_worker_killed_mid_delivery_still_delivers(tmp_path):
    """Killing the worker mid-delivery and restarting it still delivers (a duplicate only
    in the RFC 1047 window) or bounces: never silence. The remote server stalls after
    taking the message data, the worker is SIGKILLed while it waits for the reply, and
    the restarted worker's sweep takes the lease back and delivers."""
    sink = RemoteMta(Behaviour(stall="data")).start()
    # The sweep runs every 5 s and wakes items due for over a second. The first worker
    # keeps the default command timeout, so it is still waiting for the stalled server
    # when it is killed; the second one uses 3 s, so the dead worker's lease expires
    # 4 * 3 + 1 = 13 s after it was taken.
    restart_env = {"A3_RELAY_COMMAND_TIMEOUT_SECONDS": "3"}
    try:
        with installation(tmp_path, extra_env={"A3_RELAY_SWEEP_AFTER_SECONDS": "1"}) as server:
            if _scale_out():
                server.start("front", sys.executable, "manage.py", "serve", "--roles", "web,submission")
                server.wait_ready()
                worker = _start_worker(server, "worker-1")
                server.start(
                    "beat", sys.executable, "-m", "celery", "-A", "celery_workers", "beat",
                    "--loglevel", "WARNING", "--max-interval", "1",
                )  # fmt: skip
            else:
                worker = server.start("serve-1", sys.executable, "manage.py", "serve")
                server.wait_ready()
            token = admin_token(server)
            provision_sender(server, token)
            transport_rule(server, token, domain=EXTERNAL, port=sink.port)

            started = time.monotonic()
            message_id = "<outbound-crash-1@laptop.e2e.test>"
            submit(server, message(message_id, "Delivered despite a crash"))
            wait_for(lambda: sink.rcpt_seen, 30, "the worker reached the remote server", server)
            time.sleep(0.5)  # DATA and the message follow RCPT at once; the server stalls
            assert not sink.received

            _kill(server, worker)  # a whole `serve` in embedded mode, the worker alone in scale-out
            sink.behaviour.stall = ""
            if _scale_out():
                _start_worker(server, "worker-2", env=restart_env)
            else:
                server.start("serve-2", sys.executable, "manage.py", "serve", env=restart_env)
                server.wait_ready()

            wait_for(lambda: sink.received, 60, "the message delivered after the restart", server)
            time.sleep(0.5)  # a second copy would come in the same pass
            ids = {_message_id(got.content) for got in sink.received}
            assert ids == {message_id}  # one message, at most duplicated, nothing else
            assert all(got.recipients == [RECIPIENT] for got in sink.received)
            # The killed pass recorded nothing: the lease was given back, not a failure.
            assert queue_item_sent(server, token)["attempts"] == 1
            assert time.monotonic() - started < 60
    finally:
        sink.stop()


def _message_id(raw: bytes) -> str:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


@pytest.mark.django_db(transaction=True)
def test_real_postfix_receives_signed_mail(settings):
    """A real Postfix as the next hop: the relay's SMTP client against an MTA that is not
    aiosmtpd, and the signature survives its delivery into a Maildir."""
    if not postfix_installed():
        pytest.skip("/usr/sbin/postfix is missing: apt-get install postfix (.ci/run does)")
    from apps.relay import services
    from apps.relay.models import QueueItem
    from apps.relay.services import submission as submission_services
    from tests.factories import TEST_PASSWORD, MailboxFactory, SuperadminFactory

    settings.A3_RELAY_COMMAND_TIMEOUT_SECONDS = 20
    mailbox = MailboxFactory(local_part="writer", domain__name="signer.test")
    key = services.dkim_key_create(actor=SuperadminFactory(), domain=mailbox.domain)
    dns_name, dns_value = services.dkim_dns_record(key)
    recipient = "user@postfix.test"
    # Not under pytest's tmp_path: Postfix's own users must be able to traverse it.
    base = Path(tempfile.mkdtemp(prefix="a3e2e-postfix-"))
    postfix = PrivatePostfix(base, port=free_port(), mailbox_domain="postfix.test", mailboxes=[recipient])
    try:
        postfix.start()
        services.transport_rule_create(domain="postfix.test", host="127.0.0.1", port=postfix.port)
        sender = submission_services.submission_authenticate(username=mailbox.address, password=TEST_PASSWORD)
        assert sender is not None
        raw = (
            f"From: Writer <{mailbox.address}>\r\nTo: <{recipient}>\r\nSubject: to Postfix\r\n"
            f"Message-ID: <to-postfix-1@signer.test>\r\nDate: {formatdate(localtime=False)}\r\n\r\n"
            "Delivered by a real MTA.\r\n"
        ).encode()
        message = submission_services.submission_accept(
            sender=sender,
            mail_from=mailbox.address,
            recipients=[recipient],
            raw=raw,
            trace=b"",
            queue_id="E2EPOSTFIX1",
        )
        (item,) = QueueItem.objects.filter(message=message)
        assert services.queue_deliver(item_id=item.pk) == 1
        item.refresh_from_db()
        assert item.state == QueueItem.State.SENT, item.last_reply

        (path,) = wait_for(lambda: postfix.delivered(recipient), 30, "Postfix delivered the message")
        delivered = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert b"Message-ID: <to-postfix-1@signer.test>" in delivered
        assert b"\r\nDKIM-Signature:" in delivered  # below the headers Postfix added

        def record(name: bytes, timeout: int = 5) -> bytes | None:
            return dns_value.encode() if name.decode().rstrip(".") == dns_name else None

        assert dkim.verify(delivered, dnsfunc=record)
    finally:
        postfix.stop()
        shutil.rmtree(base, ignore_errors=True)
