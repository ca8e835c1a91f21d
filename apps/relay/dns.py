"""DNS lookups for outbound mail (MX, A/AAAA, TXT) through dnspython.

`A3_DNS_NAMESERVERS` replaces the system's resolvers (split-horizon sites, and tests that
serve their own zone); otherwise /etc/resolv.conf is used.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from django.conf import settings


class DnsTemporaryError(Exception):
    """The lookup could not be completed now (timeout, SERVFAIL): try again later."""


class DnsNoSuchDomain(Exception):
    """The domain does not exist (NXDOMAIN): mail to it can never be delivered."""


def _nameservers() -> tuple[list[str], int | None]:
    addresses: list[str] = []
    port: int | None = None
    for entry in settings.A3_DNS_NAMESERVERS:
        host, port_text = entry, ""
        if entry.startswith("["):  # [v6]:port
            host, _, port_text = entry[1:].partition("]:")
        elif entry.count(":") == 1:
            host, _, port_text = entry.partition(":")
        ipaddress.ip_address(host)  # ValueError for a misconfiguration, loudly
        addresses.append(host)
        if port_text:
            port = int(port_text)
    return addresses, port


def _configure(resolver: dns.resolver.Resolver) -> dns.resolver.Resolver:
    addresses, port = _nameservers()
    if addresses:
        resolver.nameservers = addresses
        if port:
            resolver.port = port
    resolver.lifetime = settings.A3_DNS_TIMEOUT_SECONDS
    resolver.timeout = min(settings.A3_DNS_TIMEOUT_SECONDS, 5)
    return resolver


def resolver() -> dns.resolver.Resolver:
    """A synchronous resolver honouring A3_DNS_NAMESERVERS."""
    return _configure(dns.resolver.Resolver(configure=not settings.A3_DNS_NAMESERVERS))


def async_resolver() -> dns.asyncresolver.Resolver:
    """An asyncio resolver honouring A3_DNS_NAMESERVERS."""
    return _configure(dns.asyncresolver.Resolver(configure=not settings.A3_DNS_NAMESERVERS))  # type: ignore[return-value]


def txt_records(name: str) -> list[str]:
    """The TXT strings at `name` (each record's chunks joined), [] when there are none."""
    try:
        answer = resolver().resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise DnsTemporaryError(f"TXT lookup for {name} failed: {exc}") from exc
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


@dataclass(frozen=True)
class MailHost:
    """A host to try for a domain, in order: its MX preference, then its name."""

    name: str
    preference: int
    port: int = 25


async def mail_hosts(domain: str) -> list[MailHost]:
    """The hosts that accept mail for `domain` (RFC 5321 §5.1): its MX records by
    preference, or the domain itself when it has none (implicit MX). A null MX (RFC 7505:
    a single "0 .") means the domain accepts no mail: the result is [].

    Raises DnsNoSuchDomain for a domain that does not exist and DnsTemporaryError when
    the answer cannot be had now.
    """
    resolve = async_resolver()
    try:
        answer = await resolve.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN as exc:
        raise DnsNoSuchDomain(f"{domain}: no such domain") from exc
    except dns.resolver.NoAnswer:
        return [MailHost(name=domain, preference=0, port=settings.A3_RELAY_MX_PORT)]
    except dns.exception.DNSException as exc:
        raise DnsTemporaryError(f"MX lookup for {domain} failed: {exc}") from exc
    records = sorted(answer, key=lambda record: (record.preference, str(record.exchange)))
    if any(record.exchange == dns.name.root for record in records):
        return []
    return [
        MailHost(
            name=str(record.exchange).rstrip("."),
            preference=record.preference,
            port=settings.A3_RELAY_MX_PORT,
        )
        for record in records
    ]


async def host_addresses(host: str) -> list[str]:
    """IPv6 and IPv4 addresses of `host` (an IP literal is returned as is)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    resolve = async_resolver()
    found: list[str] = []
    failures: list[str] = []
    for rdtype in ("AAAA", "A"):
        try:
            answer = await resolve.resolve(host, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            failures.append(f"{rdtype}: {exc}")
            continue
        found.extend(record.address for record in answer)
    if not found and failures:
        raise DnsTemporaryError(f"address lookup for {host} failed: {'; '.join(failures)}")
    return found
