from __future__ import annotations

import os

import pytest
from rest_framework.test import APIClient

from apps.accounts import services as account_services
from tests.factories import (
    DomainAdminFactory,
    DomainFactory,
    MailboxFactory,
    SuperadminFactory,
    UserFactory,
)


@pytest.fixture
def superadmin(db):
    return SuperadminFactory(email="root@admin.test")


@pytest.fixture
def domain_a(db):
    return DomainFactory(name="alpha.test")


@pytest.fixture
def domain_b(db):
    return DomainFactory(name="beta.test")


@pytest.fixture
def admin_a(domain_a):
    """Domain admin of alpha.test only."""
    admin = DomainAdminFactory(email="admin@alpha.test")
    domain_a.admins.add(admin)
    return admin


@pytest.fixture
def admin_b(domain_b):
    admin = DomainAdminFactory(email="admin@beta.test")
    domain_b.admins.add(admin)
    return admin


@pytest.fixture
def mailbox_a(domain_a):
    return MailboxFactory(domain=domain_a, local_part="alice", address="alice@alpha.test")


@pytest.fixture
def mailbox_b(domain_b):
    return MailboxFactory(domain=domain_b, local_part="bob", address="bob@beta.test")


@pytest.fixture
def user_a(mailbox_a):
    """The mailbox user who owns alice@alpha.test."""
    return mailbox_a.owner


@pytest.fixture
def plain_user(db):
    return UserFactory()


@pytest.fixture
def api_client_for():
    """api_client_for(user) -> an APIClient authenticated with a real bearer token."""

    def make(user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            issued = account_services.api_token_create(user=user, name="test")
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
        return client

    return make


@pytest.fixture(scope="session", autouse=True)
def quiet_dns():
    """No test resolves through the machine's resolver: an empty local zone answers
    NXDOMAIN at once (scanning looks up DMARC, DNSBL and URIBL records for any mail).
    Served `serve` processes inherit it through the environment."""
    from django.conf import settings as django_settings

    from tests.support.dnsserver import DnsServer, Zone

    server = DnsServer(Zone()).start()
    previous = (django_settings.A3_DNS_NAMESERVERS, os.environ.get("A3_DNS_NAMESERVERS"))
    django_settings.A3_DNS_NAMESERVERS = [server.address]
    os.environ["A3_DNS_NAMESERVERS"] = server.address
    try:
        yield server
    finally:
        django_settings.A3_DNS_NAMESERVERS = previous[0]
        if previous[1] is None:
            os.environ.pop("A3_DNS_NAMESERVERS", None)
        else:
            os.environ["A3_DNS_NAMESERVERS"] = previous[1]
        server.stop()


@pytest.fixture
def dns_zone(settings):
    """A local DNS server the code under test resolves through (A3_DNS_NAMESERVERS)."""
    from tests.support.dnsserver import DnsServer, Zone

    zone = Zone()
    server = DnsServer(zone).start()
    settings.A3_DNS_NAMESERVERS = [server.address]
    settings.A3_DNS_TIMEOUT_SECONDS = 2
    try:
        yield zone
    finally:
        server.stop()
