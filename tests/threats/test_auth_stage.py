"""The authentication stage: DKIM, SPF (as recorded at MAIL FROM), DMARC and ARC against a
real DNS server (the dns_zone fixture) with messages signed by dkimpy, and the
Authentication-Results header that ends up in the stored message."""

from __future__ import annotations

import base64

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.cache import cache

from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Message
from apps.mailboxes.services import IncomingMessage
from apps.threats.models import Category
from apps.threats.pipeline import ScanContext, pipeline_run
from apps.threats.services.scan import message_scan
from apps.threats.stages.auth import (
    DKIM_ALIGNED_PASS_SCORE,
    DKIM_FAIL_SCORE,
    DMARC_NONE_SCORE,
    DMARC_QUARANTINE_SCORE,
    DMARC_REJECT_SCORE,
    SPF_FAIL_SCORE,
    authentication_stage,
    organizational_domain,
)

SIGNED_HEADERS = [b"from", b"to", b"subject", b"message-id", b"date"]


@pytest.fixture(autouse=True)
def fresh_dns_cache():
    """DNS answers are cached in the Django cache; every test publishes its own zone."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="module")
def key_pair() -> tuple[bytes, str]:
    """(PKCS#1 PEM private key, base64 public key for p=)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode()


def message(sender: str = "carol@example.org", body: str = "Quarterly figures attached.") -> bytes:
    return (
        f"From: Carol <{sender}>\r\n"
        "To: alice@alpha.test\r\n"
        "Subject: Figures\r\n"
        "Message-ID: <figures-1@example.org>\r\n"
        "Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def publish_key(zone, key_pair, domain: str, selector: str = "sel") -> None:
    zone.txt(f"{selector}._domainkey.{domain}", f"v=DKIM1; k=rsa; p={key_pair[1]}")


def signed(raw: bytes, key_pair, domain: str, selector: str = "sel") -> bytes:
    header = dkim.sign(raw, selector.encode(), domain.encode(), key_pair[0], include_headers=SIGNED_HEADERS)
    return header + raw


def run(raw: bytes, *, spf: dict | None = None, dnsbl: list | None = None, submitted: bool = False):
    checks: dict = {}
    if spf is not None:
        checks["spf"] = {"identity": "mailfrom", "explanation": "", **spf}
    if dnsbl is not None:
        checks["dnsbl"] = dnsbl
    context = ScanContext(
        raw=raw,
        mail_from="bounce@example.org",
        peer_ip="192.0.2.7",
        helo="mx.example.org",
        smtp_checks=checks,
        submitted=submitted,
    )
    return authentication_stage(context)


def clause(outcome, method: str) -> list[str]:
    return [c for c in outcome.auth_results if c.startswith(f"{method}=")]


# --- DKIM ---------------------------------------------------------------------------------


def test_auth_stage_dkim_signature_verifies_pass(dns_zone, key_pair):
    publish_key(dns_zone, key_pair, "example.org")

    outcome = run(signed(message(), key_pair, "example.org"))

    assert clause(outcome, "dkim") == ["dkim=pass header.d=example.org header.s=sel"]
    assert clause(outcome, "dmarc") == ["dmarc=none header.from=example.org"]  # no DMARC record
    assert clause(outcome, "arc") == ["arc=none"]
    assert outcome.status == "ok"
    assert outcome.score == DKIM_ALIGNED_PASS_SCORE
    assert outcome.data["dkim"] == [{"domain": "example.org", "selector": "sel", "result": "pass"}]


def test_auth_stage_dkim_tampered_body_fails(dns_zone, key_pair):
    publish_key(dns_zone, key_pair, "example.org")
    raw = signed(message(), key_pair, "example.org").replace(b"Quarterly figures", b"Quarterly invoices")

    outcome = run(raw)

    assert clause(outcome, "dkim") == ["dkim=fail header.d=example.org header.s=sel"]
    assert outcome.score == DKIM_FAIL_SCORE
    assert any("DKIM signature of example.org does not verify" in reason for reason in outcome.reasons)


def test_auth_stage_reports_every_signature(dns_zone, key_pair):
    publish_key(dns_zone, key_pair, "example.org")
    publish_key(dns_zone, key_pair, "esp.example.net", selector="s2")
    raw = signed(signed(message(), key_pair, "example.org"), key_pair, "esp.example.net", selector="s2")
    # A third signature whose key is not published.
    raw = signed(raw, key_pair, "ghost.example.net", selector="gone")

    outcome = run(raw)

    assert sorted(clause(outcome, "dkim")) == [
        "dkim=fail header.d=ghost.example.net header.s=gone",
        "dkim=pass header.d=esp.example.net header.s=s2",
        "dkim=pass header.d=example.org header.s=sel",
    ]
    # One valid signature of the From domain: a broken third-party one costs nothing.
    assert outcome.score == DKIM_ALIGNED_PASS_SCORE


def test_auth_stage_unsigned_mail_is_dkim_none(dns_zone):
    outcome = run(message())

    assert clause(outcome, "dkim") == ["dkim=none"]
    assert outcome.score == 0


# --- SPF from the SMTP session ------------------------------------------------------------


def test_auth_stage_reports_the_spf_result_recorded_at_mail_from(dns_zone):
    # The zone holds no SPF record at all: the stage must not look SPF up again.
    failed = run(message(), spf={"result": "fail", "domain": "example.org"})
    passed = run(message(), spf={"result": "pass", "domain": "example.org"})
    helo = run(message(), spf={"result": "pass", "domain": "mx.example.org", "identity": "helo"})

    assert clause(failed, "spf") == ["spf=fail smtp.mailfrom=example.org"]
    assert failed.score == SPF_FAIL_SCORE
    assert clause(passed, "spf") == ["spf=pass smtp.mailfrom=example.org"]
    assert passed.score == 0
    assert clause(helo, "spf") == ["spf=pass smtp.helo=mx.example.org"]


def test_auth_stage_weighs_block_list_listings_found_at_connection(dns_zone):
    outcome = run(message(), dnsbl=[{"zone": "bl.example.net", "answers": ["127.0.0.2"]}])

    assert outcome.score == 6.0
    assert "The sending server 192.0.2.7 is listed on the block list bl.example.net" in outcome.reasons


# --- DMARC --------------------------------------------------------------------------------


def test_auth_stage_dmarc_reject_with_failed_auth_scores_high_and_says_why(dns_zone, key_pair):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject; rua=mailto:dmarc@example.org")
    publish_key(dns_zone, key_pair, "example.org")
    tampered = signed(message(), key_pair, "example.org").replace(b"Quarterly", b"Urgent")

    outcome = run(tampered, spf={"result": "fail", "domain": "example.org"})

    assert clause(outcome, "dmarc") == ["dmarc=fail (p=reject) header.from=example.org"]
    assert outcome.category == Category.SPAM
    assert outcome.score == DMARC_REJECT_SCORE + SPF_FAIL_SCORE + DKIM_FAIL_SCORE
    assert (
        "DMARC policy of example.org says reject: the message is not authenticated as from that domain"
        in outcome.reasons
    )


def test_auth_stage_dmarc_unaligned_pass_is_still_a_failure(dns_zone, key_pair):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    publish_key(dns_zone, key_pair, "bulk-mailer.example.net")
    # Valid DKIM and SPF, but for another organisation than the From domain's.
    raw = signed(message(), key_pair, "bulk-mailer.example.net")

    outcome = run(raw, spf={"result": "pass", "domain": "bulk-mailer.example.net"})

    assert clause(outcome, "dkim") == ["dkim=pass header.d=bulk-mailer.example.net header.s=sel"]
    assert clause(outcome, "dmarc") == ["dmarc=fail (p=reject) header.from=example.org"]
    assert outcome.score == DMARC_REJECT_SCORE


def test_auth_stage_dmarc_passes_with_relaxed_dkim_alignment(dns_zone, key_pair):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    publish_key(dns_zone, key_pair, "mail.example.org")

    outcome = run(signed(message(), key_pair, "mail.example.org"))

    assert clause(outcome, "dmarc") == ["dmarc=pass (p=reject) header.from=example.org"]
    assert outcome.category == ""
    assert outcome.score == DKIM_ALIGNED_PASS_SCORE


def test_auth_stage_dmarc_strict_alignment_needs_the_exact_domain(dns_zone, key_pair):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=quarantine; adkim=s; aspf=s")
    publish_key(dns_zone, key_pair, "mail.example.org")

    outcome = run(
        signed(message(), key_pair, "mail.example.org"),
        spf={"result": "pass", "domain": "bounce.example.org"},
    )

    assert clause(outcome, "dmarc") == ["dmarc=fail (p=quarantine) header.from=example.org"]
    assert outcome.score == DMARC_QUARANTINE_SCORE + DKIM_ALIGNED_PASS_SCORE
    assert outcome.category == ""  # quarantine asks for the junk folder: the score decides


def test_auth_stage_dmarc_passes_on_aligned_spf_alone(dns_zone):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject")

    outcome = run(message(), spf={"result": "pass", "domain": "bounce.example.org"})

    assert clause(outcome, "dmarc") == ["dmarc=pass (p=reject) header.from=example.org"]
    assert outcome.score == 0


def test_auth_stage_dmarc_subdomain_follows_the_organisation_sp_policy(dns_zone):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=none")

    outcome = run(message(sender="news@letters.example.org"))

    assert clause(outcome, "dmarc") == ["dmarc=fail (p=none) header.from=letters.example.org"]
    assert outcome.score == DMARC_NONE_SCORE
    assert outcome.category == ""


def test_organizational_domain_uses_the_public_suffix_list():
    assert organizational_domain("mail.alpha.test") == "alpha.test"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("Example.COM") == "example.com"


# --- ARC ----------------------------------------------------------------------------------


def arc_sealed(raw: bytes, key_pair, sealer: str = "forwarder.example.net") -> bytes:
    """The message as a forwarder passes it on: its Authentication-Results and ARC set."""
    with_results = f"Authentication-Results: {sealer}; spf=pass smtp.mailfrom=example.org\r\n".encode() + raw
    arc_set = dkim.arc_sign(
        with_results, b"arc", sealer.encode(), key_pair[0], sealer.encode(), include_headers=SIGNED_HEADERS
    )
    return b"".join(arc_set) + with_results


def test_auth_stage_arc_sealed_message_passes(dns_zone, key_pair):
    publish_key(dns_zone, key_pair, "forwarder.example.net", selector="arc")

    outcome = run(arc_sealed(message(), key_pair))

    assert clause(outcome, "arc") == ["arc=pass"]


def test_auth_stage_arc_altered_after_sealing_fails(dns_zone, key_pair):
    publish_key(dns_zone, key_pair, "forwarder.example.net", selector="arc")

    outcome = run(arc_sealed(message(), key_pair).replace(b"Quarterly", b"Urgent"))

    assert clause(outcome, "arc") == ["arc=fail"]


# --- DNS trouble, submissions -------------------------------------------------------------


def test_auth_stage_dns_failure_is_temperror_without_score(dns_zone, key_pair):
    dns_zone.servfail.update({"sel._domainkey.example.org", "_dmarc.example.org"})

    outcome = run(signed(message(), key_pair, "example.org"))

    assert clause(outcome, "dkim") == ["dkim=temperror header.d=example.org header.s=sel"]
    assert clause(outcome, "dmarc") == ["dmarc=temperror header.from=example.org"]
    assert outcome.status == "ok"
    assert outcome.score == 0
    assert outcome.data["dns_errors"] == ["dkim sel._domainkey.example.org", "dmarc example.org"]


def test_auth_stage_skips_submitted_mail(dns_zone):
    outcome = run(message(), submitted=True)

    assert outcome.status == "skipped"
    assert outcome.auth_results == []


def test_pipeline_quarantine_threshold_is_reached_by_a_dmarc_reject_failure(dns_zone, settings):
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    context = ScanContext(raw=message(), mail_from="carol@example.org", peer_ip="192.0.2.7")

    result = pipeline_run(context, stages=[authentication_stage])

    assert result.category == Category.SPAM
    assert result.score >= settings.A3_SPAM_QUARANTINE_SCORE


# --- The stored message -------------------------------------------------------------------


@pytest.mark.django_db
def test_message_scan_stamps_our_authentication_results_and_drops_a_forged_one(
    dns_zone, key_pair, mailbox_a, settings
):
    settings.A3_HOSTNAME = "mx.a3.test"
    settings.A3_SCAN_STAGES = ["apps.threats.stages.auth.authentication_stage"]
    publish_key(dns_zone, key_pair, "example.org")
    dns_zone.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    raw = (
        b"Authentication-Results: mx.a3.test; dkim=pass header.d=bank.example\r\n"
        b"Authentication-Results: elsewhere.example; spf=pass smtp.mailfrom=example.org\r\n"
        + signed(message(), key_pair, "example.org")
    )
    [accepted] = mail_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from="bounce@example.org",
                recipients=("alice@alpha.test",),
                raw=raw,
                peer_ip="192.0.2.7",
                helo="mx.example.org",
                smtp_checks={
                    "score": 0,
                    "spf": {"result": "pass", "domain": "example.org", "identity": "mailfrom"},
                },
            )
        ]
    )

    verdict, stamped = message_scan(message=Message.objects.get(pk=accepted.pk))

    stored = blob_store().read(Message.objects.get(pk=accepted.pk).blob_sha256)
    assert stored == stamped
    header_block = stored.split(b"\r\n\r\n", 1)[0].decode()
    ours = [
        line
        for line in header_block.replace("\r\n\t", " ").split("\r\n")
        if line.startswith("Authentication-Results: mx.a3.test")
    ]
    assert ours == [
        "Authentication-Results: mx.a3.test; spf=pass smtp.mailfrom=example.org; "
        "dkim=pass header.d=example.org header.s=sel; dmarc=pass (p=reject) header.from=example.org; arc=none"
    ]
    assert "bank.example" not in header_block  # the forged claim of our authserv-id is gone
    assert "Authentication-Results: elsewhere.example; spf=pass" in header_block  # others' stay
    assert verdict.auth_results.startswith("mx.a3.test; spf=pass")
    assert stored.endswith(message().split(b"\r\n\r\n", 1)[1])
