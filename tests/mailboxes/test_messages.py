"""The message store services: recipient policy, durable accept, idempotent delivery
through the stage pipeline, and the sweeps that make lost work late but never lost."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone

from a3mailer import celery_app
from apps.alerts.models import Alert
from apps.mailboxes import services
from apps.mailboxes.blobstore import BlobNotFound, blob_hash, blob_store
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message, MessageRecipient
from apps.mailboxes.services import IncomingMessage, RecipientStatus
from apps.mailboxes.services.messages import MAX_DELIVERY_ATTEMPTS, DeliveryContext
from tests.factories import AliasFactory, DomainFactory, MailboxFactory

pytestmark = pytest.mark.django_db

ALICE = "alice@alpha.test"
EXPAND = "apps.mailboxes.services.messages.expand_recipients"


def raw_message(subject: str = "Hello", body: str = "Hi there.") -> bytes:
    return (
        f"From: Sender <sender@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}-{time.monotonic_ns()}@remote.test>\r\n\r\n{body}\r\n"
    ).encode()


def incoming(raw: bytes | None = None, recipients=(ALICE,), **fields) -> IncomingMessage:
    values = {
        "queue_id": services.new_queue_id(),
        "mail_from": "sender@remote.test",
        "recipients": tuple(recipients),
        "raw": raw if raw is not None else raw_message(),
        "peer_ip": "192.0.2.7",
        "helo": "client.test",
    }
    values.update(fields)
    return IncomingMessage(**values)


def accept(raw: bytes | None = None, recipients=(ALICE,), **fields) -> Message:
    [message] = services.messages_accept(incoming=[incoming(raw, recipients, **fields)])
    return message


def items_of(message: Message) -> list[tuple[str, str, int]]:
    return sorted(
        MailItem.objects.filter(message=message).values_list("mailbox__address", "folder__special_use", "uid")
    )


@pytest.fixture
def blob_dir(settings, tmp_path):
    """A blob store of this test's own."""
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    return settings.A3_BLOB_DIR


@contextlib.contextmanager
def eager_tasks() -> Iterator[None]:
    """Celery runs enqueued tasks in-process at once (no broker, no worker), so what a
    task would do can be observed in the database. Outside this block a task goes to the
    broker, where no worker runs in tests: it is lost, as in a crash."""
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = saved


# --- recipient_check -------------------------------------------------------------------


@pytest.fixture
def directory(domain_a, mailbox_a):
    Mailbox.objects.filter(pk=mailbox_a.pk).update(quota_bytes=10_000, used_bytes=4_000)
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test", is_active=False)
    MailboxFactory(
        domain=domain_a, local_part="big", address="big@alpha.test", quota_bytes=0, used_bytes=10**12
    )
    AliasFactory(domain=domain_a, local_part="team", address="team@alpha.test", destinations=[ALICE])
    AliasFactory(domain=domain_a, local_part="old", address="old@alpha.test", is_active=False)
    catch = DomainFactory(name="catch.test")
    AliasFactory(domain=catch, local_part="", address="@catch.test", destinations=[ALICE])
    AliasFactory(domain=catch, local_part="retired", address="retired@catch.test", is_active=False)
    off = DomainFactory(name="off.test", is_active=False)
    MailboxFactory(domain=off, local_part="x", address="x@off.test")


