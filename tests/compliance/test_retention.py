"""Retention: which policy applies, the dry run, and what a run deletes and keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from apps.compliance import services
from apps.compliance.models import BlockedDeletion, LegalHold, RetentionPolicy, RetentionRun
from apps.compliance.tasks import retention_apply_task
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Mailbox, MailItem, Message
from apps.relay.models import QueueItem
from tests.compliance.retention_support import file_mail
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=100)
RECENT = NOW - timedelta(days=5)


@pytest.fixture(autouse=True)
def blob_dir(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    return settings.A3_BLOB_DIR


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def blob_path(settings, message: Message):
    return settings.A3_BLOB_DIR / message.blob_sha256[:2] / message.blob_sha256


def test_retention_apply_deletes_old_items_and_keeps_recent(clock, settings, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30)
    old = file_mail(mailbox_a, when=OLD)
    recent = file_mail(mailbox_a, when=RECENT)
    used_before = Mailbox.objects.get(pk=mailbox_a.pk).used_bytes
    assert blob_path(settings, old.message).exists()

    run = services.retention_apply()

    assert not MailItem.objects.filter(pk=old.pk).exists()
    assert not Message.objects.filter(pk=old.message_id).exists()
    assert not blob_path(settings, old.message).exists()  # unreferenced: gone from disk
    assert MailItem.objects.filter(pk=recent.pk).exists()
    assert blob_path(settings, recent.message).exists()
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == used_before - old.size
    run.refresh_from_db()
    assert (run.deleted_items, run.deleted_bytes, run.deleted_blobs, run.held_items) == (1, old.size, 1, 0)
    assert run.per_mailbox == {"alice@alpha.test": 1}
    assert run.finished_at is not None and not run.dry_run


def test_retention_apply_is_idempotent(clock, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30)
    file_mail(mailbox_a, when=OLD)

    assert services.retention_apply().deleted_items == 1
    assert retention_apply_task() == 0  # the task again: nothing left to do
    assert RetentionRun.objects.count() == 2


def test_retention_trash_only_policy_leaves_other_folders(clock, mailbox_a):
    RetentionPolicy.objects.create(domain=None, folder_special_use="trash", days=30)
    trash = file_mail(mailbox_a, folder="Trash", when=OLD)
    inbox = file_mail(mailbox_a, folder="INBOX", when=OLD)
    custom_trash_recent = file_mail(mailbox_a, folder="Trash", when=RECENT)

    services.retention_apply()

    assert not MailItem.objects.filter(pk=trash.pk).exists()
    assert MailItem.objects.filter(pk__in=[inbox.pk, custom_trash_recent.pk]).count() == 2


def test_retention_most_specific_policy_wins(clock, domain_a, mailbox_a, mailbox_b):
    # Global 30 days, Trash everywhere 10; alpha.test keeps 365, but its Trash only 60.
    RetentionPolicy.objects.create(domain=None, days=30)
    RetentionPolicy.objects.create(domain=None, folder_special_use="trash", days=10)
    RetentionPolicy.objects.create(domain=domain_a, days=365)
    RetentionPolicy.objects.create(domain=domain_a, folder_special_use="trash", days=60)
    alpha_inbox = file_mail(mailbox_a, when=OLD)  # 100 days < 365: kept
    alpha_trash = file_mail(mailbox_a, folder="Trash", when=OLD)  # > 60: deleted
    alpha_trash_45 = file_mail(mailbox_a, folder="Trash", when=NOW - timedelta(days=45))  # < 60: kept
    beta_inbox = file_mail(mailbox_b, when=NOW - timedelta(days=45))  # > 30: deleted
    beta_trash = file_mail(mailbox_b, folder="Trash", when=NOW - timedelta(days=15))  # > 10: deleted

    services.retention_apply()

    left = set(MailItem.objects.values_list("id", flat=True))
    assert left == {alpha_inbox.pk, alpha_trash_45.pk}
    assert not ({alpha_trash.pk, beta_inbox.pk, beta_trash.pk} & left)


def test_retention_inactive_policy_does_nothing(clock, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30, is_active=False)
    item = file_mail(mailbox_a, when=OLD)

    assert services.retention_plan().mailboxes == []
    services.retention_apply()
    assert MailItem.objects.filter(pk=item.pk).exists()


def test_retention_plan_counts_per_mailbox_and_deletes_nothing(clock, mailbox_a, mailbox_b):
    RetentionPolicy.objects.create(domain=None, days=30)
    a1 = file_mail(mailbox_a, when=OLD)
    a2 = file_mail(mailbox_a, folder="Sent", when=OLD)
    file_mail(mailbox_a, when=RECENT)
    b1 = file_mail(mailbox_b, when=OLD)

    plan = services.retention_plan()

    rows = {row.address: (row.items, row.bytes) for row in plan.mailboxes}
    assert rows == {"alice@alpha.test": (2, a1.size + a2.size), "bob@beta.test": (1, b1.size)}
    assert plan.total_items == 3
    assert MailItem.objects.count() == 4

    run = services.retention_apply(dry_run=True)
    assert run.dry_run and run.deleted_items == 3
    assert run.per_mailbox == {"alice@alpha.test": 2, "bob@beta.test": 1}
    assert MailItem.objects.count() == 4


def test_retention_keeps_blob_another_message_uses(clock, settings, mailbox_a, mailbox_b):
    RetentionPolicy.objects.create(domain=None, folder_special_use="trash", days=30)
    raw = b"Subject: same bytes\r\n\r\nidentical\r\n"
    old = file_mail(mailbox_a, folder="Trash", when=OLD, raw=raw)
    twin = file_mail(mailbox_b, when=OLD, raw=raw)  # another delivery, same content
    assert old.message_id != twin.message_id and old.message.blob_sha256 == twin.message.blob_sha256

    run = services.retention_apply()

    assert not Message.objects.filter(pk=old.message_id).exists()
    assert blob_path(settings, twin.message).exists()
    assert blob_store().read(twin.message.blob_sha256) == raw
    assert run.deleted_blobs == 0


def test_retention_keeps_message_filed_elsewhere(clock, settings, mailbox_a, mailbox_b):
    RetentionPolicy.objects.create(domain=None, folder_special_use="trash", days=30)
    item = file_mail(mailbox_a, folder="Trash", when=OLD)
    copy = file_mail(mailbox_b, when=OLD, message=item.message)

    services.retention_apply()

    assert not MailItem.objects.filter(pk=item.pk).exists()
    assert MailItem.objects.filter(pk=copy.pk).exists()
    assert blob_path(settings, item.message).exists()


def test_retention_keeps_message_the_relay_queue_refers_to(clock, settings, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30)
    sent = file_mail(mailbox_a, folder="Sent", when=OLD)
    QueueItem.objects.create(message=sent.message, domain="remote.test", state=QueueItem.State.SENT)

    run = services.retention_apply()

    assert not MailItem.objects.filter(pk=sent.pk).exists()
    assert Message.objects.filter(pk=sent.message_id).exists()
    assert blob_path(settings, sent.message).exists()
    assert run.deleted_items == 1 and run.deleted_blobs == 0


def test_retention_skips_held_mail_and_records_blocked_deletion(clock, superadmin, mailbox_a, mailbox_b):
    RetentionPolicy.objects.create(domain=None, days=30)
    hold = services.legal_hold_create(
        actor=superadmin, scope=LegalHold.Scope.MAILBOX, mailbox=mailbox_a, reason="Litigation 2025-17"
    )
    held = file_mail(mailbox_a, when=OLD)
    free = file_mail(mailbox_b, when=OLD)

    run = services.retention_apply(batch_size=1)

    assert MailItem.objects.filter(pk=held.pk).exists()
    assert not MailItem.objects.filter(pk=free.pk).exists()
    assert run.held_items == 1 and run.deleted_items == 1
    blocked = BlockedDeletion.objects.get()
    assert (blocked.hold_id, blocked.message_id, blocked.mailbox_id, blocked.via, blocked.actor_id) == (
        hold.pk,
        held.message_id,
        mailbox_a.pk,
        "retention",
        None,
    )


def test_retention_batches_walk_past_held_items(clock, superadmin, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30)
    services.legal_hold_create(
        actor=superadmin, scope=LegalHold.Scope.SEARCH, sender="keep@", reason="Keep these"
    )
    held = [file_mail(mailbox_a, when=OLD, mail_from="keep@remote.test") for _ in range(3)]
    other_box = MailboxFactory(domain=mailbox_a.domain)
    free = [file_mail(other_box, when=OLD) for _ in range(3)]

    run = services.retention_apply(batch_size=2)

    assert set(MailItem.objects.values_list("id", flat=True)) == {item.pk for item in held}
    assert run.deleted_items == len(free) and run.held_items == 3


# --- Pages -------------------------------------------------------------------------------


def test_retention_pages_manage_policies_and_preview(clock, client, superadmin, domain_a, mailbox_a):
    client.force_login(superadmin)
    created = client.post(
        "/compliance/retention/new/",
        {"domain": domain_a.pk, "folder_special_use": "trash", "days": 30, "is_active": "on"},
    )
    assert created.status_code == 302
    policy = RetentionPolicy.objects.get()
    assert (policy.domain_id, policy.folder_special_use, policy.days) == (domain_a.pk, "trash", 30)

    client.post(
        f"/compliance/retention/{policy.pk}/", {"folder_special_use": "trash", "days": 60, "is_active": "on"}
    )
    assert RetentionPolicy.objects.get().days == 60
    file_mail(mailbox_a, folder="Trash", when=OLD)

    preview = client.get("/compliance/retention/preview/")
    assert b"alice@alpha.test" in preview.content and MailItem.objects.count() == 1
    assert b"alpha.test" in client.get("/compliance/retention/").content

    client.post(f"/compliance/retention/{policy.pk}/delete/")
    assert not RetentionPolicy.objects.exists()
