"""The link stage: links in the text and HTML parts, checked against URI block lists
(A3_URIBL_ZONES), for bare IP addresses, and for names that imitate one of our domains
(IDN homographs such as xn--lpha-43d.test, alpha.test with a Cyrillic first letter, and
one-letter changes such as a1pha.test).
The From header's domain gets the same lookalike check.

Link extraction is bounded (MAX_LINKS links, MAX_LOOKUPS block list queries per zone) and
lookups stop when the stage's time runs short; a DNS failure adds nothing to the score
(it is recorded in the stage's data).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
import unicodedata
from email.utils import getaddresses
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

from django.conf import settings

from apps.threats.dns import ScanDnsError, blocklist_lookup
from apps.threats.pipeline import ScanContext, StageOutcome, scan_stage

MAX_LINKS = 500
MAX_HOSTS = 100
MAX_LOOKUPS = 20
MAX_TEXT_CHARS = 512 * 1024
URIBL_SCORE = 4.0
IP_LINK_SCORE = 1.5
LOOKALIKE_SCORE = 5.0
MAX_LOOKALIKE_SCORE = 10.0

_BARE_URL = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'`{}|^\[\]]+""")
_URL_ATTRIBUTES = {
    "href",
    "src",
    "action",
    "formaction",
    "background",
    "poster",
    "data",
    "cite",
    "xlink:href",
}
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]+|\d+)(?:\.(?:0x[0-9a-f]+|\d+)){0,3}")
_WEB_SCHEMES = {"http", "https", "ftp", ""}
_DOMAIN_NAME = re.compile(r"(?=.{4,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")

# Letters from other scripts (and ASCII tricks) that look like Latin ones, after
# lower-casing; a subset of Unicode's confusables that matters for domain names.
_LOOKALIKES = (
    ("авеёорсхуіїјѕԁһӏԛԝкмнтьпг", "abeeopcxyiijsdhlqwkmhtbnr"),  # Cyrillic
    ("αβειικνορτυχγϲϳωημ", "abeiikvoptuxycjwnu"),  # Greek
    ("ıɩłɑǀɡſøđ01", "iilalgfodol"),  # noqa: RUF001 - Latin look-alikes and digits
)
_CONFUSABLES = str.maketrans("".join(a for a, _ in _LOOKALIKES), "".join(b for _, b in _LOOKALIKES))
_DIGRAPHS = (("rn", "m"), ("vv", "w"))


class _LinkParser(HTMLParser):
    """Collects URL attributes and bare URLs in text, up to MAX_LINKS."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if not value or len(self.links) >= MAX_LINKS:
                continue
            if name in _URL_ATTRIBUTES:
                self.links.append(value.strip())
            elif "://" in value or "www." in value.lower():  # <meta http-equiv=refresh content="0;url=...">
                self.links.extend(_BARE_URL.findall(value)[: MAX_LINKS - len(self.links)])

    def handle_data(self, data: str) -> None:
        if len(self.links) < MAX_LINKS and ("://" in data or "www." in data.lower()):
            self.links.extend(_BARE_URL.findall(data)[: MAX_LINKS - len(self.links)])


def extract_links(context: ScanContext) -> list[str]:
    """Links in the message's text and HTML parts (not in attachments), at most MAX_LINKS."""
    links: list[str] = []
    for part in context.parts:
        if part.filename or part.content_type not in ("text/plain", "text/html"):
            continue
        context.check_time()
        text = part.payload[:MAX_TEXT_CHARS].decode("utf-8", errors="replace")
        if part.content_type == "text/html":
            parser = _LinkParser()
            try:
                parser.feed(text)
                parser.close()
            except (AssertionError, ValueError):  # HTMLParser on hostile markup; keep what it found
                pass
            found = parser.links
        else:
            found = _BARE_URL.findall(text)
        links.extend(found[: MAX_LINKS - len(links)])
        if len(links) >= MAX_LINKS:
            break
    return links