@pytest.mark.parametrize(
    ("address", "size", "status", "normalised"),
    [
        (ALICE, None, RecipientStatus.LOCAL, ALICE),
        ("  Alice@ALPHA.Test ", None, RecipientStatus.LOCAL, ALICE),
        ("team@alpha.test", None, RecipientStatus.LOCAL, "team@alpha.test"),
        ("anyone@catch.test", None, RecipientStatus.LOCAL, "anyone@catch.test"),
        ("nobody@alpha.test", None, RecipientStatus.UNKNOWN, "nobody@alpha.test"),
        ("someone@elsewhere.example", None, RecipientStatus.NOT_LOCAL, "someone@elsewhere.example"),
        ("carol@alpha.test", None, RecipientStatus.DISABLED, "carol@alpha.test"),
        ("old@alpha.test", None, RecipientStatus.DISABLED, "old@alpha.test"),
        ("retired@catch.test", None, RecipientStatus.DISABLED, "retired@catch.test"),  # beats catch-all
        ("x@off.test", None, RecipientStatus.DISABLED, "x@off.test"),
        (ALICE, 6_000, RecipientStatus.LOCAL, ALICE),  # exactly fills the quota
        (ALICE, 6_001, RecipientStatus.OVER_QUOTA, ALICE),
        (ALICE, 10_001, RecipientStatus.NEVER_FITS, ALICE),
        ("big@alpha.test", 10**12, RecipientStatus.LOCAL, "big@alpha.test"),  # quota 0: no limit
        ("not an address", None, RecipientStatus.BAD_SYNTAX, "not an address"),
        ("@alpha.test", None, RecipientStatus.BAD_SYNTAX, "@alpha.test"),
    ],
)
def test_recipient_check_status(directory, django_assert_max_num_queries, address, size, status, normalised):
    with django_assert_max_num_queries(3):
        verdict = services.recipient_check(address=address, size=size)
    assert (verdict.status, verdict.address) == (status, normalised)
    assert verdict.accepted is (status is RecipientStatus.LOCAL)


# --- messages_accept -------------------------------------------------------------------


def test_messages_accept_stores_blob_and_rows(blob_dir, mailbox_a):
    raw = raw_message("Stored")
    item = incoming(raw, recipients=[ALICE, ALICE, "team@alpha.test"])

    [message] = services.messages_accept(incoming=[item])

    message.refresh_from_db()
    assert message.queue_id == item.queue_id
    assert message.state == Message.State.RECEIVED
    assert (message.blob_sha256, message.size) == (blob_hash(raw), len(raw))
    assert (message.mail_from, message.helo, message.peer_ip) == (
        "sender@remote.test",
        "client.test",
        "192.0.2.7",
    )
    assert blob_store().read(message.blob_sha256) == raw
    assert sorted(message.recipients.values_list("address", "state")) == [
        (ALICE, MessageRecipient.State.PENDING),
        ("team@alpha.test", MessageRecipient.State.PENDING),
    ]


def test_messages_accept_batch_is_one_bulk_write(blob_dir, mailbox_a, django_assert_max_num_queries):
    batch = [incoming(raw_message(f"m{i}"), recipients=[ALICE, f"r{i}@alpha.test"]) for i in range(20)]
    with django_assert_max_num_queries(6):
        messages = services.messages_accept(incoming=batch)
    assert [m.queue_id for m in messages] == [i.queue_id for i in batch]
    assert Message.objects.count() == 20
    assert MessageRecipient.objects.count() == 40


def test_messages_accept_same_bytes_twice_shares_one_blob(blob_dir, mailbox_a):
    raw = raw_message("Twice")
    first, second = services.messages_accept(incoming=[incoming(raw), incoming(raw)])
    assert first.blob_sha256 == second.blob_sha256
    assert list(blob_store().iter_hashes()) == [blob_hash(raw)]


def test_messages_accept_uses_a_blob_already_stored(blob_dir, mailbox_a):
    raw = raw_message("Pre-stored")
    sha256 = services.message_blob_store(raw=raw)
    message = accept(raw, blob_sha256=sha256)
    assert message.blob_sha256 == sha256 == blob_hash(raw)
    assert blob_store().read(sha256) == raw


@pytest.mark.django_db(transaction=True)
def test_messages_accept_enqueues_delivery_only_on_commit(blob_dir, mailbox_a):
    with eager_tasks(), transaction.atomic():
        messages = services.messages_accept(incoming=[incoming(), incoming()])
        # Not committed yet: nothing was handed to a worker (which runs at once here).
        assert not MailItem.objects.exists()
        assert set(Message.objects.values_list("state", flat=True)) == {Message.State.RECEIVED}

    for message in messages:  # committed: each delivery task ran
        message.refresh_from_db()
        assert message.state == Message.State.DELIVERED
        assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, message.items.get().uid)]


