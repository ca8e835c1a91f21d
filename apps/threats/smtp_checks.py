"""Checks the MX makes during the SMTP dialogue, before it accepts a message: DNS block
lists at connection, SPF at MAIL FROM, and a decision at RCPT that may refuse the mail.

The MX listener (apps.relay.smtp) loads this module through settings.A3_SMTP_CHECKS, so
relay never imports threats. The listener calls these functions on its worker threads;
none of them raises for a DNS problem: an unknown answer is recorded and scores nothing.

Scores and the defaults behind them (the domain policy's reject score decides, 15 by
default, A3_SPAM_REJECT_SCORE):

- each DNS block list that lists the client: +6 (DNSBL_LISTING_SCORE);
- SPF fail: +3.5, softfail: +1 (SPF_FAIL_SCORE, SPF_SOFTFAIL_SCORE).

So one listing, or one listing and a forged sender domain (9.5), or two listings (12)
are accepted and weighed again with the content after DATA; two listings and an SPF
fail (15.5), or three listings (18), are refused at RCPT with 550 5.7.1. One list can be
wrong about an address (a dynamic range, a shared host); two independent lists and a
sender domain that disowns the client together are not. SPF alone never refuses mail:
forwarding breaks SPF, and DMARC after DATA judges that better.

List entries of the server and of the recipient's domain apply at RCPT too: an allowed
sender, sender domain or client address is never refused, a blocked one always is. A
user's own lists act only after DATA (the listing is per mailbox, RCPT is per address).

Block list queries skip clients in A3_DNSBL_SKIP_NETWORKS (loopback and private networks
by default: local relays and tests; RFC 5782 lists answer nothing useful for them). SPF is
evaluated for every client, local ones included; its DNS answers are cached.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import spf
from django.conf import settings

from apps.threats.dns import ScanDnsError, blocklist_lookup, reversed_ip
from apps.threats.dns import lookup as dns_lookup
from apps.threats.models import ListEntry
from apps.threats.policy import list_match, policy_for_domain

logger = logging.getLogger(__name__)

__all__ = [
    "DNSBL_LISTING_SCORE",
    "SPF_FAIL_SCORE",
    "SPF_SOFTFAIL_SCORE",
    "SmtpCheck",
    "connection_check",
    "mail_from_check",
    "recipient_address_check",
    "recipient_check",
    "recipient_domain_id",
    "smtp_checks_record",
]

# Weights (see the module docstring for what they add up to with the default thresholds).
DNSBL_LISTING_SCORE = 6.0
SPF_FAIL_SCORE = 3.5
SPF_SOFTFAIL_SCORE = 1.0

# Networks whose clients are not looked up in block lists unless A3_DNSBL_SKIP_NETWORKS
# says otherwise: loopback, RFC 1918, carrier-grade NAT, link-local and unique-local.
DEFAULT_DNSBL_SKIP_NETWORKS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z0-9-]{2,63}$"
)
# What may appear in an SMTP reply we compose from client-supplied names.
_REPLY_UNSAFE = re.compile(r"[^\x20-\x7e]")
MAX_REPLY_TEXT = 400


@dataclass
class SmtpCheck:
    """What one SMTP-time check found: its score, reasons in plain words, and results
    for the record (SmtpCheck.results keys: "dnsbl", "dnsbl_errors", "spf")."""

    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)


# --- Connection: DNS block lists ------------------------------------------------------


def _skips_dnsbl(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    networks = getattr(settings, "A3_DNSBL_SKIP_NETWORKS", DEFAULT_DNSBL_SKIP_NETWORKS)
    return any(address in ipaddress.ip_network(network, strict=False) for network in networks)


def _client_address(peer_ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer_ip or "")
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # block lists know the IPv4 address
    return address


def connection_check(*, peer_ip: str | None) -> SmtpCheck:
    """Look the client up in every A3_DNSBL_ZONES zone. No zones, or a client in
    A3_DNSBL_SKIP_NETWORKS: no lookups at all. A zone that cannot be asked is recorded
    under "dnsbl_errors" and scores nothing."""
    zones = [zone.strip().strip(".") for zone in settings.A3_DNSBL_ZONES if zone.strip()]
    address = _client_address(peer_ip)
    check = SmtpCheck(results={"dnsbl": []})
    if not zones or address is None or _skips_dnsbl(address):
        return check
    label = reversed_ip(str(address))
    for zone in zones:
        try:
            answers = blocklist_lookup(label, zone)
        except ScanDnsError as exc:
            logger.info("block list %s could not be asked about %s: %s", zone, address, exc)
            check.results.setdefault("dnsbl_errors", []).append(zone)
            continue
        if answers:
            check.results["dnsbl"].append({"zone": zone, "answers": answers})
            check.score += DNSBL_LISTING_SCORE
            check.reasons.append(f"The sending server {address} is listed on the block list {zone}")
    return check


# --- MAIL FROM: SPF -------------------------------------------------------------------


def _spf_dns(name: str, qtype: str, strict: bool = True, timeout: float = 0) -> list[tuple]:
    """pyspf's DNS hook, answered through our cached resolver (A3_DNS_NAMESERVERS, the scan
    DNS timeout) in the shape pyspf's own dnspython driver returns."""
    try:
        records = dns_lookup(name, qtype)
    except ScanDnsError as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    key = (name, qtype)
    if qtype in ("TXT", "SPF"):
        return [(key, (record.encode("utf-8"),)) for record in records]
    if qtype == "MX":
        answers = []
        for record in records:
            preference, _, exchange = record.partition(" ")
            if preference.isdigit() and exchange:
                answers.append((key, (int(preference), exchange.rstrip("."))))
        return answers
    if qtype == "PTR":
        return [(key, record.rstrip(".")) for record in records]
    return [(key, record) for record in records]


