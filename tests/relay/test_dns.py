"""MX, address and TXT lookups through the resolver override (a local DNS server)."""

import asyncio

import pytest

from apps.relay import dns as relay_dns


def test_mx(dns_zone):
    dns_zone.add("example.test", "MX", "20 mx2.example.test.", "10 mx1.example.test.")
    dns_zone.add("mx1.example.test", "A", "127.0.0.1")
    dns_zone.add("null.test", "MX", "0 .")
    dns_zone.add("nomx.test", "A", "127.0.0.2")
    dns_zone.txt("sel._domainkey.example.test", "v=DKIM1; p=" + "A" * 400)
    hosts = asyncio.run(relay_dns.mail_hosts("example.test"))
    assert [h.name for h in hosts] == ["mx1.example.test", "mx2.example.test"]
    assert asyncio.run(relay_dns.mail_hosts("null.test")) == []
    assert [h.name for h in asyncio.run(relay_dns.mail_hosts("nomx.test"))] == ["nomx.test"]
    with pytest.raises(relay_dns.DnsNoSuchDomain):
        asyncio.run(relay_dns.mail_hosts("missing.test"))
    assert asyncio.run(relay_dns.host_addresses("mx1.example.test")) == ["127.0.0.1"]
    assert relay_dns.txt_records("sel._domainkey.example.test") == ["v=DKIM1; p=" + "A" * 400]
    dns_zone.servfail.add("broken.test")
    with pytest.raises(relay_dns.DnsTemporaryError):
        asyncio.run(relay_dns.mail_hosts("broken.test"))
