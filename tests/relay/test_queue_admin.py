"""Queue administration services and selectors: who sees which items, the summary, and
retry / hold / release / delete (with and without a bounce to the sender)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.alerts.models import Alert
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Message
from apps.relay import selectors, services
from apps.relay.models import DeliveryAttempt, QueueItem, QueueRecipient
from apps.relay.tasks import queue_deliver_task
from tests.factories import DomainAdminFactory

pytestmark = pytest.mark.django_db

DELETED = "5.0.0 Deleted from the queue by an administrator"


def enqueue(
    *,
    submitted_by=None,
    sender: str = "alice@alpha.test",
    to: tuple[str, ...] = ("bob@remote.test",),
    original: str = "",
    kind: str = QueueItem.Kind.SUBMISSION,
) -> QueueItem:
    raw = f"From: {sender or 'postmaster@alpha.test'}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from=sender,
        recipients=(),
        raw=raw,
        submitted_by_id=submitted_by.pk if submitted_by else None,
    )
    with transaction.atomic():
        (message,) = mail_services.messages_accept(incoming=[incoming])
        (item,) = services.queue_items_create(
            message=message, sender=sender, recipients=[(a, original) for a in to], kind=kind
        )
    return item


def set_state(item: QueueItem, state: str, **fields) -> QueueItem:
    QueueItem.objects.filter(pk=item.pk).update(state=state, **fields)
    item.refresh_from_db()
    return item


def defer(item: QueueItem, reply: str = "451 4.7.1 Greylisted, try again later") -> QueueItem:
    """What a failed attempt leaves behind: a deferred item, recipient and attempt row."""
    now = timezone.now()
    QueueRecipient.objects.filter(item=item).update(
        state=QueueRecipient.State.DEFERRED, reply=reply, reply_code=451, remote_host="mx.remote.test"
    )
    DeliveryAttempt.objects.create(
        item=item,
        started_at=now - timedelta(seconds=3),
        finished_at=now,
        host="mx.remote.test",
        port=25,
        tls=True,
        outcome=DeliveryAttempt.Outcome.DEFERRED,
        reply_code=451,
        reply=reply,
        detail={
            "recipients": {"bob@remote.test": {"code": 451, "reply": reply}},
            "tried": ["mx.remote.test"],
        },
    )
    return set_state(
        item,
        QueueItem.State.DEFERRED,
        attempts=1,
        last_attempt_at=now,
        last_reply=reply,
        next_attempt_at=now + timedelta(minutes=10),
    )


def reports_to(address: str) -> list[bytes]:
    messages = Message.objects.filter(mail_from="", recipients__address=address).order_by("id")
    return [blob_store().read(m.blob_sha256) for m in messages]


@pytest.fixture
def enqueued(monkeypatch):
    """Item ids handed to the delivery task (the broker is the process boundary)."""
    calls: list[tuple[int, float | None]] = []
    monkeypatch.setattr(queue_deliver_task, "delay", lambda *, item_id: calls.append((item_id, None)))
    monkeypatch.setattr(
        queue_deliver_task,
        "apply_async",
        lambda *, kwargs, countdown=None: calls.append((kwargs["item_id"], countdown)),
    )
    return calls


@pytest.fixture
def alpha_item(mailbox_a):
    return enqueue(submitted_by=mailbox_a)


# --- Scope ------------------------------------------------------------------------------


def test_queue_items_visible_to_scopes_by_role(superadmin, admin_a, admin_b, user_a, mailbox_a, mailbox_b):
    submitted = enqueue(submitted_by=mailbox_a)
    beta_sender = enqueue(sender="bob@beta.test")
    forwarded = enqueue(
        sender="SRS0=abc=xy=remote.test=carol@srs.test",
        to=("carol@elsewhere.test",),
        original="team@alpha.test",
        kind=QueueItem.Kind.FORWARD,
    )
    dsn = enqueue(sender="", to=("someone@remote.test",), kind=QueueItem.Kind.BOUNCE)

    def visible(user) -> set[int]:
        return set(selectors.queue_items_visible_to(user).values_list("pk", flat=True))

    assert visible(superadmin) == {submitted.pk, beta_sender.pk, forwarded.pk, dsn.pk}
    assert visible(admin_a) == {submitted.pk, forwarded.pk}
    # A sender address proves nothing (anyone can claim bob@beta.test): only submitted
    # and forwarded mail is attributed to a domain.
    assert visible(admin_b) == set()
    assert visible(user_a) == set()
    assert visible(DomainAdminFactory()) == set()  # a domain admin without domains


def test_queue_item_detail_is_not_found_outside_scope(alpha_item, admin_a, admin_b):
    item = selectors.queue_item_detail(admin_a, alpha_item.pk)
    assert [r.address for r in item.recipients.all()] == ["bob@remote.test"]
    with pytest.raises(NotFoundError):
        selectors.queue_item_detail(admin_b, alpha_item.pk)
    with pytest.raises(NotFoundError):
        selectors.queue_item_detail(admin_a, "not-a-number")


def test_queue_item_detail_prefetches_recipients_and_attempts(alpha_item, admin_a, django_assert_num_queries):
    defer(alpha_item)
    # The admin's domains, the item, its recipients, its attempts.
    with django_assert_num_queries(4):
        item = selectors.queue_item_detail(admin_a, alpha_item.pk)
        replies = [r.reply for r in item.recipients.all()]
        attempts = [a.host for a in item.attempts_log.all()]
    assert replies == ["451 4.7.1 Greylisted, try again later"]
    assert attempts == ["mx.remote.test"]


def test_queue_summary_counts_states_held_and_deferred_destinations(superadmin, admin_b, mailbox_a):
    long_ago = timezone.now() - timedelta(hours=5)
    oldest = defer(enqueue(submitted_by=mailbox_a, to=("x@slow.test",)))
    set_state(oldest, QueueItem.State.DEFERRED, created_at=long_ago)
    defer(enqueue(submitted_by=mailbox_a, to=("y@slow.test",)))
    defer(enqueue(submitted_by=mailbox_a, to=("z@other.test",)))
    set_state(enqueue(submitted_by=mailbox_a), QueueItem.State.QUEUED, on_hold=True)
    set_state(enqueue(submitted_by=mailbox_a), QueueItem.State.SENT)
    set_state(
        enqueue(submitted_by=mailbox_a), QueueItem.State.BOUNCED, on_hold=True
    )  # final: not counted held

    summary = selectors.queue_summary(superadmin)

    assert {
        k: summary[k] for k in ("queued", "sending", "deferred", "sent", "bounced", "waiting", "on_hold")
    } == {
        "queued": 1,
        "sending": 0,
        "deferred": 3,
        "sent": 1,
        "bounced": 1,
        "waiting": 4,
        "on_hold": 1,
    }
    assert summary["oldest_deferred_at"] == long_ago
    assert 5 * 3600 - 5 <= summary["oldest_deferred_age_seconds"] <= 5 * 3600 + 60
    assert summary["top_deferred_domains"] == [
        {"domain": "slow.test", "count": 2},
        {"domain": "other.test", "count": 1},
    ]
    assert selectors.queue_summary(admin_b)["waiting"] == 0  # alpha's queue is not beta's business


# --- Retry ------------------------------------------------------------------------------


def test_retry_makes_a_deferred_item_due_and_enqueues_it_on_commit(
    alpha_item, admin_a, enqueued, django_capture_on_commit_callbacks
):
    item = defer(alpha_item)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.queue_item_retry(actor=admin_a, item=item)
        assert enqueued == []  # nothing leaves the process before commit
    for callback in callbacks:
        callback()

    item.refresh_from_db()
    assert item.state == QueueItem.State.QUEUED
    assert abs((item.next_attempt_at - timezone.now()).total_seconds()) < 5
    assert enqueued == [(item.pk, None)]


@pytest.mark.parametrize(
    ("state", "on_hold", "code"),
    [
        (QueueItem.State.SENT, False, "queue_item_final"),
        (QueueItem.State.BOUNCED, False, "queue_item_final"),
        (QueueItem.State.SENDING, False, "queue_item_sending"),
        (QueueItem.State.DEFERRED, True, "queue_item_held"),
    ],
)
def test_retry_refuses_finished_sending_and_held_items(alpha_item, admin_a, state, on_hold, code):
    item = set_state(alpha_item, state, on_hold=on_hold)
    with pytest.raises(ConflictError) as caught:
        services.queue_item_retry(actor=admin_a, item=item)
    assert caught.value.code == code
    item.refresh_from_db()
    assert item.state == state


# --- Hold and release -------------------------------------------------------------------


def test_hold_stops_delivery_and_release_wakes_it(
    alpha_item, admin_a, enqueued, django_capture_on_commit_callbacks
):
    held = services.queue_item_hold(actor=admin_a, item=alpha_item)
    assert held.on_hold is True
    assert services.queue_item_hold(actor=admin_a, item=alpha_item).on_hold is True  # idempotent
    # A delivery pass woken for a held item finds nothing to do (no network involved).
    assert services.queue_deliver(item_id=alpha_item.pk) == 0
    alpha_item.refresh_from_db()
    assert alpha_item.state == QueueItem.State.QUEUED and alpha_item.attempts == 0

    with django_capture_on_commit_callbacks(execute=True):
        released = services.queue_item_release(actor=admin_a, item=alpha_item)
    assert released.on_hold is False
    assert enqueued == [(alpha_item.pk, None)]


def test_release_of_a_deferred_item_keeps_its_schedule(
    alpha_item, admin_a, enqueued, django_capture_on_commit_callbacks
):
    item = set_state(defer(alpha_item), QueueItem.State.DEFERRED, on_hold=True)
    with django_capture_on_commit_callbacks(execute=True):
        services.queue_item_release(actor=admin_a, item=item)
    ((item_id, countdown),) = enqueued
    assert item_id == item.pk and 500 < countdown <= 600  # due in ten minutes, as before


def test_hold_refuses_finished_and_sending_items(alpha_item, admin_a):
    for state, code in (
        (QueueItem.State.SENT, "queue_item_final"),
        (QueueItem.State.SENDING, "queue_item_sending"),
    ):
        item = set_state(alpha_item, state)
        with pytest.raises(ConflictError) as caught:
            services.queue_item_hold(actor=admin_a, item=item)
        assert caught.value.code == code
    assert QueueItem.objects.get(pk=alpha_item.pk).on_hold is False


# --- Delete -----------------------------------------------------------------------------


def test_delete_without_bounce_removes_item_recipients_and_attempts(alpha_item, admin_a, domain_a):
    item = defer(alpha_item)
    message_id = item.message_id

    result = services.queue_item_delete(actor=admin_a, item=item, bounce=False)

    assert result.deleted is True and result.bounced == []
    assert not QueueItem.objects.filter(pk=item.pk).exists()
    assert not QueueRecipient.objects.filter(item_id=item.pk).exists()
    assert not DeliveryAttempt.objects.filter(item_id=item.pk).exists()
    assert Message.objects.filter(pk=message_id).exists()  # the stored message stays
    assert reports_to("alice@alpha.test") == []  # nobody is told
    alert = Alert.objects.get(kind="relay.queue_action")
    assert alert.level == "info" and alert.domain_id == domain_a.pk
    assert alert.data["action"] == "delete" and alert.data["queue_id"] == result.queue_id


def test_delete_with_bounce_fails_open_recipients_and_reports_to_the_sender(mailbox_a, admin_a):
    item = defer(enqueue(submitted_by=mailbox_a, to=("bob@remote.test", "carol@remote.test")))
    QueueRecipient.objects.filter(item=item, address="carol@remote.test").update(
        state=QueueRecipient.State.SENT, reply="250 2.0.0 OK"
    )

    result = services.queue_item_delete(actor=admin_a, item=item, bounce=True)

    assert result.deleted is False and result.bounced == ["bob@remote.test"]
    item.refresh_from_db()
    assert item.state == QueueItem.State.BOUNCED and item.finished_at is not None
    assert item.last_reply == DELETED
    states = dict(QueueRecipient.objects.filter(item=item).values_list("address", "state"))
    assert states == {"bob@remote.test": "bounced", "carol@remote.test": "sent"}
    assert QueueRecipient.objects.get(item=item, address="bob@remote.test").reply == DELETED
    assert DeliveryAttempt.objects.filter(item=item).count() == 1  # the story stays readable

    dsn = Message.objects.get(mail_from="", recipients__address="alice@alpha.test")
    assert dsn.submitted_by_id is None
    (report,) = reports_to("alice@alpha.test")
    assert b"Final-Recipient: rfc822; bob@remote.test" in report
    assert b"Action: failed" in report and b"Status: 5.0.0" in report
    assert b"Deleted from the queue by an administrator" in report
    assert b"carol@remote.test" not in report  # delivered: not part of the report
    assert Alert.objects.get(kind="relay.queue_action").data["action"] == "delete_bounce"


def test_delete_with_bounce_never_reports_a_report(superadmin):
    dsn_item = enqueue(sender="", to=("someone@remote.test",), kind=QueueItem.Kind.BOUNCE)
    services.queue_item_delete(actor=superadmin, item=dsn_item, bounce=True)
    dsn_item.refresh_from_db()
    assert dsn_item.state == QueueItem.State.BOUNCED
    assert not Message.objects.filter(mail_from="").exclude(pk=dsn_item.message_id).exists()


def test_delete_refuses_items_being_delivered_and_bouncing_finished_ones(alpha_item, admin_a):
    set_state(alpha_item, QueueItem.State.SENDING)
    with pytest.raises(ConflictError):
        services.queue_item_delete(actor=admin_a, item=alpha_item, bounce=False)
    set_state(alpha_item, QueueItem.State.SENT)
    with pytest.raises(ConflictError):
        services.queue_item_delete(actor=admin_a, item=alpha_item, bounce=True)
    assert QueueItem.objects.get(pk=alpha_item.pk).state == QueueItem.State.SENT
    services.queue_item_delete(actor=admin_a, item=alpha_item, bounce=False)  # finished: may go
    assert not QueueItem.objects.filter(pk=alpha_item.pk).exists()


@pytest.mark.parametrize("action", ["retry", "hold", "release", "delete", "bounce"])
def test_actions_outside_scope_are_not_found(alpha_item, admin_b, user_a, action):
    item = defer(alpha_item)
    calls = {
        "retry": lambda actor: services.queue_item_retry(actor=actor, item=item),
        "hold": lambda actor: services.queue_item_hold(actor=actor, item=item),
        "release": lambda actor: services.queue_item_release(actor=actor, item=item),
        "delete": lambda actor: services.queue_item_delete(actor=actor, item=item, bounce=False),
        "bounce": lambda actor: services.queue_item_delete(actor=actor, item=item, bounce=True),
    }
    for actor in (admin_b, user_a):
        with pytest.raises(NotFoundError):
            calls[action](actor)
    after = QueueItem.objects.get(pk=item.pk)
    assert (after.state, after.on_hold) == (QueueItem.State.DEFERRED, False)
    assert not Alert.objects.filter(kind="relay.queue_action").exists()


# --- Bulk -------------------------------------------------------------------------------


def test_bulk_applies_to_each_visible_item_and_reports_the_rest(mailbox_a, mailbox_b, admin_a):
    first = defer(enqueue(submitted_by=mailbox_a))
    sent = set_state(enqueue(submitted_by=mailbox_a), QueueItem.State.SENT)
    foreign = enqueue(submitted_by=mailbox_b, sender="bob@beta.test")

    result = services.queue_items_bulk(actor=admin_a, item_ids=[first.pk, sent.pk, foreign.pk], action="hold")

    assert result.done == [first.pk]
    assert set(result.refused) == {sent.pk, foreign.pk}
    assert result.refused[foreign.pk] == "No such queue item."
    assert list(QueueItem.objects.filter(on_hold=True).values_list("pk", flat=True)) == [first.pk]


def test_bulk_rejects_unknown_actions(alpha_item, admin_a):
    with pytest.raises(ApplicationError, match="Unknown action"):
        services.queue_items_bulk(actor=admin_a, item_ids=[alpha_item.pk], action="explode")