# pyspf resolves through a module-level hook (its documented way to plug in a resolver,
# as its own pydns driver does); without this it would use the machine's resolver with
# 20-second lookups, ignoring A3_DNS_NAMESERVERS and our cache.
spf.DNSLookup = _spf_dns

_SPF_REASONS = {
    "fail": ("{domain} does not allow {ip} to send its mail (SPF fail)", SPF_FAIL_SCORE),
    "softfail": ("{domain} discourages mail from {ip} (SPF softfail)", SPF_SOFTFAIL_SCORE),
}


def mail_from_check(*, peer_ip: str | None, helo: str, mail_from: str) -> SmtpCheck:
    """Evaluate SPF (RFC 7208) for the MAIL FROM domain, or for the HELO name when the
    reverse path is null (§2.4). Never refuses: the result is recorded and scored.
    results["spf"] = {"result", "domain", "identity", "explanation"}."""
    sender = "" if mail_from in ("", "<>") else mail_from
    identity = "mailfrom" if sender else "helo"
    domain = (sender.rpartition("@")[2] if sender else helo).strip().rstrip(".").lower()
    if not domain.isascii():  # an SMTPUTF8 sender: DNS knows the A-label form
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            domain = ""
    address = _client_address(peer_ip)
    record = {"result": "none", "domain": domain, "identity": identity, "explanation": ""}
    check = SmtpCheck(results={"spf": record})
    if address is None or not _HOSTNAME.match(domain):
        return check  # nothing to evaluate: an address literal as HELO, say
    try:
        result, explanation = spf.check2(
            i=str(address),
            s=sender,
            h=helo or domain,
            receiver=settings.A3_HOSTNAME,
            timeout=settings.A3_SCAN_DNS_TIMEOUT_SECONDS,
            querytime=settings.A3_SCAN_STAGE_TIMEOUT_SECONDS,
        )
    except Exception as exc:  # noqa: BLE001 - a library bug on odd input must not cost the mail
        logger.warning("SPF evaluation of %s for %s failed: %s", domain, address, type(exc).__name__)
        result, explanation = "temperror", "SPF evaluation failed"
    record.update(result=result, explanation=str(explanation or "")[:300])
    if result in _SPF_REASONS:
        text, score = _SPF_REASONS[result]
        check.score += score
        check.reasons.append(text.format(domain=domain, ip=address))
    return check


# --- RCPT: the decision ---------------------------------------------------------------


def recipient_domain_id(*, address: str) -> int | None:
    """The id of the local domain of a (normalised) recipient address."""
    from apps.mailboxes.models import Domain

    name = address.rpartition("@")[2].lower()
    return Domain.objects.filter(name=name).values_list("id", flat=True).first()


def _reply_text(reasons: Sequence[str]) -> str:
    text = _REPLY_UNSAFE.sub("?", "; ".join(reasons))
    return text if len(text) <= MAX_REPLY_TEXT else text[: MAX_REPLY_TEXT - 3] + "..."


def recipient_check(
    *, peer_ip: str | None, mail_from: str, domain_id: int | None, score: float, reasons: Sequence[str] = ()
) -> str | None:
    """The 550 reply refusing this recipient, or None to accept it. The server's and the
    recipient domain's list entries decide first (allowed: never refused; blocked:
    always); then the SMTP-time score against the domain's reject score."""
    sender = "" if mail_from in ("", "<>") else mail_from
    entry = list_match(sender=sender, peer_ip=peer_ip, domain_id=domain_id)
    if entry is not None and entry.kind == ListEntry.Kind.ALLOW:
        return None
    if entry is not None:
        return (
            "550 5.7.1 Message refused: the sender or the sending server is blocked by the recipient's domain"
        )
    if score <= 0:  # nothing found: no policy to read (a reject score is always positive)
        return None
    reject_score = policy_for_domain(domain_id).reject_score
    if score < reject_score:
        return None
    return f"550 5.7.1 Message refused as spam: {_reply_text(reasons) or f'score {score:.1f}'}"


def recipient_address_check(
    *, peer_ip: str | None, mail_from: str, address: str, checks: Sequence[SmtpCheck]
) -> str | None:
    """recipient_check for a local recipient address, with the session's checks so far."""
    return recipient_check(
        peer_ip=peer_ip,
        mail_from=mail_from,
        domain_id=recipient_domain_id(address=address),
        score=sum(check.score for check in checks),
        reasons=[reason for check in checks for reason in check.reasons],
    )


def smtp_checks_record(*, checks: Sequence[SmtpCheck]) -> dict:
    """The JSON stored with the message (Message.smtp_checks), read by the scan stages:
    {"score", "spf": {"result", "domain", "identity", "explanation"},
    "dnsbl": [{"zone", "answers"}], "reasons": [...]} ("dnsbl_errors" when a zone failed)."""
    record: dict = {
        "score": round(sum(check.score for check in checks), 3),
        "dnsbl": [],
        "reasons": [reason for check in checks for reason in check.reasons],
    }
    for check in checks:
        if "spf" in check.results:
            record["spf"] = dict(check.results["spf"])
        record["dnsbl"].extend(check.results.get("dnsbl", []))
        if check.results.get("dnsbl_errors"):
            record.setdefault("dnsbl_errors", []).extend(check.results["dnsbl_errors"])
    return record