def link_host(url: str) -> str | None:
    """The host a browser would contact for `url`, lower-case, or None for non-web links."""
    url = url.strip()
    if url[:4].lower() == "www.":
        url = "http://" + url
    # Browsers read "\" as "/" in web URLs: "http://evil.example\@alpha.test" goes to evil.example.
    url = url.replace("\\", "/")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in _WEB_SCHEMES or not host:
        return None
    host = unquote(host).strip().rstrip(".").lower()
    return host or None


def ip_of(host: str) -> str | None:
    """The address when `host` is an IP literal, including the decimal and hex forms
    browsers accept (http://3221225985/ is 192.0.2.1)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def to_unicode(host: str) -> str:
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError, ValueError):  # not punycode after all
                label = label[4:].encode("ascii").decode("punycode")
        labels.append(label)
    return ".".join(labels)


def to_ascii(host: str) -> str | None:
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


_psl = None


def registrable_domain(host: str) -> str:
    """The domain someone registered: "evil.example" for "a.b.evil.example", "b.co.uk"
    for "a.b.co.uk" (Public Suffix List); the last two labels for unknown suffixes."""
    global _psl
    if _psl is None:
        from publicsuffix2 import PublicSuffixList

        _psl = PublicSuffixList()
    found = _psl.get_sld(host, strict=True)
    if found and "." in found:
        return found
    return ".".join(host.split(".")[-2:])


def skeleton(name: str) -> str:
    """`name` with look-alike letters replaced by the Latin letters they imitate and
    accents removed, so that two names that look alike have the same skeleton."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = text.translate(_CONFUSABLES)
    for digraph, letter in _DIGRAPHS:
        text = text.replace(digraph, letter)
    return text


def _one_substitution_apart(a: str, b: str) -> bool:
    if len(a) != len(b):
        return False
    differences = 0
    for x, y in zip(a, b, strict=True):
        if x != y:
            differences += 1
            if differences > 1:
                return False
    return differences == 1


class _LocalNames:
    """Our domains, indexed by skeleton and by length for the lookalike comparisons."""

    def __init__(self, names: list[str]) -> None:
        self.names = [to_unicode(name.lower()) for name in names]
        self.by_skeleton: dict[str, str] = {}
        self.by_length: dict[int, list[tuple[str, str]]] = {}
        for name in self.names:
            skel = skeleton(name)
            self.by_skeleton.setdefault(skel, name)
            # A one-letter change is only suspicious in a name long enough to be recognised.
            if len(name.split(".", 1)[0]) >= 4:
                self.by_length.setdefault(len(skel), []).append((skel, name))

    def is_ours(self, name: str) -> bool:
        return any(name == local or name.endswith("." + local) for local in self.names)

    def imitated(self, name: str) -> str | None:
        """The local domain that `name` (Unicode, not ours) looks like, if any."""
        skel = skeleton(name)
        if skel in self.by_skeleton:
            return self.by_skeleton[skel]
        for local_skel, local in self.by_length.get(len(skel), ()):
            if _one_substitution_apart(skel, local_skel):
                return local
        return None


_local_cache: tuple[tuple[str, ...], _LocalNames] | None = None


def _local_names(context: ScanContext) -> _LocalNames:
    global _local_cache
    key = tuple(context.local_domains)
    if _local_cache is None or _local_cache[0] != key:
        _local_cache = (key, _LocalNames(list(key)))
    return _local_cache[1]


def lookalike_of(host: str, local: _LocalNames) -> str | None:
    """The local domain `host` imitates (checked as is and as its registrable domain),
    or None when it is one of ours or looks like none of them."""
    name = to_unicode(host)
    if local.is_ours(name):
        return None
    candidates = [name]
    ascii_host = to_ascii(name)
    if ascii_host:
        registered = to_unicode(registrable_domain(ascii_host))
        if registered != name:
            candidates.append(registered)
    for candidate in candidates:
        imitated = local.imitated(candidate)
        if imitated:
            return imitated
    return None


