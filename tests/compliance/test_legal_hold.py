"""Legal holds: what they cover, every deletion path they block, release and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from apps.alerts.models import Alert
from apps.compliance import services
from apps.compliance.models import BlockedDeletion, LegalHold, RetentionPolicy
from apps.core.exceptions import ApplicationError, PermissionDeniedError
from apps.mailboxes import services as mailbox_services
from apps.mailboxes.models import Mailbox, MailItem
from tests.compliance.retention_support import file_mail

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=100)


@pytest.fixture(autouse=True)
def blob_dir(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def hold(actor, **kwargs) -> LegalHold:
    kwargs.setdefault("reason", "Case 42")
    return services.legal_hold_create(actor=actor, **kwargs)


# --- What a hold covers --------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["mailbox", "domain", "search"])
def test_hold_blocks_retention_by_scope(clock, superadmin, domain_a, mailbox_a, mailbox_b, scope):
    RetentionPolicy.objects.create(domain=None, days=30)
    targets = {
        "mailbox": {"mailbox": mailbox_a},
        "domain": {"domain": domain_a},
        "search": {
            "sender": "ceo@",
            "date_from": OLD - timedelta(days=1),
            "date_to": OLD + timedelta(days=1),
        },
    }
    hold(superadmin, scope=scope, **targets[scope])
    kept = file_mail(mailbox_a, when=OLD, mail_from="ceo@alpha.test", from_header="CEO <ceo@alpha.test>")
    gone = file_mail(mailbox_b, when=OLD, mail_from="other@remote.test", from_header="x@remote.test")

    run = services.retention_apply()

    assert MailItem.objects.filter(pk=kept.pk).exists()
    assert not MailItem.objects.filter(pk=gone.pk).exists()
    assert run.held_items == 1
    assert BlockedDeletion.objects.filter(message=kept.message, via="retention").count() == 1


def test_search_hold_matches_from_header_and_date_range(clock, superadmin, mailbox_a):
    hold(superadmin, scope="search", sender="Boss@Corp", date_from=OLD - timedelta(days=1))
    by_header = file_mail(
        mailbox_a, when=OLD, mail_from="bounce@list.test", from_header="The Boss <boss@corp.test>"
    )
    too_early = file_mail(mailbox_a, when=OLD - timedelta(days=10), mail_from="boss@corp.test")
    other = file_mail(mailbox_a, when=OLD)

    held = services.held_message_ids([by_header.message_id, too_early.message_id, other.message_id])

    assert set(held) == {by_header.message_id}


def test_search_hold_narrowed_to_a_mailbox(clock, superadmin, mailbox_a, mailbox_b):
    hold(superadmin, scope="search", sender="ceo@", mailbox=mailbox_a)
    in_a = file_mail(mailbox_a, mail_from="ceo@alpha.test")
    in_b = file_mail(mailbox_b, mail_from="ceo@alpha.test")

    assert set(services.held_message_ids([in_a.message_id, in_b.message_id])) == {in_a.message_id}


def test_hold_asked_about_one_mailbox_ignores_copies_elsewhere(clock, superadmin, mailbox_a, mailbox_b):
    hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    item = file_mail(mailbox_a)
    file_mail(mailbox_b, message=item.message)

    assert services.held_message_ids([item.message_id]) != {}  # filed in a held mailbox
    assert services.held_message_ids([item.message_id], mailbox_id=mailbox_b.pk) == {}
    assert item.message_id in services.held_message_ids([item.message_id], mailbox_id=mailbox_a.pk)


def test_holds_covering_subject_for_user_and_mailbox(
    clock, superadmin, domain_a, mailbox_a, mailbox_b, user_a
):
    assert services.holds_covering_subject(user_a) == []
    domain_hold = hold(superadmin, scope="domain", domain=domain_a)
    search_hold = hold(superadmin, scope="search", sender="ceo@")
    file_mail(mailbox_b, mail_from="ceo@beta.test")

    assert services.holds_covering_subject(user_a) == [domain_hold]
    assert services.holds_covering_subject(mailbox_b) == [search_hold]  # only through matching mail
    assert services.hold_for_user(user_a) == domain_hold
    assert services.hold_for_mailbox(mailbox_b) == search_hold
    assert services.holds_covering_mailbox(mailbox_a) == [domain_hold]


# --- Release and expiry ------------------------------------------------------------------


def test_release_lifts_the_hold(clock, superadmin, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30)
    placed = hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    item = file_mail(mailbox_a, when=OLD)
    services.retention_apply()
    assert MailItem.objects.filter(pk=item.pk).exists()

    released = services.legal_hold_release(actor=superadmin, hold=placed)

    assert released.released_at == NOW
    services.retention_apply()
    assert not MailItem.objects.filter(pk=item.pk).exists()
    kinds = list(Alert.objects.order_by("pk").values_list("kind", flat=True))
    assert kinds == ["compliance.legal_hold_created", "compliance.legal_hold_released"]
    with pytest.raises(ApplicationError) as excinfo:
        services.legal_hold_release(actor=superadmin, hold=placed)
    assert excinfo.value.code == "already_released"


def test_hold_past_its_end_no_longer_holds(clock, superadmin, mailbox_a):
    hold(superadmin, scope="mailbox", mailbox=mailbox_a, ends_at=NOW + timedelta(days=1))
    item = file_mail(mailbox_a)
    assert services.held_message_ids([item.message_id])

    clock.shift(timedelta(days=2))

    assert services.held_message_ids([item.message_id]) == {}
    assert services.holds_covering_subject(mailbox_a) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scope": "mailbox"}, "mailbox"),
        ({"scope": "domain"}, "domain"),
        ({"scope": "search"}, "sender"),
        ({"scope": "search", "sender": "x", "reason": "  "}, "reason"),
        ({"scope": "search", "sender": "x", "ends_at": NOW - timedelta(days=1)}, "ends_at"),
        ({"scope": "search", "date_from": NOW, "date_to": NOW - timedelta(days=1)}, "date_to"),
    ],
)
def test_legal_hold_create_rejects_incomplete_holds(clock, superadmin, kwargs, field):
    kwargs.setdefault("reason", "Case 42")
    with pytest.raises(ApplicationError) as excinfo:
        services.legal_hold_create(actor=superadmin, **kwargs)
    assert field in excinfo.value.fields
    assert not LegalHold.objects.exists()


def test_only_superadmins_manage_holds(clock, superadmin, admin_a, domain_a, mailbox_a):
    with pytest.raises(PermissionDeniedError):
        hold(admin_a, scope="domain", domain=domain_a)
    placed = hold(superadmin, scope="domain", domain=domain_a)
    with pytest.raises(PermissionDeniedError):
        services.legal_hold_release(actor=admin_a, hold=placed)
    assert LegalHold.objects.get().released_at is None


def test_legal_hold_list_is_scoped(clock, superadmin, admin_a, admin_b, domain_a, mailbox_a, user_a):
    domain_hold = hold(superadmin, scope="domain", domain=domain_a)
    mailbox_hold = hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    hold(superadmin, scope="search", sender="x@")

    assert set(services.legal_hold_list(actor=admin_a)) == {domain_hold, mailbox_hold}
    assert list(services.legal_hold_list(actor=admin_b)) == []
    assert list(services.legal_hold_list(actor=user_a)) == []
    assert services.legal_hold_list(actor=superadmin).count() == 3


# --- User deletion paths -------------------------------------------------------------------


def test_delete_from_trash_is_blocked_but_move_to_trash_is_not(clock, superadmin, mailbox_a, user_a):
    hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    item = file_mail(mailbox_a)

    moved = mailbox_services.mail_item_delete(actor=user_a, item=item)  # to Trash: allowed
    assert moved.folder.name == "Trash"
    with pytest.raises(mailbox_services.DeletionHeld) as excinfo:
        mailbox_services.mail_item_delete(actor=user_a, item=MailItem.objects.get(pk=item.pk))

    assert excinfo.value.code == "legal_hold" and excinfo.value.kept == 1
    assert MailItem.objects.get(pk=item.pk).folder.name == "Trash"
    blocked = BlockedDeletion.objects.get()
    assert (blocked.via, blocked.actor_id, blocked.mailbox_id) == ("user_delete", user_a.pk, mailbox_a.pk)


def test_expunge_removes_the_rest_and_reports_held(clock, superadmin, mailbox_a, user_a):
    hold(superadmin, scope="search", sender="ceo@")
    held = file_mail(mailbox_a, mail_from="ceo@alpha.test", deleted=True)
    free = file_mail(mailbox_a, deleted=True)
    inbox = held.folder

    with pytest.raises(mailbox_services.DeletionHeld) as excinfo:
        mailbox_services.folder_expunge(actor=user_a, folder=inbox)

    assert (excinfo.value.kept, excinfo.value.removed) == (1, 1)
    assert MailItem.objects.filter(pk=held.pk).exists()
    assert not MailItem.objects.filter(pk=free.pk).exists()  # committed despite the error
    assert BlockedDeletion.objects.get().via == "expunge"


def test_mailbox_delete_is_refused_while_its_mail_is_held(clock, superadmin, mailbox_a):
    hold(superadmin, scope="search", sender="ceo@")
    item = file_mail(mailbox_a, mail_from="ceo@alpha.test")

    with pytest.raises(mailbox_services.DeletionHeld):
        mailbox_services.mailbox_delete(actor=superadmin, mailbox=mailbox_a)

    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()
    assert MailItem.objects.filter(pk=item.pk).exists()


# --- Over the API and in webmail -------------------------------------------------------------


def test_api_delete_and_expunge_answer_409_legal_hold(clock, superadmin, mailbox_a, user_a, api_client_for):
    hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    trash_item = file_mail(mailbox_a, folder="Trash")
    flagged = file_mail(mailbox_a, deleted=True)
    client = api_client_for(user_a)

    response = client.delete(f"/api/v1/messages/{trash_item.pk}/")
    assert response.status_code == 409
    assert response.json()["code"] == "legal_hold"
    assert "1 message is under legal hold" in response.json()["detail"]
    assert MailItem.objects.filter(pk=trash_item.pk).exists()

    response = client.post(f"/api/v1/mailboxes/{mailbox_a.pk}/expunge/", {"folder": "INBOX"}, format="json")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "legal_hold" and body["fields"] == {"kept": ["1"], "removed": ["0"]}
    assert MailItem.objects.filter(pk=flagged.pk).exists()


def test_webmail_delete_from_trash_shows_the_hold(clock, client, superadmin, mailbox_a, user_a):
    hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    item = file_mail(mailbox_a, folder="Trash")
    client.force_login(user_a)

    response = client.post(f"/mail/webmail/messages/{item.pk}/delete/", follow=True)

    assert MailItem.objects.filter(pk=item.pk).exists()
    assert b"under legal hold" in response.content


# --- Pages -------------------------------------------------------------------------------


def test_hold_pages_place_list_and_release(clock, client, superadmin, mailbox_a):
    client.force_login(superadmin)

    invalid = client.post("/compliance/holds/new/", {"scope": "mailbox", "reason": "Case 7"})
    assert invalid.status_code == 200 and b"A mailbox hold needs a mailbox." in invalid.content
    response = client.post(
        "/compliance/holds/new/", {"scope": "mailbox", "mailbox": mailbox_a.pk, "reason": "Case 7"}
    )
    assert response.status_code == 302
    placed = LegalHold.objects.get()
    listed = client.get("/compliance/holds/")
    assert b"mailbox alice@alpha.test" in listed.content and b"Case 7" in listed.content

    client.post(f"/compliance/holds/{placed.pk}/release/")
    assert LegalHold.objects.get().released_at == NOW


def test_hold_pages_are_for_superadmins_only(clock, client, admin_a):
    client.force_login(admin_a)
    assert client.get("/compliance/holds/").status_code == 404
    assert client.get("/compliance/retention/").status_code == 404


def test_mailbox_pages_show_the_hold_badge(clock, client, superadmin, mailbox_a, mailbox_b, user_a):
    hold(superadmin, scope="mailbox", mailbox=mailbox_a)
    client.force_login(superadmin)
    assert b"Under legal hold" in client.get(f"/mail/mailboxes/{mailbox_a.pk}/").content
    assert b"Under legal hold" not in client.get(f"/mail/mailboxes/{mailbox_b.pk}/").content
    client.force_login(user_a)
    assert b"Under legal hold" in client.get(f"/mail/webmail/{mailbox_a.pk}/").content
