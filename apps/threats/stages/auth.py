"""Email authentication of received mail: every DKIM signature (RFC 6376), the SPF result
of the SMTP session (RFC 7208), DMARC (RFC 7489) and the ARC chain (RFC 8617), reported
as Authentication-Results clauses (RFC 8601) and weighed into the score.

SPF is evaluated once, at MAIL FROM (apps.threats.smtp_checks), and read here from
context.smtp_checks: after DATA the client is gone and a second lookup could only
disagree. Block list listings found at connection are weighed here as well, since the
verdict is made after DATA. DNS goes through apps.threats.dns (our resolvers, cached, short
timeouts); a lookup that fails gives a temperror clause and no score: a remote DNS problem
is not a scanner failure.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache

import dkim
from authheaders.dmarc_lookup import DMARCException, lookup_receiver_record
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffix2 import PublicSuffixList

from apps.threats.dns import ScanDnsError
from apps.threats.dns import lookup as dns_lookup
from apps.threats.models import Category
from apps.threats.pipeline import ScanContext, StageOutcome, scan_stage
from apps.threats.smtp_checks import DNSBL_LISTING_SCORE

logger = logging.getLogger(__name__)

# Scores. With the default thresholds (header 5, junk 6, quarantine 10, reject 15):
# a domain that publishes DMARC p=reject asks receivers to refuse unauthenticated mail
# in its name; after DATA the nearest thing is quarantine, so the failure alone must
# reach the quarantine score. p=quarantine asks for the spam folder: the junk score.
DMARC_REJECT_SCORE = 12.0
DMARC_QUARANTINE_SCORE = 6.0
DMARC_NONE_SCORE = 1.0  # the domain only monitors, but the mail is still not its own
# A signature that does not verify (and none that does): changed in transit, or forged.
DKIM_FAIL_SCORE = 1.5
# A valid signature of the From domain (or its organisation) vouches for the message.
DKIM_ALIGNED_PASS_SCORE = -0.5
# After DATA, SPF weighs less than at RCPT: DMARC already counts an SPF failure that
# matters (the From domain's), and forwarded mail fails SPF honestly.
SPF_FAIL_SCORE = 2.0
SPF_SOFTFAIL_SCORE = 1.0
# Signatures verified per message, and ARC sets per chain: each costs a DNS lookup, a
# public-key operation and a pass over the body. Real mail carries one to three of each;
# a message with more is built to make us work (RFC 8617 allows 50 ARC sets).
MAX_SIGNATURES = 5
MAX_ARC_SETS = 10

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_-]{1,63}$"
)
_TOKEN = re.compile(r"^[A-Za-z0-9._@+-]+$")
_DMARC_RECORD = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)
_POLICIES = ("none", "quarantine", "reject")
_ARC_SEAL = re.compile(rb"^ARC-Seal[ \t]*:", re.IGNORECASE | re.MULTILINE)
_DKIM_SIGNATURE = re.compile(rb"dkim-signature", re.IGNORECASE)
_BLANK_LINE = re.compile(rb"\n\r?\n")


class _LibraryLog:
    """dkimpy reports every broken signature it meets at ERROR level; on an MX those are
    everyday input, so its messages are kept at DEBUG."""

    def _log(self, msg: object, *args: object, **kwargs: object) -> None:
        logger.debug("dkimpy: %s", msg)

    debug = info = warning = error = exception = _log


_library_log = _LibraryLog()


# --- DNS through our resolver ----------------------------------------------------------


def _host(name: bytes | str) -> str:
    text = name.decode("ascii", errors="replace") if isinstance(name, bytes) else name
    return text.strip().rstrip(".").lower()


def _dkim_key_record(name: bytes | str, timeout: float = 5) -> bytes | None:
    """dkimpy's dnsfunc: the key record at selector._domainkey.domain (None when there
    is none, which dkimpy reports as a failed signature). Raises ScanDnsError."""
    host = _host(name)
    if not _DOMAIN.match(host):
        return None  # a signature naming an impossible host cannot verify
    records = dns_lookup(host, "TXT")
    keys = [record for record in records if "p=" in record] or records
    return keys[0].encode("utf-8") if keys else None


def _dmarc_record_text(name: str) -> str | None:
    """authheaders' dnsfunc for _dmarc.<domain>: the one DMARC record there, tidied so the
    library can parse it (RFC 7489 §6.6.3: none, or more than one, is no record)."""
    host = _host(name)
    if not _DOMAIN.match(host):
        return None
    records = [record for record in dns_lookup(host, "TXT") if _DMARC_RECORD.match(record)]
    if len(records) != 1:
        return None
    tags = [tag.strip() for tag in records[0].split(";") if "=" in tag]
    return "; ".join(["v=DMARC1", *tags[1:]])


# --- Organizational domains (RFC 7489 §3.2) -------------------------------------------


@lru_cache(maxsize=1)
def _suffix_list() -> PublicSuffixList:
    source = importlib.resources.files("authheaders") / "public_suffix_list.txt"
    with source.open(encoding="utf-8") as stream:
        return PublicSuffixList(stream)


@lru_cache(maxsize=8192)
def organizational_domain(domain: str) -> str:
    """The registered domain that `domain` belongs to: its public suffix plus one label.
    (publicsuffix2's own answer is the bare TLD for names under a TLD it does not list.)"""
    domain = domain.lower().rstrip(".")
    suffix = _suffix_list().get_tld(domain) or domain.rpartition(".")[2]
    labels = domain.split(".")
    keep = len(suffix.split(".")) + 1
    return domain if len(labels) <= keep else ".".join(labels[-keep:])


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    domain = domain.lower().rstrip(".")
    if mode == "s":
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


# --- The three methods ----------------------------------------------------------------


@dataclass
class DkimResult:
    result: str  # pass | fail | permerror | temperror
    domain: str
    selector: str


def _may_carry_dkim(raw: bytes) -> bool:
    """False when dkimpy could find no DKIM-Signature in `raw` (the common case), which
    spares its parse of the whole message: such a header sits before the first empty line
    (dkimpy accepts LF and CRLF line ends), and a message dkimpy refuses counts as signed
    when the name appears in its first 64 KiB."""
    blank_line = _BLANK_LINE.search(raw)
    end = len(raw) if blank_line is None else max(blank_line.end(), 65536)
    return _DKIM_SIGNATURE.search(raw, 0, end) is not None


def _dkim_results(context: ScanContext) -> list[DkimResult]:
    if not _may_carry_dkim(context.raw):
        return []
    try:
        verifier = dkim.DKIM(context.raw, logger=_library_log)
    except dkim.DKIMException:
        return [DkimResult("permerror", "", "")] if b"dkim-signature:" in context.raw[:65536].lower() else []
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    results: list[DkimResult] = []
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        context.check_time()
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            tags = {}
        domain = _host(tags.get(b"d", b""))
        selector = _host(tags.get(b"s", b""))
        try:
            verified = verifier.verify(idx=index, dnsfunc=_dkim_key_record)
            result = "pass" if verified else "fail"
        except ScanDnsError:
            result = "temperror"
        except dkim.ValidationError:  # the body hash differs, expired, and kin
            result = "fail"
        except dkim.DKIMException:  # a malformed signature, or an unusable key
            result = "permerror"
        results.append(DkimResult(result, domain, selector))
    return results


def _arc_result(context: ScanContext) -> str:
    end = context.raw.find(b"\r\n\r\n")
    seals = len(_ARC_SEAL.findall(context.raw[: end if end >= 0 else len(context.raw)]))
    if not seals:
        return "none"
    if seals > MAX_ARC_SETS:
        return "fail"
    context.check_time()
    try:
        chain, _sets, _comment = dkim.ARC(context.raw, logger=_library_log).verify(dnsfunc=_dkim_key_record)
    except ScanDnsError:
        return "temperror"
    except dkim.DKIMException:
        return "fail"
    # None: an ARC-Seal reported cv=fail, which ends the chain (RFC 8617 §5.2).
    return {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(chain, "fail")


@dataclass
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    domain: str = ""
    policy: str = ""


def _dmarc_policy(from_domain: str) -> tuple[dict, str]:
    """The DMARC record governing `from_domain` and the policy it sets for it: the
    domain's own record, else its organizational domain's (whose sp= applies)."""
    record = lookup_receiver_record(from_domain, _dmarc_record_text)
    if record:
        return record, record.get("p", "")
    org = organizational_domain(from_domain)
    if org == from_domain:
        return {}, ""
    record = lookup_receiver_record(org, _dmarc_record_text)
    return record, (record.get("sp") or record.get("p", "")) if record else ""


def _dmarc_result(from_domains: set[str], spf: dict, dkim_results: list[DkimResult]) -> DmarcResult:
    if len(from_domains) != 1:
        return DmarcResult("permerror", domain=",".join(sorted(from_domains))[:200])
    from_domain = next(iter(from_domains))
    try:
        record, policy = _dmarc_policy(from_domain)
    except ScanDnsError:
        return DmarcResult("temperror", domain=from_domain)
    except DMARCException:
        return DmarcResult("permerror", domain=from_domain)
    if not record or policy not in _POLICIES:
        # RFC 7489 §6.6.3: a record without a valid p= counts as none.
        return DmarcResult("none", domain=from_domain)
    dkim_aligned = any(
        r.result == "pass" and _aligned(r.domain, from_domain, record.get("adkim", "r")) for r in dkim_results
    )
    spf_aligned = spf.get("result") == "pass" and _aligned(
        spf.get("domain", ""), from_domain, record.get("aspf", "r")
    )
    return DmarcResult("pass" if dkim_aligned or spf_aligned else "fail", domain=from_domain, policy=policy)


# --- The stage ------------------------------------------------------------------------


def _pvalue(text: str) -> str:
    """An Authentication-Results property value: a token, else a quoted string."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", text)[:255]
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _from_domains(context: ScanContext) -> set[str]:
    addresses = getaddresses(context.header_values("From"))
    return {
        address.rpartition("@")[2].strip().rstrip(".").lower()
        for _name, address in addresses
        if "@" in address and address.rpartition("@")[2].strip()
    }


@scan_stage("auth")
def authentication_stage(context: ScanContext) -> StageOutcome:
    """DKIM, SPF (as recorded at MAIL FROM), DMARC and ARC results with their score."""
    if context.submitted:
        return StageOutcome(status="skipped")
    outcome = StageOutcome()
    dns_errors: list[str] = []

    # SPF, as evaluated during the SMTP session.
    spf = context.smtp_checks.get("spf") or {}
    if spf.get("result"):
        identity = "smtp.helo" if spf.get("identity") == "helo" else "smtp.mailfrom"
        outcome.auth_results.append(f"spf={spf['result']} {identity}={_pvalue(spf.get('domain', ''))}")
        if spf["result"] == "fail":
            outcome.score += SPF_FAIL_SCORE
            outcome.reasons.append(
                f"{spf.get('domain')} does not allow the sending server to send its mail (SPF fail)"
            )
        elif spf["result"] == "softfail":
            outcome.score += SPF_SOFTFAIL_SCORE
            outcome.reasons.append(
                f"{spf.get('domain')} discourages mail from the sending server (SPF softfail)"
            )
        elif spf["result"] == "temperror":
            dns_errors.append("spf")

    # Block lists that listed the client at connection.
    for listing in context.smtp_checks.get("dnsbl") or []:
        outcome.score += DNSBL_LISTING_SCORE
        outcome.reasons.append(
            f"The sending server {context.peer_ip} is listed on the block list {listing.get('zone')}"
        )

    # DKIM: every signature.
    from_domains = _from_domains(context)
    signatures = _dkim_results(context)
    if not signatures:
        outcome.auth_results.append("dkim=none")
    for signature in signatures:
        outcome.auth_results.append(
            f"dkim={signature.result} header.d={_pvalue(signature.domain)} header.s={_pvalue(signature.selector)}"
        )
        if signature.result == "temperror":
            dns_errors.append(f"dkim {signature.selector}._domainkey.{signature.domain}")
    passed = [s for s in signatures if s.result == "pass"]
    broken = [s for s in signatures if s.result in ("fail", "permerror")]
    if broken and not passed:
        outcome.score += DKIM_FAIL_SCORE
        outcome.reasons.append(
            f"The DKIM signature of {broken[0].domain or 'the sender'} does not verify: "
            "the message was changed after it was signed, or the signature is forged"
        )
    if len(from_domains) == 1 and any(_aligned(s.domain, next(iter(from_domains)), "r") for s in passed):
        outcome.score += DKIM_ALIGNED_PASS_SCORE
        outcome.reasons.append(f"The message carries a valid DKIM signature of {next(iter(from_domains))}")

    # DMARC for the From domain.
    dmarc = _dmarc_result(from_domains, spf, signatures)
    comment = f" (p={dmarc.policy})" if dmarc.policy else ""
    header_from = f" header.from={_pvalue(dmarc.domain)}" if dmarc.domain else ""
    outcome.auth_results.append(f"dmarc={dmarc.result}{comment}{header_from}")
    if dmarc.result == "temperror":
        dns_errors.append(f"dmarc {dmarc.domain}")
    elif dmarc.result == "fail":
        unauthenticated = "the message is not authenticated as from that domain"
        if dmarc.policy == "reject":
            outcome.score += DMARC_REJECT_SCORE
            outcome.category = Category.SPAM
            outcome.reasons.append(f"DMARC policy of {dmarc.domain} says reject: {unauthenticated}")
        elif dmarc.policy == "quarantine":
            outcome.score += DMARC_QUARANTINE_SCORE
            outcome.reasons.append(f"DMARC policy of {dmarc.domain} says quarantine: {unauthenticated}")
        else:
            outcome.score += DMARC_NONE_SCORE
            outcome.reasons.append(f"The message is not authenticated as from {dmarc.domain} (DMARC)")

    # ARC: reported for the record; no trusted sealers are configured to act on it.
    arc = _arc_result(context)
    outcome.auth_results.append(f"arc={arc}")
    if arc == "temperror":
        dns_errors.append("arc")

    outcome.data = {
        "spf": spf.get("result", ""),
        "dkim": [{"domain": s.domain, "selector": s.selector, "result": s.result} for s in signatures],
        "dmarc": {"result": dmarc.result, "domain": dmarc.domain, "policy": dmarc.policy},
        "arc": arc,
    }
    if dns_errors:
        outcome.data["dns_errors"] = dns_errors
    outcome.score = round(outcome.score, 3)
    return outcome