def _from_domains(context: ScanContext) -> list[str]:
    domains = []
    for _name, address in getaddresses(context.header_values("From")):
        domain = address.rpartition("@")[2].strip().rstrip(".>").lower()
        if domain and domain not in domains:
            domains.append(domain)
    return domains


def _lookup_time_left(context: ScanContext) -> bool:
    if not context.deadline:
        return True
    return context.deadline - time.monotonic() > settings.A3_SCAN_DNS_TIMEOUT_SECONDS + 0.5


def _link_hosts(links: list[str]) -> list[str]:
    hosts: list[str] = []
    for url in links:
        host = link_host(url)
        if host and host not in hosts:
            hosts.append(host)
            if len(hosts) >= MAX_HOSTS:
                break
    return hosts


def _check_lookalikes(
    context: ScanContext, hosts: list[str], local: _LocalNames, outcome: StageOutcome
) -> None:
    checked = [("Link to", host) for host in hosts]
    checked += [("Sender domain", domain) for domain in _from_domains(context)]
    flagged: set[str] = set()
    score = 0.0
    for label, host in checked:
        context.check_time()
        imitated = lookalike_of(host, local)
        if imitated and host not in flagged:
            flagged.add(host)
            outcome.reasons.append(f"{label} {to_ascii(host) or host} (looks like {imitated})")
            score += LOOKALIKE_SCORE
    outcome.score += min(score, MAX_LOOKALIKE_SCORE)


def _lookup_domains(hosts: list[str], local: _LocalNames) -> list[str]:
    """The registrable domains to look up: not ours, and valid DNS names."""
    domains: list[str] = []
    for host in hosts:
        name = to_unicode(host)
        ascii_host = to_ascii(name)
        if not ascii_host or local.is_ours(name):
            continue
        domain = registrable_domain(ascii_host)
        if _DOMAIN_NAME.fullmatch(domain) and domain not in domains:
            domains.append(domain)
            if len(domains) >= MAX_LOOKUPS:
                break
    return domains


def _check_uribl(context: ScanContext, domains: list[str], outcome: StageOutcome) -> None:
    dns_errors: list[str] = []
    listed: list[str] = []
    for domain in domains:
        for zone in settings.A3_URIBL_ZONES:
            if not _lookup_time_left(context):
                dns_errors.append(f"{domain} in {zone}: not looked up, out of time")
                continue
            try:
                answers = blocklist_lookup(domain, zone)
            except ScanDnsError as exc:
                dns_errors.append(str(exc))
                continue
            # 127.0.0.1 is how URIBL-style lists refuse a query (e.g. through a public
            # resolver); listings use other codes.
            if any(answer != "127.0.0.1" for answer in answers):
                listed.append(f"{domain}@{zone}")
                outcome.score += URIBL_SCORE
                outcome.reasons.append(f"Link to {domain}, which is listed on the block list {zone}")
    if listed:
        outcome.data["listed"] = listed
    if dns_errors:
        outcome.data["dns_errors"] = dns_errors[:20]


@scan_stage("urls")
def urls_stage(context: ScanContext) -> StageOutcome:
    links = extract_links(context)
    hosts = _link_hosts(links)
    ip_hosts = [ip for host in hosts if (ip := ip_of(host))]
    name_hosts = [host for host in hosts if not ip_of(host)]
    local = _local_names(context)
    domains = _lookup_domains(name_hosts, local)
    outcome = StageOutcome(data={"links": len(links), "domains": domains})
    if ip_hosts:
        outcome.score += IP_LINK_SCORE
        more = f" and {len(ip_hosts) - 1} more" if len(ip_hosts) > 1 else ""
        outcome.reasons.append(f"Link to a bare IP address ({ip_hosts[0]}{more}) instead of a domain name")
    _check_lookalikes(context, name_hosts, local, outcome)
    _check_uribl(context, domains, outcome)
    return outcome
