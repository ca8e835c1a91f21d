"""SMTP-time checks: DNS block lists, SPF at MAIL FROM and the decision at RCPT, first as
functions, then over real SMTP sessions against the MX listener (the dns_zone fixture
answers every lookup)."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections

from apps.mailboxes.models import Message
from apps.relay.roles import SmtpRunner
from apps.relay.smtp import HardenedSMTP
from apps.threats.models import DomainPolicy, ListEntry
from apps.threats.smtp_checks import (
    DNSBL_LISTING_SCORE,
    SPF_FAIL_SCORE,
    SPF_SOFTFAIL_SCORE,
    connection_check,
    mail_from_check,
    recipient_check,
)

BLOCK_LIST = "bl.example.net"


@pytest.fixture(autouse=True)
def fresh_dns_cache():
    """DNS answers are cached in the Django cache; every test publishes its own zone."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def block_list(dns_zone, settings):
    """A block list that lists 127.0.0.2 (the RFC 5782 test entry) and 192.0.2.99, and
    checks that include loopback clients (the SMTP tests connect from 127.0.0.2)."""
    settings.A3_DNSBL_ZONES = [BLOCK_LIST]
    settings.A3_DNSBL_SKIP_NETWORKS = []
    dns_zone.add(f"2.0.0.127.{BLOCK_LIST}", "A", "127.0.0.2")
    dns_zone.add(f"99.2.0.192.{BLOCK_LIST}", "A", "127.0.0.4")
    return dns_zone


# --- Block lists --------------------------------------------------------------------------


def test_connection_check_scores_a_listed_client(block_list):
    check = connection_check(peer_ip="192.0.2.99")

    assert check.score == DNSBL_LISTING_SCORE
    assert check.results["dnsbl"] == [{"zone": BLOCK_LIST, "answers": ["127.0.0.4"]}]
    assert check.reasons == [f"The sending server 192.0.2.99 is listed on the block list {BLOCK_LIST}"]


def test_connection_check_counts_each_listing_zone(block_list, settings):
    settings.A3_DNSBL_ZONES = [BLOCK_LIST, "second.example.net"]
    block_list.add("99.2.0.192.second.example.net", "A", "127.0.0.2")

    check = connection_check(peer_ip="192.0.2.99")

    assert check.score == 2 * DNSBL_LISTING_SCORE
    assert [hit["zone"] for hit in check.results["dnsbl"]] == [BLOCK_LIST, "second.example.net"]


def test_connection_check_unlisted_client_scores_nothing(block_list):
    check = connection_check(peer_ip="192.0.2.50")

    assert check.score == 0
    assert check.results["dnsbl"] == []


def test_connection_check_skips_loopback_clients_by_default(dns_zone, settings):
    settings.A3_DNSBL_ZONES = [BLOCK_LIST]
    # A3_DNSBL_SKIP_NETWORKS unset: the built-in default, loopback and private networks.
    dns_zone.add(f"2.0.0.127.{BLOCK_LIST}", "A", "127.0.0.2")

    assert connection_check(peer_ip="127.0.0.2").results["dnsbl"] == []
    assert connection_check(peer_ip="10.1.2.3").score == 0


def test_connection_check_zone_that_fails_is_recorded_not_scored(block_list):
    block_list.servfail.add(f"99.2.0.192.{BLOCK_LIST}")

    check = connection_check(peer_ip="192.0.2.99")

    assert check.score == 0
    assert check.results["dnsbl_errors"] == [BLOCK_LIST]


# --- SPF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "result", "score"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "pass", 0),
        ("v=spf1 ip4:198.51.100.0/24 -all", "fail", SPF_FAIL_SCORE),
        ("v=spf1 ip4:198.51.100.0/24 ~all", "softfail", SPF_SOFTFAIL_SCORE),
        ("v=spf1 ip4:198.51.100.0/24 ?all", "neutral", 0),
    ],
)
def test_mail_from_check_evaluates_spf_of_the_sender_domain(dns_zone, record, result, score):
    dns_zone.txt("example.org", record)

    check = mail_from_check(peer_ip="192.0.2.7", helo="mx.example.org", mail_from="carol@example.org")

    assert check.results["spf"]["result"] == result
    assert check.results["spf"]["domain"] == "example.org"
    assert check.results["spf"]["identity"] == "mailfrom"
    assert check.score == score


