"""Sending options on the directory: send-as aliases, the Sent copy switch and outbound
limits, through the services, the API and the pages."""

from __future__ import annotations

import pytest

from apps.core.exceptions import ApplicationError, PermissionDeniedError
from apps.mailboxes import services
from apps.mailboxes.models import Alias, Mailbox
from tests.factories import AliasFactory

API = "/api/v1"


def test_alias_send_as_is_set_through_the_api(domain_a, admin_a, mailbox_a, api_client_for):
    client = api_client_for(admin_a)
    response = client.post(
        f"{API}/aliases/",
        {
            "address": "sales@alpha.test",
            "destinations": ["alice@alpha.test"],
            "send_as": ["alice@alpha.test"],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["send_as"] == ["alice@alpha.test"]
    alias = Alias.objects.get(address="sales@alpha.test")
    response = client.patch(f"{API}/aliases/{alias.pk}/", {"send_as": []}, format="json")
    assert response.status_code == 200 and response.json()["send_as"] == []


def test_send_as_cannot_name_a_mailbox_of_another_domain(domain_a, admin_a, mailbox_a, mailbox_b):
    with pytest.raises(ApplicationError) as excinfo:
        services.alias_create(
            actor=admin_a,
            address="sales@alpha.test",
            destinations=["alice@alpha.test"],
            send_as=["bob@beta.test"],
        )
    assert "send_as" in excinfo.value.fields
    assert not Alias.objects.filter(address="sales@alpha.test").exists()


def test_catch_all_cannot_be_sent_as(domain_a, admin_a, mailbox_a):
    with pytest.raises(ApplicationError):
        services.alias_create(
            actor=admin_a,
            address="@alpha.test",
            destinations=["alice@alpha.test"],
            send_as=["alice@alpha.test"],
        )


def test_owner_may_switch_off_sent_copy_but_not_raise_limits(user_a, mailbox_a):
    services.mailbox_update(actor=user_a, mailbox=mailbox_a, save_sent_copy=False)
    assert Mailbox.objects.get(pk=mailbox_a.pk).save_sent_copy is False
    with pytest.raises((PermissionDeniedError, ApplicationError)):
        services.mailbox_update(actor=user_a, mailbox=mailbox_a, max_messages_per_hour=100000)


def test_admin_sets_mailbox_and_domain_limits_through_the_api(
    superadmin, domain_a, mailbox_a, api_client_for
):
    client = api_client_for(superadmin)
    response = client.patch(
        f"{API}/mailboxes/{mailbox_a.pk}/",
        {"max_messages_per_hour": 10, "max_recipients_per_hour": 50},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert (response.json()["max_messages_per_hour"], response.json()["max_recipients_per_hour"]) == (10, 50)
    response = client.patch(f"{API}/domains/{domain_a.pk}/", {"max_messages_per_hour": 99}, format="json")
    assert response.status_code == 200 and response.json()["max_messages_per_hour"] == 99
    response = client.patch(f"{API}/mailboxes/{mailbox_a.pk}/", {"max_messages_per_hour": -1}, format="json")
    assert response.status_code == 400


def test_alias_page_edits_send_as(client, admin_a, domain_a, mailbox_a):
    alias = AliasFactory(
        domain=domain_a, local_part="sales", address="sales@alpha.test", destinations=["alice@alpha.test"]
    )
    client.force_login(admin_a)
    response = client.post(
        f"/mail/aliases/{alias.pk}/",
        {"destinations": "alice@alpha.test", "is_active": "on", "send_as": "alice@alpha.test"},
    )
    assert response.status_code == 302
    assert list(alias.send_as.values_list("address", flat=True)) == ["alice@alpha.test"]
    assert "alice@alpha.test" in client.get(f"/mail/aliases/{alias.pk}/").content.decode()


def test_superadmin_requires_mfa_for_a_domains_mailbox_users(superadmin, domain_a, mailbox_a, api_client_for):
    from apps.accounts import mfa

    assert not mfa.mfa_required(mailbox_a.owner)
    response = api_client_for(superadmin).patch(
        f"{API}/domains/{domain_a.pk}/", {"require_mfa": True}, format="json"
    )
    assert response.status_code == 200 and response.json()["require_mfa"] is True
    assert mfa.mfa_required(mailbox_a.owner)