def test_messages_accept_registers_one_commit_hook_per_message(
    blob_dir, mailbox_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.messages_accept(incoming=[incoming(), incoming(), incoming()])
    assert len(callbacks) == 3
    assert not MailItem.objects.exists()


def test_messages_accept_is_all_or_nothing(blob_dir, mailbox_a, django_capture_on_commit_callbacks):
    good = incoming(raw_message("good"))
    clash = incoming(raw_message("clash"), queue_id=good.queue_id)

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(IntegrityError):
        services.messages_accept(incoming=[good, clash])

    assert not Message.objects.exists()
    assert not MessageRecipient.objects.exists()
    assert callbacks == []
    # The blobs were made durable first: they are orphans now, for the sweep.
    assert sorted(blob_store().iter_hashes()) == sorted([blob_hash(good.raw), blob_hash(clash.raw)])


def test_messages_accept_of_nothing_does_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert services.messages_accept(incoming=[]) == []


# --- message_deliver -------------------------------------------------------------------


def test_message_deliver_is_idempotent(blob_dir, mailbox_a):
    message = accept()
    inbox = Folder.objects.get(mailbox=mailbox_a, special_use=Folder.SpecialUse.INBOX)

    assert services.message_deliver(message_id=message.pk) is True
    assert services.message_deliver(message_id=message.pk) is False  # a redelivered task

    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]
    mailbox_a.refresh_from_db()
    assert mailbox_a.used_bytes == message.size
    message.refresh_from_db()
    assert (message.state, message.delivery_attempts) == (Message.State.DELIVERED, 1)
    assert message.delivered_at is not None
    assert message.recipients.get().state == MessageRecipient.State.DELIVERED
    inbox_after = Folder.objects.get(pk=inbox.pk)
    assert (inbox_after.uidnext, inbox_after.uidvalidity) == (2, inbox.uidvalidity)


def test_message_deliver_fills_metadata(blob_dir, mailbox_a):
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= <joerg@remote.test>\r\n"
        b"To: Alice <alice@alpha.test>\r\nCc: bob@beta.test\r\n"
        b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"
        b"Message-ID: <meta-1@remote.test>\r\n"
        b"Date: Tue, 01 Jul 2025 10:00:00 +0200\r\n\r\nsearchable words\r\n"
    )
    message = accept(raw)
    services.message_deliver(message_id=message.pk)
    message.refresh_from_db()
    assert message.parsed is True
    assert message.subject == "Grüße"
    assert message.from_header == "Jörg <joerg@remote.test>"
    assert (message.to_header, message.cc_header) == ("Alice <alice@alpha.test>", "bob@beta.test")
    assert message.message_id_header == "<meta-1@remote.test>"
    assert message.date_header == datetime(2025, 7, 1, 8, 0, tzinfo=UTC)
    assert "searchable words" in message.body_text
    assert message.has_attachments is False


def test_message_deliver_uids_increase_per_folder(blob_dir, mailbox_a):
    carol = MailboxFactory(domain=mailbox_a.domain, local_part="carol", address="carol@alpha.test")
    inbox = Folder.objects.get(mailbox=mailbox_a, special_use=Folder.SpecialUse.INBOX)
    messages = [accept(recipients=[ALICE] if i % 2 else [ALICE, carol.address]) for i in range(5)]

    for message in messages:
        services.message_deliver(message_id=message.pk)

    alice_uids = list(
        MailItem.objects.filter(mailbox=mailbox_a).order_by("message_id").values_list("uid", flat=True)
    )
    carol_uids = list(
        MailItem.objects.filter(mailbox=carol).order_by("message_id").values_list("uid", flat=True)
    )
    assert alice_uids == [1, 2, 3, 4, 5]
    assert carol_uids == [1, 2, 3]
    inbox.refresh_from_db()
    assert inbox.uidnext == 6
    assert inbox.uidvalidity == Folder.objects.get(pk=inbox.pk).uidvalidity
    mailbox_a.refresh_from_db()
    assert mailbox_a.used_bytes == sum(m.size for m in messages)


