"""Quarantine decisions: release, delete, report (training the classifier), release
requests and their approval, allow-listing a sender, and expiry.

Who may do what is decided here, on top of the selectors' scoping (which decides what
an actor can see at all): an administrator acts on every recipient of an item in their
scope; a mailbox user only on their own mailboxes' rows, and a user cannot release
malware or policy hits, only ask for their release.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, PermissionDeniedError
from apps.mailboxes.models import Mailbox, Message, MessageRecipient
from apps.mailboxes.services import message_deliver
from apps.threats.models import Category, ListEntry, QuarantineItem, QuarantineRecipient

logger = logging.getLogger(__name__)

__all__ = [
    "QuarantineActions",
    "QuarantineOutcome",
    "allow_sender",
    "quarantine_actions",
    "quarantine_delete",
    "quarantine_expire",
    "quarantine_release",
    "quarantine_report",
    "release_request",
    "release_request_decide",
    "user_may_release",
]

State = QuarantineRecipient.State
OPEN_STATES = (State.HELD, State.RELEASE_REQUESTED)
# Categories a mailbox user may release themselves; the rest need an administrator.
USER_RELEASABLE = (Category.SPAM, Category.UNSCANNABLE)


@dataclass(frozen=True)
class QuarantineOutcome:
    item_id: int
    changed: int  # recipient rows decided by this call
    delivered: bool = False


def _admin_domain_ids(actor) -> set[int] | None:
    """The domains `actor` administers; None means all (superadmin)."""
    if actor.is_superadmin:
        return None
    if not actor.is_domain_admin:
        return set()
    return set(actor.administered_domains.values_list("pk", flat=True))


def _row_access(
    actor, item: QuarantineItem, mailbox_ids: Iterable[int] | None = None
) -> list[tuple[QuarantineRecipient, bool]]:
    """The recipient rows `actor` may act on, each with whether they act on it as an
    administrator of its domain (rather than as the mailbox's owner), narrowed to
    `mailbox_ids` if given. Decided per row: administering one recipient's domain gives
    no administrator's say over a recipient in another domain."""
    rows = item.recipients.select_related("mailbox")
    if mailbox_ids is not None:
        rows = rows.filter(mailbox_id__in=list(mailbox_ids))
    domains = _admin_domain_ids(actor)
    access = []
    for row in rows:
        as_admin = domains is None or row.mailbox.domain_id in domains
        if as_admin or row.mailbox.owner_id == actor.pk:
            access.append((row, as_admin))
    return access


def _rows_for(actor, item: QuarantineItem, mailbox_ids: Iterable[int] | None) -> list[QuarantineRecipient]:
    """The recipient rows `actor` may decide on (delete, report), narrowed to `mailbox_ids`."""
    return [row for row, _ in _row_access(actor, item, mailbox_ids)]


def _releasable_rows(
    actor, item: QuarantineItem, mailbox_ids: Iterable[int] | None
) -> list[QuarantineRecipient]:
    """The rows `actor` may release: as administrator any, as owner only categories users
    may release themselves (malware and policy hits need an administrator)."""
    user_may = item.category in USER_RELEASABLE
    return [row for row, as_admin in _row_access(actor, item, mailbox_ids) if as_admin or user_may]


def _is_admin_for(actor, item: QuarantineItem) -> bool:
    return any(as_admin for _, as_admin in _row_access(actor, item))


def user_may_release(actor, item: QuarantineItem) -> bool:
    """Whether `actor` may release (not merely request) this item for someone."""
    return bool(_releasable_rows(actor, item, None))


@dataclass(frozen=True)
class QuarantineActions:
    """What a reviewer is offered for an item, given the recipient rows they see. Each
    action decides again when it is taken."""

    release: bool
    delete: bool
    request_release: bool
    decide_request: bool
    report: bool
    download: bool


def quarantine_actions(actor, item: QuarantineItem, rows: list[QuarantineRecipient]) -> QuarantineActions:
    may_release = user_may_release(actor, item)
    waiting = any(row.state in OPEN_STATES for row in rows)
    held = any(row.state == State.HELD for row in rows)
    requested = any(row.state == State.RELEASE_REQUESTED for row in rows)
    return QuarantineActions(
        release=may_release and waiting,
        delete=waiting,
        request_release=held and not may_release,
        decide_request=requested and _is_admin_for(actor, item),
        report=bool(rows),
        download=may_release,
    )


def _refresh_state(item: QuarantineItem) -> None:
    if not item.recipients.filter(state__in=OPEN_STATES).exists() and item.state == QuarantineItem.State.HELD:
        item.state = QuarantineItem.State.RESOLVED
        item.save(update_fields=["state"])


def _open_rows(rows: list[QuarantineRecipient]) -> list[QuarantineRecipient]:
    return [row for row in rows if row.state in OPEN_STATES]


def quarantine_release(
    *,
    actor,
    item: QuarantineItem,
    mailbox_ids: Iterable[int] | None = None,
    allow_sender: bool = False,
    request=None,
) -> QuarantineOutcome:
    """Deliver a held message to the chosen recipients' INBOX (all the actor may decide
    on by default), optionally allow-listing its sender for them."""
    with transaction.atomic():
        item = QuarantineItem.objects.select_for_update().get(pk=item.pk)
        if not _releasable_rows(actor, item, mailbox_ids) and _rows_for(actor, item, mailbox_ids):
            raise PermissionDeniedError(
                f"{item.get_category_display()} can only be released by an administrator; "
                "request a release instead"
            )
        rows = _open_rows(_releasable_rows(actor, item, mailbox_ids))
        if not rows:
            raise ApplicationError("nothing to release: no held recipient of yours")
        now = timezone.now()
        QuarantineRecipient.objects.filter(pk__in=[row.pk for row in rows]).update(
            state=State.RELEASED, decided_by=actor, decided_at=now
        )
        # Back to received under the item's lock, so a delete or expiry of the other
        # recipients committing meanwhile cannot mark the message done before this
        # release is delivered; the sweep redelivers it should this process die now.
        Message.objects.filter(pk=item.message_id).exclude(state=Message.State.DELIVERING).update(
            state=Message.State.RECEIVED, lease_token=""
        )
        if allow_sender and item.sender:
            for row in rows:
                allow_sender_for(actor=actor, mailbox=row.mailbox, sender=item.sender)
        _refresh_state(item)
        audit(
            "quarantine.release",
            actor=actor,
            target=item,
            request=request,
            changes={"mailboxes": [row.mailbox.address for row in rows], "allow_sender": allow_sender},
            domain_id=rows[0].mailbox.domain_id,
        )
    delivered = message_deliver(message_id=item.message_id, alone=True)
    if not delivered:
        logger.warning("release of quarantine item %s: delivery deferred to the sweep", item.pk)
    return QuarantineOutcome(item.pk, len(rows), delivered)


def quarantine_delete(
    *, actor, item: QuarantineItem, mailbox_ids: Iterable[int] | None = None, request=None
) -> QuarantineOutcome:
    """Discard the held copy for the chosen recipients (default: all the actor may)."""
    with transaction.atomic():
        item = QuarantineItem.objects.select_for_update().get(pk=item.pk)
        rows = _open_rows(_rows_for(actor, item, mailbox_ids))
        if not rows:
            raise ApplicationError("nothing to delete: no held recipient of yours")
        QuarantineRecipient.objects.filter(pk__in=[row.pk for row in rows]).update(
            state=State.DELETED, decided_by=actor, decided_at=timezone.now()
        )
        _refresh_state(item)
        audit(
            "quarantine.delete",
            actor=actor,
            target=item,
            request=request,
            changes={"mailboxes": [row.mailbox.address for row in rows]},
            domain_id=rows[0].mailbox.domain_id,
        )
        if item.state != QuarantineItem.State.HELD:
            _settle(item, actor=actor)  # after the audit event, which names the item
    return QuarantineOutcome(item.pk, len(rows))


def quarantine_report(*, actor, item: QuarantineItem, is_spam: bool, request=None) -> int:
    """A false positive (`is_spam=False`) or confirmed spam: trains the Bayes store of
    every domain the actor decides for. Returns how many stores learnt."""
    from apps.threats.services.learning import bayes_train_message

    rows = _rows_for(actor, item, None)
    if not rows:
        raise PermissionDeniedError("not a recipient of yours")
    domain_ids = sorted({row.mailbox.domain_id for row in rows})
    for domain_id in domain_ids:
        bayes_train_message(domain_id=domain_id, message=item.message, is_spam=is_spam)
    audit(
        "quarantine.report",
        actor=actor,
        target=item,
        request=request,
        changes={"as": "spam" if is_spam else "ham"},
        domain_id=domain_ids[0],
    )
    return len(domain_ids)


def release_request(*, actor, item: QuarantineItem, note: str = "", request=None) -> QuarantineOutcome:
    """A user asks an administrator to release what they may not release themselves."""
    from apps.alerts.services import emit

    with transaction.atomic():
        rows = [row for row in _rows_for(actor, item, None) if row.state == State.HELD]
        if not rows:
            raise ApplicationError("nothing to request: no held recipient of yours")
        QuarantineRecipient.objects.filter(pk__in=[row.pk for row in rows]).update(
            state=State.RELEASE_REQUESTED, requested_at=timezone.now(), request_note=note[:500]
        )
        emit(
            "threats.release_requested",
            "warning",
            f"{actor.email} asks for the release of quarantined {item.category}: {item.subject[:120]}",
            domain_id=rows[0].mailbox.domain_id,
            quarantine_id=item.pk,
        )
        audit(
            "quarantine.release_request",
            actor=actor,
            target=item,
            request=request,
            domain_id=rows[0].mailbox.domain_id,
        )
    return QuarantineOutcome(item.pk, len(rows))


def release_request_decide(*, actor, item: QuarantineItem, approve: bool, request=None) -> QuarantineOutcome:
    """An administrator approves (releases) or denies (keeps held) pending requests."""
    if not _is_admin_for(actor, item):
        raise PermissionDeniedError(
            "only an administrator of the recipient's domain decides release requests"
        )
    requested = [
        row.mailbox_id
        for row, as_admin in _row_access(actor, item)
        if as_admin and row.state == State.RELEASE_REQUESTED
    ]
    if not requested:
        raise ApplicationError("no pending release request")
    if approve:
        return quarantine_release(actor=actor, item=item, mailbox_ids=requested, request=request)
    with transaction.atomic():
        QuarantineItem.objects.select_for_update().filter(pk=item.pk).first()
        QuarantineRecipient.objects.filter(
            item=item, mailbox_id__in=requested, state=State.RELEASE_REQUESTED
        ).update(state=State.HELD, decided_by=actor, decided_at=timezone.now())
        audit(
            "quarantine.release_denied",
            actor=actor,
            target=item,
            request=request,
            changes={"mailboxes": requested},
        )
    return QuarantineOutcome(item.pk, len(requested))


def allow_sender_for(*, actor, mailbox: Mailbox, sender: str) -> ListEntry:
    """Add the sender to the mailbox's own allow list (idempotent)."""
    entry, created = ListEntry.objects.get_or_create(
        kind=ListEntry.Kind.ALLOW,
        match=ListEntry.Match.SENDER,
        value=sender.lower()[:254],
        domain=None,
        mailbox=mailbox,
        defaults={"created_by": actor, "comment": "allowed from the quarantine"},
    )
    if created:
        audit("threats.list_add", actor=actor, target=entry, domain_id=mailbox.domain_id)
    return entry


def allow_sender(*, actor, item: QuarantineItem, request=None) -> int:
    """Allow-list the item's sender for every mailbox of the actor's among its recipients."""
    rows = _rows_for(actor, item, None)
    if not item.sender or not rows:
        raise ApplicationError("this message has no sender to allow")
    with transaction.atomic():
        for row in rows:
            allow_sender_for(actor=actor, mailbox=row.mailbox, sender=item.sender)
    return len(rows)


def _settle(item: QuarantineItem, *, actor) -> bool:
    """An item nobody waits for any more: its message is done. A message no mailbox
    holds and the outbound queue does not need goes, with its verdict and this item
    (the audit log keeps the decisions), unless a deletion guard (legal hold) keeps it;
    its bytes go with the orphan sweep. Returns whether the message was removed."""
    from apps.mailboxes.search import unindex_messages
    from apps.mailboxes.services import deletion_guards_check

    message_id = item.message_id
    MessageRecipient.objects.filter(message_id=message_id, state=MessageRecipient.State.PENDING).update(
        state=MessageRecipient.State.DELIVERED, detail="held in quarantine, not delivered"
    )
    Message.objects.filter(pk=message_id, state=Message.State.QUARANTINED).update(
        state=Message.State.DELIVERED
    )
    unused = Message.objects.filter(
        pk=message_id, state=Message.State.DELIVERED, items__isnull=True, queue_items__isnull=True
    ).exists()
    if not unused:
        return False
    # Asked per mailbox it was held for: a legal hold on a mailbox covers its quarantine.
    mailboxes = list(item.recipients.values_list("mailbox_id", flat=True)) or [None]
    for mailbox_id in mailboxes:
        if deletion_guards_check(
            message_ids={message_id}, mailbox_id=mailbox_id, via="quarantine", actor=actor
        ):
            return False
    Message.objects.filter(pk=message_id).delete()
    unindex_messages([message_id])
    return True


def quarantine_expire(*, now=None, limit: int = 1000) -> int:
    """Expire items past their domain's retention, and items nobody can decide on any more
    (their mailboxes were deleted or erased); returns how many expired."""
    now = now or timezone.now()
    waiting = QuarantineRecipient.objects.filter(item=OuterRef("pk"), state__in=OPEN_STATES)
    ids = list(
        QuarantineItem.objects.filter(state=QuarantineItem.State.HELD)
        .filter(Q(expires_at__lte=now) | ~Exists(waiting))
        .values_list("id", flat=True)[:limit]
    )
    for item_id in ids:
        with transaction.atomic():
            item = QuarantineItem.objects.select_for_update().get(pk=item_id)
            item.recipients.filter(state__in=OPEN_STATES).update(state=State.EXPIRED, decided_at=now)
            item.state = QuarantineItem.State.EXPIRED
            item.save(update_fields=["state"])
            _settle(item, actor=None)
    if ids:
        logger.info("expired %d quarantine item(s)", len(ids))
    return len(ids)
