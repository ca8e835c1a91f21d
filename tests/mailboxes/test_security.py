"""Regression tests for tenant-isolation and rendering findings of the security review."""

import pytest

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError, ConflictError
from apps.mailboxes import selectors, services
from apps.mailboxes.models import Mailbox
from apps.mailboxes.rendering import sanitize_html
from apps.mailboxes.services import IncomingMessage
from tests.factories import TEST_PASSWORD, MailboxFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("target", ["root@admin.test", "bob@beta.test", "ghost@nowhere.test"])
def test_domain_admin_cannot_assign_owner_outside_scope(admin_a, superadmin, mailbox_b, target):
    with pytest.raises(ApplicationError) as excinfo:
        services.mailbox_create(
            actor=admin_a, address="trap@alpha.test", password=TEST_PASSWORD, owner_email=target
        )
    # Unknown and out-of-scope owners get the same answer: nothing to probe.
    assert excinfo.value.code == "unknown_owner"
    assert not Mailbox.objects.filter(address="trap@alpha.test").exists()
    assert not User.objects.visible_to(admin_a).filter(email=target).exists()


def test_domain_admin_cannot_take_over_existing_account_by_its_address(admin_a, domain_a):
    UserFactory(email="boss@alpha.test", role=User.Role.SUPERADMIN)
    with pytest.raises(ConflictError) as excinfo:
        services.mailbox_create(actor=admin_a, address="boss@alpha.test", password=TEST_PASSWORD)
    assert excinfo.value.code == "owner_out_of_scope"


def test_deleting_a_mailbox_keeps_an_assigned_owner(superadmin, domain_a, mailbox_b):
    owner = mailbox_b.owner
    mailbox = services.mailbox_create(
        actor=superadmin, address="shared@alpha.test", password=TEST_PASSWORD, owner_email=owner.email
    )
    services.mailbox_delete(actor=superadmin, mailbox=mailbox)
    assert User.objects.filter(pk=owner.pk).exists()


def test_deleting_the_owners_last_assigned_mailbox_keeps_the_account(superadmin, domain_a):
    person = UserFactory(email="person@people.test")
    mailbox = services.mailbox_create(
        actor=superadmin, address="role@alpha.test", password=TEST_PASSWORD, owner_email=person.email
    )
    report = services.mailbox_delete(actor=superadmin, mailbox=mailbox)
    assert report.users == []
    assert User.objects.filter(pk=person.pk).exists()


def test_owner_of_disabled_mailbox_no_longer_reads_its_mail(superadmin, domain_a):
    mailbox = MailboxFactory(domain=domain_a, local_part="leaver", address="leaver@alpha.test")
    message = services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id="LEAVE1",
                mail_from="a@b.test",
                recipients=(mailbox.address,),
                raw=b"Subject: payroll\r\n\r\nsecret\r\n",
            )
        ]
    )[0]
    services.message_deliver(message_id=message.pk)
    owner = mailbox.owner
    assert selectors.mail_item_list(actor=owner).count() == 1
    services.mailbox_disable(actor=superadmin, mailbox=mailbox)
    assert selectors.mail_item_list(actor=owner).count() == 0
    assert selectors.mail_item_list(actor=superadmin).count() == 1  # admins still can


@pytest.mark.parametrize(
    "src",
    [
        "ht\ttps://evil.test/p.png",
        "https\n://evil.test/p.png",
        "/\\evil.test/p.png",
        "\\\\evil.test/p.png",
        "p.png",
    ],
)
def test_sanitize_blocks_obfuscated_remote_images(src):
    result = sanitize_html(f'<img src="{src}">', allow_remote_images=False)
    assert "evil" not in result.html and "p.png" not in result.html
    assert result.blocked_images == 1


def test_sanitize_keeps_inline_images():
    result = sanitize_html('<img src="cid:logo@x"><img src="data:image/png;base64,AAAA">')
    assert 'src="cid:logo@x"' in result.html and "data:image/png" in result.html
    assert result.blocked_images == 0


def test_admin_site_login_redirects_to_the_one_sign_in(client):
    response = client.get("/django-admin/login/?next=/django-admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