def test_message_deliver_two_aliases_of_one_mailbox_file_one_copy(blob_dir, mailbox_a):
    AliasFactory(
        domain=mailbox_a.domain, local_part="sales", address="sales@alpha.test", destinations=[ALICE]
    )
    AliasFactory(domain=mailbox_a.domain, local_part="info", address="info@alpha.test", destinations=[ALICE])
    message = accept(recipients=["sales@alpha.test", "info@alpha.test", ALICE])

    services.message_deliver(message_id=message.pk)

    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]
    mailbox_a.refresh_from_db()
    assert mailbox_a.used_bytes == message.size
    assert set(message.recipients.values_list("state", flat=True)) == {MessageRecipient.State.DELIVERED}


def test_message_deliver_catch_all_and_nested_aliases(blob_dir, mailbox_a, mailbox_b):
    AliasFactory(
        domain=mailbox_a.domain, local_part="", address="@alpha.test", destinations=["team@alpha.test"]
    )
    AliasFactory(
        domain=mailbox_a.domain,
        local_part="team",
        address="team@alpha.test",
        destinations=[ALICE, mailbox_b.address],
    )
    message = accept(recipients=["whoever@alpha.test"])

    services.message_deliver(message_id=message.pk)

    assert items_of(message) == [
        (ALICE, Folder.SpecialUse.INBOX, 1),
        (mailbox_b.address, Folder.SpecialUse.INBOX, 1),
    ]


def test_message_deliver_records_failures_per_recipient(blob_dir, mailbox_a):
    domain = mailbox_a.domain
    MailboxFactory(domain=domain, local_part="carol", address="carol@alpha.test", is_active=False)
    AliasFactory(
        domain=domain, local_part="ping", address="ping@alpha.test", destinations=["pong@alpha.test"]
    )
    AliasFactory(
        domain=domain, local_part="pong", address="pong@alpha.test", destinations=["ping@alpha.test"]
    )
    AliasFactory(domain=domain, local_part="off", address="off@alpha.test", is_active=False)
    message = accept(
        recipients=[ALICE, "ghost@alpha.test", "carol@alpha.test", "ping@alpha.test", "off@alpha.test"]
    )

    assert services.message_deliver(message_id=message.pk) is True

    states = dict(message.recipients.values_list("address", "state"))
    details = dict(message.recipients.values_list("address", "detail"))
    assert states == {
        ALICE: MessageRecipient.State.DELIVERED,
        "ghost@alpha.test": MessageRecipient.State.FAILED,
        "carol@alpha.test": MessageRecipient.State.FAILED,
        "ping@alpha.test": MessageRecipient.State.FAILED,
        "off@alpha.test": MessageRecipient.State.FAILED,
    }
    assert details["ghost@alpha.test"] == "no such mailbox"
    assert details["carol@alpha.test"] == "mailbox disabled"
    assert "alias loop" in details["ping@alpha.test"]
    assert details["off@alpha.test"] == "alias disabled"
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert "ghost@alpha.test: no such mailbox" in message.last_error
    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]


def test_message_deliver_with_no_deliverable_recipient_files_nothing(blob_dir, mailbox_a):
    message = accept(recipients=["ghost@alpha.test"])
    assert services.message_deliver(message_id=message.pk) is True
    assert items_of(message) == []
    assert message.recipients.get().state == MessageRecipient.State.FAILED


def test_message_deliver_missing_blob_fails_the_message(blob_dir, mailbox_a):
    message = accept()
    assert blob_store().delete(message.blob_sha256)

    assert services.message_deliver(message_id=message.pk) is False

    message.refresh_from_db()
    assert message.state == Message.State.FAILED
    assert message.last_error == "stored content is missing"
    assert items_of(message) == []
    assert services.message_deliver(message_id=message.pk) is False  # failed for good


