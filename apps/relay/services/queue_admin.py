"""Administering the outbound queue: retry now, hold, release, and delete (optionally
bouncing the message back to its sender with a delivery report).

Every action first checks that the actor sees the item (apps.relay.selectors), then locks
its row: the delivery pass claims items with a conditional UPDATE, so an action and a pass
never both act on the same state. An item being delivered right now (state "sending") is
refused with a ConflictError: the pass writes its whole row back when it finishes and
would undo the change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from apps.core.addresses import AddressError, parse_address
from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.relay import selectors
from apps.relay.models import QueueItem, QueueRecipient
from apps.relay.services.queue import queue_item_report

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

__all__ = [
    "QUEUE_BULK_ACTIONS",
    "QUEUE_BULK_LIMIT",
    "QUEUE_DELETED_REPLY",
    "QueueBulkResult",
    "QueueItemDeleted",
    "queue_item_delete",
    "queue_item_hold",
    "queue_item_release",
    "queue_item_retry",
    "queue_items_bulk",
]

State = QueueItem.State
RState = QueueRecipient.State

# The diagnostic a sender reads in the report (RFC 3463 5.0.0: permanent, no detail).
QUEUE_DELETED_REPLY = "5.0.0 Deleted from the queue by an administrator"
QUEUE_BULK_ACTIONS = ("retry", "hold", "release", "delete", "delete_bounce")
QUEUE_BULK_LIMIT = 500


@dataclass(frozen=True)
class QueueItemDeleted:
    """What a delete did: the item is gone (`deleted`), or kept as bounced with a report
    sent about `bounced` recipients."""

    item_id: int
    queue_id: str
    deleted: bool
    bounced: list[str]


def _locked(actor: User, item: QueueItem) -> QueueItem:
    """The item's current row, locked, if the actor may see it; else NotFoundError."""
    if not selectors.queue_items_visible_to(actor).filter(pk=item.pk).exists():
        raise NotFoundError("No such queue item.")
    # of=("self",): PostgreSQL refuses FOR UPDATE on the nullable side of the message join.
    locked = (
        QueueItem.objects.select_for_update(of=("self",)).select_related("message").filter(pk=item.pk).first()
    )
    if locked is None:
        raise NotFoundError("No such queue item.")
    return locked


def _refuse_final(item: QueueItem) -> None:
    if item.is_final:
        raise ConflictError(
            f"The message is {item.get_state_display().lower()} already; nothing is left to deliver.",
            code="queue_item_final",
        )


def _refuse_sending(item: QueueItem) -> None:
    if item.state == State.SENDING:
        raise ConflictError(
            "The message is being delivered right now; try again in a moment.", code="queue_item_sending"
        )


def _wake(item: QueueItem) -> None:
    """Enqueue a delivery pass for the item once the transaction commits: at once when it
    is due, else when its next attempt is due (the sweep would also find it then)."""
    from apps.relay.tasks import queue_deliver_task

    delay = (item.next_attempt_at - timezone.now()).total_seconds()
    if delay <= 0:
        queue_deliver_task.delay_on_commit(item_id=item.pk)
        return
    item_id = item.pk
    transaction.on_commit(
        lambda: queue_deliver_task.apply_async(kwargs={"item_id": item_id}, countdown=delay)
    )


@transaction.atomic
def queue_item_retry(*, actor: User, item: QueueItem) -> QueueItem:
    """Deliver a queued or deferred item now: it becomes queued, due at once, and a
    delivery pass is enqueued after commit. Raises NotFoundError outside the actor's
    scope, ConflictError for a finished item, one being delivered, or one on hold."""
    item = _locked(actor, item)
    _refuse_final(item)
    _refuse_sending(item)
    if item.on_hold:
        raise ConflictError("The message is on hold; release it to deliver it.", code="queue_item_held")
    item.state = State.QUEUED
    item.next_attempt_at = timezone.now()
    item.save(update_fields=["state", "next_attempt_at", "updated_at"])
    _wake(item)
    logger.info("queue item %s retried by user %s", item.pk, actor.pk)
    audit("queue.retry", actor=actor, target=item, domain_id=_local_domain_id(item))
    return item


@transaction.atomic
def queue_item_hold(*, actor: User, item: QueueItem) -> QueueItem:
    """Stop delivering an item until it is released; holding a held item is a no-op.
    Raises NotFoundError outside the actor's scope, ConflictError for a finished item or
    one being delivered."""
    item = _locked(actor, item)
    _refuse_final(item)
    _refuse_sending(item)
    if not item.on_hold:
        item.on_hold = True
        item.save(update_fields=["on_hold", "updated_at"])
        logger.info("queue item %s held by user %s", item.pk, actor.pk)
        audit("queue.hold", actor=actor, target=item, domain_id=_local_domain_id(item))
    return item


@transaction.atomic
def queue_item_release(*, actor: User, item: QueueItem) -> QueueItem:
    """Let a held item be delivered again: on its schedule (at once when it is due), with
    a delivery pass enqueued after commit. Releasing an item that is not held is a no-op.
    Raises NotFoundError outside the actor's scope."""
    item = _locked(actor, item)
    if not item.on_hold:
        return item
    item.on_hold = False
    item.save(update_fields=["on_hold", "updated_at"])
    if item.state in (State.QUEUED, State.DEFERRED):
        _wake(item)
    logger.info("queue item %s released by user %s", item.pk, actor.pk)
    audit("queue.release", actor=actor, target=item, domain_id=_local_domain_id(item))
    return item


