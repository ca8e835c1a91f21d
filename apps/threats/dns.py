"""DNS lookups for scanning (DNSBL, URIBL, SPF, DMARC), cached and with short timeouts.

Resolves through apps.relay.dns (A3_DNS_NAMESERVERS). Answers are cached in the Django
cache for their TTL (bounded), failures for a minute, so that a burst of mail from one
client or with one link costs one lookup.
"""

from __future__ import annotations

import ipaddress
import logging

import dns.exception
import dns.resolver
from django.conf import settings
from django.core.cache import cache

from apps.relay.dns import resolver as relay_resolver

logger = logging.getLogger(__name__)

MAX_CACHE_SECONDS = 3600
FAILURE_CACHE_SECONDS = 60


class ScanDnsError(Exception):
    """The lookup could not be completed (timeout, SERVFAIL, no server)."""


def _resolver() -> dns.resolver.Resolver:
    resolver = relay_resolver()
    resolver.lifetime = settings.A3_SCAN_DNS_TIMEOUT_SECONDS
    resolver.timeout = settings.A3_SCAN_DNS_TIMEOUT_SECONDS
    return resolver


def lookup(name: str, rdtype: str) -> list[str]:
    """The records of `name` as text ([] for NXDOMAIN / no answer); raises ScanDnsError
    when the answer is unknown. Cached."""
    key = f"threats:dns:{rdtype}:{name.lower()}"
    cached = cache.get(key)
    if cached is not None:
        if cached == "!error":
            raise ScanDnsError(f"lookup of {name} failed recently")
        return list(cached)
    try:
        answer = _resolver().resolve(name, rdtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        cache.set(key, [], 300)
        return []
    except (dns.exception.DNSException, OSError) as exc:
        cache.set(key, "!error", FAILURE_CACHE_SECONDS)
        raise ScanDnsError(f"lookup of {name} {rdtype} failed: {type(exc).__name__}") from exc
    if rdtype == "TXT":
        records = [b"".join(r.strings).decode("utf-8", errors="replace") for r in answer]
    else:
        records = [r.to_text() for r in answer]
    ttl = answer.rrset.ttl if answer.rrset is not None else 300
    cache.set(key, records, max(1, min(ttl, MAX_CACHE_SECONDS)))
    return records


def reversed_ip(ip: str) -> str:
    """The DNSBL query label of an address: 4.3.2.1 for 1.2.3.4, nibbles for IPv6."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


def blocklist_lookup(label: str, zone: str) -> list[str]:
    """The A records a block list returns for `label` (reversed IP or a domain) in `zone`;
    [] when not listed. 127.255.255.x answers (the list refusing us, e.g. for querying
    through a public resolver) count as not listed and are logged."""
    records = lookup(f"{label}.{zone}", "A")
    refusals = [r for r in records if r.startswith("127.255.255.")]
    if refusals:
        logger.warning("block list %s refused the query (%s)", zone, ", ".join(refusals))
    return [r for r in records if r.startswith("127.") and r not in refusals]