def test_message_deliver_unknown_message_is_not_an_error():
    assert services.message_deliver(message_id=987654321) is False


def test_message_deliver_takes_other_waiting_messages_along(blob_dir, mailbox_a, settings):
    settings.A3_DELIVERY_BATCH = 3
    first, second, third, fourth = (accept(raw_message(f"batch {i}")) for i in range(4))

    assert services.message_deliver(message_id=first.pk) is True

    states = dict(Message.objects.values_list("pk", "state"))
    assert [states[m.pk] for m in (first, second, third, fourth)] == [
        Message.State.DELIVERED,
        Message.State.DELIVERED,
        Message.State.DELIVERED,
        Message.State.RECEIVED,  # beyond the batch: its own task will take it
    ]
    # The second message's own task finds it done, and takes the one still waiting.
    assert services.message_deliver(message_id=second.pk) is False
    assert Message.objects.get(pk=fourth.pk).state == Message.State.DELIVERED
    assert services.message_deliver(message_id=fourth.pk) is False
    assert sorted(MailItem.objects.filter(mailbox=mailbox_a).values_list("uid", flat=True)) == [1, 2, 3, 4]


# Delivery stages used through A3_DELIVERY_STAGES below.


def route_to_junk(context: DeliveryContext) -> None:
    for mailbox_id in context.targets:
        context.targets[mailbox_id] = Folder.SpecialUse.JUNK


class Broken(RuntimeError):
    pass


BREAK = {"on": True}


def break_when_told(context: DeliveryContext) -> None:
    if BREAK["on"]:
        raise Broken("scanner unreachable")


def second_worker_meanwhile(context: DeliveryContext) -> None:
    """Another worker gets the same message's task while this one is in its stages."""
    BREAK["second_worker"] = services.message_deliver(message_id=context.message.pk)


def test_message_deliver_stage_can_route_to_junk(blob_dir, mailbox_a, settings):
    settings.A3_DELIVERY_STAGES = [EXPAND, f"{__name__}.route_to_junk"]
    junk = Folder.objects.get(mailbox=mailbox_a, special_use=Folder.SpecialUse.JUNK)
    message = accept()

    services.message_deliver(message_id=message.pk)

    item = MailItem.objects.get(message=message)
    assert (item.folder_id, item.uid) == (junk.pk, 1)
    junk.refresh_from_db()
    assert junk.uidnext == 2
    assert Folder.objects.get(mailbox=mailbox_a, special_use=Folder.SpecialUse.INBOX).uidnext == 1


@pytest.fixture
def broken_stage(settings):
    settings.A3_DELIVERY_STAGES = [EXPAND, f"{__name__}.break_when_told"]
    BREAK["on"] = True
    yield BREAK
    BREAK["on"] = False


def test_message_deliver_failing_stage_leaves_message_for_retry(blob_dir, mailbox_a, broken_stage):
    message = accept()

    assert services.message_deliver(message_id=message.pk) is False

    message.refresh_from_db()
    assert (message.state, message.delivery_attempts) == (Message.State.RECEIVED, 1)
    assert message.last_error == "Broken: scanner unreachable"
    assert items_of(message) == []

    broken_stage["on"] = False
    assert services.message_deliver(message_id=message.pk) is True  # the retry

    message.refresh_from_db()
    assert (message.state, message.delivery_attempts) == (Message.State.DELIVERED, 2)
    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]


def test_message_deliver_gives_up_and_alerts_after_max_attempts(blob_dir, mailbox_a, broken_stage):
    message = accept()

    for _ in range(MAX_DELIVERY_ATTEMPTS):
        assert services.message_deliver(message_id=message.pk) is False

    message.refresh_from_db()
    assert (message.state, message.delivery_attempts) == (Message.State.FAILED, MAX_DELIVERY_ATTEMPTS)
    alert = Alert.objects.get(kind="mailboxes.delivery_failed")
    assert alert.level == "error" and message.queue_id in alert.message
    broken_stage["on"] = False
    assert services.message_deliver(message_id=message.pk) is False  # failed for good
    assert items_of(message) == []