@transaction.atomic
def queue_item_delete(*, actor: User, item: QueueItem, bounce: bool = False) -> QueueItemDeleted:
    """Take an item out of the queue.

    Without `bounce` the item, its recipients and its attempt log are deleted (the message
    itself stays stored). With `bounce` the open recipients are marked bounced with
    QUEUE_DELETED_REPLY, the sender gets a delivery report about them (never for a report
    itself or a null sender), and the item stays, bounced and finished, so its story can
    still be read. Emits a "relay.queue_action" alert. Raises NotFoundError outside the
    actor's scope; ConflictError for an item being delivered, or bouncing a finished one."""
    item = _locked(actor, item)
    _refuse_sending(item)
    queue_id = item.message.queue_id
    item_id = item.pk
    audit(
        "queue.bounce" if bounce else "queue.delete",
        actor=actor,
        target=item,
        domain_id=_local_domain_id(item),
    )
    if not bounce:
        item.delete()
        _alert(
            actor, item, f"{actor.email} deleted message {queue_id} to {item.domain} from the outbound queue."
        )
        logger.info("queue item %s deleted by user %s", item_id, actor.pk)
        return QueueItemDeleted(item_id=item_id, queue_id=queue_id, deleted=True, bounced=[])

    _refuse_final(item)
    now = timezone.now()
    recipients = list(
        QueueRecipient.objects.select_for_update().filter(
            item=item, state__in=[RState.PENDING, RState.DEFERRED]
        )
    )
    for recipient in recipients:
        recipient.state = RState.BOUNCED
        recipient.reply = QUEUE_DELETED_REPLY
        recipient.reply_code = None
        recipient.remote_host = ""  # the failure is ours, not a remote server's
        recipient.save(update_fields=["state", "reply", "reply_code", "remote_host", "updated_at"])
    item.state = State.BOUNCED
    item.on_hold = False
    item.finished_at = now
    item.last_reply = QUEUE_DELETED_REPLY
    item.lease_token = ""
    item.save(update_fields=["state", "on_hold", "finished_at", "last_reply", "lease_token", "updated_at"])
    queue_item_report(item, recipients, action="failed")
    notified = f"; a delivery report went to {item.report_to}" if item.report_to else ""
    _alert(
        actor,
        item,
        f"{actor.email} deleted message {queue_id} to {item.domain} from the outbound queue "
        f"and bounced it{notified}.",
        bounced=True,
    )
    logger.info("queue item %s bounced by user %s", item_id, actor.pk)
    return QueueItemDeleted(
        item_id=item_id, queue_id=queue_id, deleted=False, bounced=[r.address for r in recipients]
    )


def _alert(actor: User, item: QueueItem, message: str, *, bounced: bool = False) -> None:
    from apps.alerts.services import emit

    emit(
        "relay.queue_action",
        "info",
        message,
        domain_id=_local_domain_id(item),
        action="delete_bounce" if bounced else "delete",
        queue_id=item.message.queue_id,
        destination=item.domain,
        actor=actor.email,
    )


def _local_domain_id(item: QueueItem) -> int | None:
    """Our domain the item belongs to, so that domain's admins see the alert too."""
    from apps.mailboxes.models import Domain, Mailbox

    if item.message.submitted_by_id is not None:
        return (
            Mailbox.objects.filter(pk=item.message.submitted_by_id)
            .values_list("domain_id", flat=True)
            .first()
        )
    for address in (item.report_to, item.sender):
        try:
            domain = parse_address(address).domain
        except AddressError:
            continue
        domain_id = Domain.objects.filter(name=domain).values_list("pk", flat=True).first()
        if domain_id is not None:
            return domain_id
    return None


# --- Bulk --------------------------------------------------------------------------------


@dataclass
class QueueBulkResult:
    """Which items an action was applied to, and why the others were refused."""

    done: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


def queue_items_bulk(*, actor: User, item_ids: Iterable[int], action: str) -> QueueBulkResult:
    """Apply one action ("retry", "hold", "release", "delete", "delete_bounce") to up to
    QUEUE_BULK_LIMIT items. Each item is its own transaction: one refused item (finished,
    being delivered, not visible) does not stop the others."""
    if action not in QUEUE_BULK_ACTIONS:
        raise ApplicationError(f"Unknown action {action!r}.", fields={"action": ["Unknown action."]})
    ids = list(dict.fromkeys(int(pk) for pk in item_ids))
    if len(ids) > QUEUE_BULK_LIMIT:
        raise ApplicationError(
            f"Select at most {QUEUE_BULK_LIMIT} messages at a time.", fields={"items": ["Too many."]}
        )
    visible = {item.pk: item for item in selectors.queue_items_visible_to(actor).filter(pk__in=ids)}
    result = QueueBulkResult()
    for pk in ids:
        item = visible.get(pk)
        if item is None:
            result.refused[pk] = "No such queue item."
            continue
        try:
            if action == "retry":
                queue_item_retry(actor=actor, item=item)
            elif action == "hold":
                queue_item_hold(actor=actor, item=item)
            elif action == "release":
                queue_item_release(actor=actor, item=item)
            else:
                queue_item_delete(actor=actor, item=item, bounce=action == "delete_bounce")
        except ApplicationError as exc:
            result.refused[pk] = exc.message
        else:
            result.done.append(pk)
    return result