def test_mail_from_check_follows_mx_and_include_through_our_resolver(dns_zone):
    dns_zone.txt("example.org", "v=spf1 mx include:_spf.provider.example -all")
    dns_zone.add("example.org", "MX", "10 mail.example.org.")
    dns_zone.add("mail.example.org", "A", "192.0.2.7")
    dns_zone.txt("_spf.provider.example", "v=spf1 ip4:203.0.113.0/24 -all")

    by_mx = mail_from_check(peer_ip="192.0.2.7", helo="x", mail_from="carol@example.org")
    by_include = mail_from_check(peer_ip="203.0.113.9", helo="x", mail_from="carol@example.org")
    neither = mail_from_check(peer_ip="198.51.100.1", helo="x", mail_from="carol@example.org")

    assert (by_mx.results["spf"]["result"], by_include.results["spf"]["result"]) == ("pass", "pass")
    assert neither.results["spf"]["result"] == "fail"


def test_mail_from_check_null_sender_uses_the_helo_identity(dns_zone):
    dns_zone.txt("mx.example.org", "v=spf1 ip4:192.0.2.7 -all")

    check = mail_from_check(peer_ip="192.0.2.7", helo="mx.example.org", mail_from="")

    assert check.results["spf"] == {
        "result": "pass",
        "domain": "mx.example.org",
        "identity": "helo",
        "explanation": "sender SPF authorized",
    }


def test_mail_from_check_dns_failure_is_temperror_without_score(dns_zone):
    dns_zone.servfail.add("example.org")

    check = mail_from_check(peer_ip="192.0.2.7", helo="mx.example.org", mail_from="carol@example.org")

    assert check.results["spf"]["result"] == "temperror"
    assert check.score == 0


# --- RCPT ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_recipient_check_refuses_at_the_domain_reject_score(domain_a):
    DomainPolicy.objects.create(domain=domain_a, reject_score=9.0)
    reasons = ["The sending server 192.0.2.99 is listed on the block list bl.example.net"]

    refused = recipient_check(
        peer_ip="192.0.2.99", mail_from="x@spam.example", domain_id=domain_a.pk, score=9.5, reasons=reasons
    )
    accepted = recipient_check(
        peer_ip="192.0.2.99", mail_from="x@spam.example", domain_id=domain_a.pk, score=8.9
    )

    assert refused == f"550 5.7.1 Message refused as spam: {reasons[0]}"
    assert accepted is None


@pytest.mark.django_db
def test_recipient_check_defaults_need_two_listings_and_an_spf_fail(domain_a):
    def verdict(score: float) -> str | None:
        return recipient_check(
            peer_ip="192.0.2.99", mail_from="x@spam.example", domain_id=domain_a.pk, score=score
        )

    assert verdict(DNSBL_LISTING_SCORE + SPF_FAIL_SCORE) is None
    assert verdict(2 * DNSBL_LISTING_SCORE) is None
    assert verdict(2 * DNSBL_LISTING_SCORE + SPF_FAIL_SCORE).startswith("550 5.7.1 ")


@pytest.mark.django_db
def test_recipient_check_lists_decide_before_the_score(domain_a, domain_b):
    ListEntry.objects.create(kind="allow", match="ip", value="192.0.2.0/24", domain=domain_a)
    ListEntry.objects.create(kind="block", match="domain", value="spam.example", domain=domain_b)

    allowed = recipient_check(
        peer_ip="192.0.2.99", mail_from="x@spam.example", domain_id=domain_a.pk, score=99
    )
    blocked = recipient_check(
        peer_ip="192.0.2.99", mail_from="x@spam.example", domain_id=domain_b.pk, score=0
    )

    assert allowed is None
    assert blocked.startswith("550 5.7.1 ")