def test_message_deliver_second_worker_backs_off_while_the_first_delivers(blob_dir, mailbox_a, settings):
    settings.A3_DELIVERY_STAGES = [EXPAND, f"{__name__}.second_worker_meanwhile"]
    message = accept()

    assert services.message_deliver(message_id=message.pk) is True

    assert BREAK.pop("second_worker") is False
    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]
    mailbox_a.refresh_from_db()
    assert mailbox_a.used_bytes == message.size
    message.refresh_from_db()
    assert (message.state, message.delivery_attempts) == (Message.State.DELIVERED, 1)


def test_message_deliver_leaves_a_live_lease_alone(blob_dir, mailbox_a):
    message = accept()
    Message.objects.filter(pk=message.pk).update(
        state=Message.State.DELIVERING, lease_token="otherworker", leased_at=timezone.now()
    )

    assert services.message_deliver(message_id=message.pk) is False
    assert services.messages_requeue_stalled() == 0

    message.refresh_from_db()
    assert (message.state, message.lease_token) == (Message.State.DELIVERING, "otherworker")
    assert items_of(message) == []


def test_message_deliver_to_one_mailbox_query_count(blob_dir, mailbox_a, django_assert_max_num_queries):
    message = accept()
    # lease, expand, scan (verdict, recipient domains, content rules, Bayes store, policy,
    # store), route by the verdict (policy, lists, quarantine check), file, recipients,
    # index, save
    with django_assert_max_num_queries(40):
        assert services.message_deliver(message_id=message.pk) is True
    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]


# --- Sweeps ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_messages_requeue_stalled_redelivers_only_old_received_messages(blob_dir, mailbox_a, settings):
    settings.A3_DELIVERY_SWEEP_AFTER_SECONDS = 60
    settings.A3_DELIVERY_BATCH = 1  # one delivery per task, to see exactly what was requeued
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        stalled = accept()
        done = accept()
        services.message_deliver(message_id=done.pk)
        clock.shift(timedelta(seconds=30))
        recent = accept()
        assert services.messages_requeue_stalled() == 0  # nothing has waited long enough

        clock.shift(timedelta(seconds=31))
        with eager_tasks():
            assert services.messages_requeue_stalled() == 1

    states = dict(Message.objects.values_list("pk", "state"))
    assert states == {
        stalled.pk: Message.State.DELIVERED,  # the eager "worker" delivered it
        done.pk: Message.State.DELIVERED,
        recent.pk: Message.State.RECEIVED,
    }
    assert items_of(stalled) == [(ALICE, Folder.SpecialUse.INBOX, 2)]


@pytest.mark.django_db(transaction=True)
def test_messages_requeue_stalled_takes_over_a_dead_workers_lease(blob_dir, mailbox_a, settings):
    settings.A3_DELIVERY_SWEEP_AFTER_SECONDS = 60
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        message = accept()
        # A worker leased it, then died mid-delivery.
        Message.objects.filter(pk=message.pk).update(
            state=Message.State.DELIVERING, lease_token="deadworker", leased_at=timezone.now()
        )
        clock.shift(timedelta(seconds=5 * 60 - 1))
        assert services.messages_requeue_stalled() == 0  # it may still be working
        assert services.message_deliver(message_id=message.pk) is False

        clock.shift(timedelta(seconds=2))
        with eager_tasks():
            assert services.messages_requeue_stalled() == 1

    message.refresh_from_db()
    assert (message.state, message.lease_token) == (Message.State.DELIVERED, "")
    assert items_of(message) == [(ALICE, Folder.SpecialUse.INBOX, 1)]