# --- Over SMTP ----------------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="smtp-loop", daemon=True)
        self.runner = SmtpRunner(host="127.0.0.1", port=0)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(40)

    def client(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        return smtplib.SMTP(
            "127.0.0.1",
            self.runner.port,
            local_hostname="client.test",
            timeout=10,
            source_address=(source, 0),
        )


@pytest.fixture
def listener(transactional_db, monkeypatch) -> Iterator[Listener]:
    # The listener's threads close their database connections after each call, so none
    # outlives the test database.
    monkeypatch.setitem(connections.settings[DEFAULT_DB_ALIAS], "CONN_MAX_AGE", 0)
    handle = Listener()
    handle.thread.start()
    try:
        handle.run(handle.runner.start())
        yield handle
    finally:
        handle.run(handle.runner.stop())
        for _ in range(500):
            if not sum(HardenedSMTP.connections_per_ip.values()):
                break
            threading.Event().wait(0.01)
        handle.loop.call_soon_threadsafe(handle.loop.stop)
        handle.thread.join(timeout=10)
        handle.loop.close()


def body(sender: str) -> bytes:
    return f"From: <{sender}>\r\nTo: <alice@alpha.test>\r\nSubject: Hi\r\n\r\nHello.\r\n".encode()


def stored_checks(reply: bytes) -> dict:
    queue_id = reply.decode().rsplit(" ", 1)[-1]
    return Message.objects.get(queue_id=queue_id).smtp_checks


@pytest.mark.parametrize(
    ("record", "result"),
    [
        ("v=spf1 ip4:127.0.0.1 -all", "pass"),
        ("v=spf1 ip4:192.0.2.1 -all", "fail"),
        ("v=spf1 ~all", "softfail"),
    ],
)
def test_smtp_spf_at_mail_from_is_recorded_with_the_message(listener, dns_zone, mailbox_a, record, result):
    dns_zone.txt("sender.example", record)

    with listener.client() as client:
        client.ehlo("client.test")
        assert client.mail("carol@sender.example")[0] == 250  # SPF never refuses MAIL
        assert client.rcpt("alice@alpha.test")[0] == 250
        code, reply = client.data(body("carol@sender.example"))
    assert code == 250, reply

    checks = stored_checks(reply)
    assert checks["spf"]["result"] == result
    assert checks["spf"]["domain"] == "sender.example"
    assert checks["score"] == {"pass": 0, "fail": SPF_FAIL_SCORE, "softfail": SPF_SOFTFAIL_SCORE}[result]
    assert checks["dnsbl"] == []


def test_smtp_listed_client_with_spf_fail_is_refused_at_rcpt(listener, block_list, mailbox_a, mailbox_b):
    block_list.txt("sender.example", "v=spf1 ip4:192.0.2.1 -all")
    DomainPolicy.objects.create(domain=mailbox_a.domain, reject_score=9.0)  # beta.test keeps 15

    with listener.client(source="127.0.0.2") as client:
        client.ehlo("client.test")
        assert client.mail("carol@sender.example")[0] == 250
        code, reply = client.rcpt("alice@alpha.test")
        assert (code, reply.decode()) == (
            550,
            "5.7.1 Message refused as spam: The sending server 127.0.0.2 is listed on the block list "
            "bl.example.net; sender.example does not allow 127.0.0.2 to send its mail (SPF fail)",
        )
        assert client.rcpt("bob@beta.test")[0] == 250  # 9.5 is below beta.test's reject score
        code, reply = client.data(body("carol@sender.example"))
    assert code == 250, reply

    message = Message.objects.get()
    assert list(message.recipients.values_list("address", flat=True)) == ["bob@beta.test"]
    assert message.smtp_checks["score"] == DNSBL_LISTING_SCORE + SPF_FAIL_SCORE
    assert message.smtp_checks["dnsbl"] == [{"zone": BLOCK_LIST, "answers": ["127.0.0.2"]}]


def test_smtp_allow_listed_client_is_not_refused(listener, block_list, mailbox_a):
    block_list.txt("sender.example", "v=spf1 ip4:192.0.2.1 -all")
    DomainPolicy.objects.create(domain=mailbox_a.domain, reject_score=1.0)
    ListEntry.objects.create(kind="allow", match="ip", value="127.0.0.2", domain=mailbox_a.domain)

    with listener.client(source="127.0.0.2") as client:
        client.ehlo("client.test")
        client.mail("carol@sender.example")
        assert client.rcpt("alice@alpha.test")[0] == 250
        code, reply = client.data(body("carol@sender.example"))
    assert code == 250, reply

    # Still recorded, for the scan after DATA and for the admin looking at the message.
    assert stored_checks(reply)["score"] == DNSBL_LISTING_SCORE + SPF_FAIL_SCORE


def test_smtp_bounce_with_null_sender_is_checked_by_helo(listener, dns_zone, mailbox_a):
    dns_zone.txt("client.test", "v=spf1 ip4:127.0.0.1 -all")

    with listener.client() as client:
        client.ehlo("client.test")
        assert client.mail("<>")[0] == 250
        assert client.rcpt("alice@alpha.test")[0] == 250
        code, reply = client.data(body("mailer-daemon@client.test"))
    assert code == 250, reply

    assert stored_checks(reply)["spf"] == {
        "result": "pass",
        "domain": "client.test",
        "identity": "helo",
        "explanation": "sender SPF authorized",
    }