def test_messages_requeue_stalled_respects_limit(blob_dir, mailbox_a, settings):
    settings.A3_DELIVERY_SWEEP_AFTER_SECONDS = 60
    with time_machine.travel(datetime(2026, 3, 1, tzinfo=UTC), tick=False) as clock:
        for _ in range(3):
            accept()
        clock.shift(timedelta(minutes=5))
        assert services.messages_requeue_stalled(limit=2) == 2


def _age(sha256: str, seconds: float) -> None:
    path = blob_store().path_for(sha256)
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_blobs_sweep_orphans_deletes_only_old_unreferenced_blobs(blob_dir, mailbox_a):
    referenced = accept(raw_message("kept")).blob_sha256
    old_orphan, young_orphan = blob_store().put_many([b"crashed before commit", b"being accepted now"])
    _age(referenced, 7200)
    _age(old_orphan, 7200)

    assert services.blobs_sweep_orphans(grace_seconds=3600) == 1

    assert blob_store().exists(referenced)
    assert blob_store().exists(young_orphan)
    assert not blob_store().exists(old_orphan)
    with pytest.raises(BlobNotFound):
        blob_store().read(old_orphan)
    assert services.blobs_sweep_orphans(grace_seconds=3600) == 0


def test_blobs_sweep_orphans_keeps_blob_shared_by_a_delivered_message(blob_dir, mailbox_a):
    message = accept()
    services.message_deliver(message_id=message.pk)
    message.refresh_from_db()  # the scanned copy, with its headers
    _age(message.blob_sha256, 10 * 86400)

    # Only the copy from before scanning added its headers is an orphan.
    assert services.blobs_sweep_orphans(grace_seconds=0) == 1
    assert blob_store().read(message.blob_sha256).endswith(b"Hi there.\r\n")


@pytest.mark.django_db
def test_message_deliver_filing_crash_counts_attempt_and_keeps_batch_mates(monkeypatch, domain_a, mailbox_a):
    """A message whose filing raises is counted as a failed attempt and released; the
    other messages of the same pass are still delivered."""
    from apps.mailboxes.services import messages as message_services

    first, second = (
        services.messages_accept(
            incoming=[
                IncomingMessage(
                    queue_id=f"POISON{i}",
                    mail_from="a@remote.test",
                    recipients=("alice@alpha.test",),
                    raw=f"Subject: {i}\r\n\r\nbody {i}\r\n".encode(),
                )
            ]
        )[0]
        for i in range(2)
    )
    real_commit = message_services._commit_delivery

    def explode_on_first(context):
        if context.message.pk == first.pk:
            raise RuntimeError("disk on fire")
        real_commit(context)

    monkeypatch.setattr(message_services, "_commit_delivery", explode_on_first)
    assert services.message_deliver(message_id=first.pk) is False
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.state == Message.State.RECEIVED and first.delivery_attempts == 1
    assert "disk on fire" in first.last_error and first.lease_token == ""
    assert second.state == Message.State.DELIVERED
    assert MailItem.objects.filter(message=second).count() == 1


@pytest.mark.django_db
def test_recipient_check_mailbox_exactly_at_quota_is_full_without_size(domain_a, mailbox_a):
    Mailbox.objects.filter(pk=mailbox_a.pk).update(quota_bytes=1000, used_bytes=1000)
    verdict = services.recipient_check(address="alice@alpha.test")
    assert verdict.status is services.RecipientStatus.OVER_QUOTA


@pytest.mark.django_db
def test_mailbox_delete_removes_its_messages_so_the_sweep_frees_their_blobs(superadmin, domain_a, mailbox_a):
    message = services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id="GONE1",
                mail_from="a@remote.test",
                recipients=("alice@alpha.test",),
                raw=b"Subject: x\r\n\r\nbye\r\n",
            )
        ]
    )[0]
    services.message_deliver(message_id=message.pk)
    services.mailbox_delete(actor=superadmin, mailbox=mailbox_a)
    assert not Message.objects.filter(pk=message.pk).exists()
    assert services.blobs_sweep_orphans(grace_seconds=0) >= 1
    assert not blob_store().exists(message.blob_sha256)
