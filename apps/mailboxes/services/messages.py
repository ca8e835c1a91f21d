"""The message store: accepting mail durably, delivering it into folders, and the sweeps
that make a crash or a lost task delay mail but never lose it."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.core.addresses import AddressError, parse_address
from apps.core.db import durable_atomic
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import (
    Alias,
    AliasDestination,
    Domain,
    Folder,
    Mailbox,
    MailItem,
    Message,
    MessageRecipient,
)
from apps.mailboxes.parsing import ParsedMessage, parse_message, search_text
from apps.mailboxes.search import index_message
from apps.mailboxes.services.directory import MAX_ALIAS_DEPTH

logger = logging.getLogger(__name__)

__all__ = [
    "DeliveryContext",
    "IncomingMessage",
    "RecipientStatus",
    "RecipientVerdict",
    "blobs_sweep_orphans",
    "message_blob_store",
    "message_deliver",
    "messages_accept",
    "messages_requeue_stalled",
    "new_queue_id",
    "recipient_check",
]


# --- Recipient policy (RCPT) -----------------------------------------------------------


class RecipientStatus(Enum):
    LOCAL = "local"  # deliverable here
    NOT_LOCAL = "not_local"  # another domain: relaying needs authentication
    UNKNOWN = "unknown"  # a local domain without such an address
    DISABLED = "disabled"  # mailbox or domain switched off
    OVER_QUOTA = "over_quota"  # full now; may fit later
    NEVER_FITS = "never_fits"  # larger than the whole quota
    BAD_SYNTAX = "bad_syntax"


@dataclass(frozen=True)
class RecipientVerdict:
    status: RecipientStatus
    address: str  # normalised when the syntax was valid, else as given

    @property
    def accepted(self) -> bool:
        return self.status is RecipientStatus.LOCAL


def recipient_check(*, address: str, size: int | None = None) -> RecipientVerdict:
    """Decide whether mail for `address` (of `size` bytes, when announced) is accepted.

    Three indexed lookups at most (domain, mailbox, alias or catch-all): fast at any
    number of mailboxes.
    """
    try:
        parsed = parse_address(address)
    except AddressError:
        return RecipientVerdict(RecipientStatus.BAD_SYNTAX, address)
    domain = Domain.objects.filter(name=parsed.domain).only("id", "is_active").first()
    if domain is None:
        return RecipientVerdict(RecipientStatus.NOT_LOCAL, parsed.value)
    if not domain.is_active:
        return RecipientVerdict(RecipientStatus.DISABLED, parsed.value)
    mailbox = (
        Mailbox.objects.filter(address=parsed.value)
        .only("id", "is_active", "quota_bytes", "used_bytes")
        .first()
    )
    if mailbox is not None:
        if not mailbox.is_active:
            return RecipientVerdict(RecipientStatus.DISABLED, parsed.value)
        if mailbox.quota_bytes:
            if size and size > mailbox.quota_bytes:
                return RecipientVerdict(RecipientStatus.NEVER_FITS, parsed.value)
            # Without a size, a mailbox exactly at its quota is full.
            if mailbox.used_bytes + (size or 1) > mailbox.quota_bytes:
                return RecipientVerdict(RecipientStatus.OVER_QUOTA, parsed.value)
        return RecipientVerdict(RecipientStatus.LOCAL, parsed.value)
    alias_active = (
        Alias.objects.filter(Q(address=parsed.value) | Q(address=f"@{parsed.domain}"))
        .order_by("-local_part")  # the exact alias before the catch-all
        .values_list("is_active", flat=True)
        .first()
    )
    if alias_active:
        return RecipientVerdict(RecipientStatus.LOCAL, parsed.value)
    if alias_active is False:
        return RecipientVerdict(RecipientStatus.DISABLED, parsed.value)
    return RecipientVerdict(RecipientStatus.UNKNOWN, parsed.value)


# --- Accepting -------------------------------------------------------------------------


def new_queue_id() -> str:
    """Short, unique and roughly time-ordered: what admins grep logs for."""
    return f"{int(time.time() * 1000):011X}{secrets.token_hex(4).upper()}"


@dataclass(frozen=True)
class IncomingMessage:
    queue_id: str
    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes  # as stored: trace headers included
    peer_ip: str | None = None
    helo: str = ""
    blob_sha256: str = ""  # set once the raw bytes are durable in the blob store
    submitted_by_id: int | None = None  # the sending mailbox, for authenticated submission
    # (address, special-use folder) copies filed straight into a mailbox: the Sent copy.
    copies: tuple[tuple[str, str], ...] = ()
    smtp_checks: dict = field(default_factory=dict)  # SMTP-time scan results (threats)


def message_blob_store(*, raw: bytes) -> str:
    """Write a message's bytes durably (fsynced) to the blob store; returns the hash.
    Safe to call from many threads at once: that is how concurrent sessions share disk
    flushes."""
    return blob_store().put(raw)


def messages_accept(*, incoming: list[IncomingMessage]) -> list[Message]:
    """Make a batch of received messages durable, then queue their delivery.

    Blobs not yet stored are written and fsynced first; then every Message and recipient
    row is committed in one durable transaction. Only after this returns may the caller
    acknowledge (SMTP 250). Batching many sessions' messages into one commit is what
    keeps durable acknowledgement fast. A crash between the two steps leaves only orphan
    blobs, which `blobs_sweep_orphans` removes.
    """
    if not incoming:
        return []
    next_task = import_string(settings.A3_ACCEPTED_MESSAGE_TASK)
    missing = [item for item in incoming if not item.blob_sha256]
    stored = dict(
        zip((id(item) for item in missing), blob_store().put_many(item.raw for item in missing), strict=True)
    )
    with durable_atomic():
        messages = Message.objects.bulk_create(
            Message(
                queue_id=item.queue_id,
                blob_sha256=item.blob_sha256 or stored[id(item)],
                size=len(item.raw),
                mail_from=item.mail_from[:998],
                helo=item.helo[:255],
                peer_ip=item.peer_ip,
                submitted_by_id=item.submitted_by_id,
                smtp_checks=item.smtp_checks,
            )
            for item in incoming
        )
        MessageRecipient.objects.bulk_create(
            [
                MessageRecipient(message=message, address=address)
                for message, item in zip(messages, incoming, strict=True)
                for address in dict.fromkeys(item.recipients)
            ]
            + [
                # A copy for a mailbox that is also a recipient is not needed: a message
                # is filed once per mailbox.
                MessageRecipient(message=message, address=address, folder=folder)
                for message, item in zip(messages, incoming, strict=True)
                for address, folder in dict(item.copies).items()
                if address not in item.recipients
            ]
        )
        for message in messages:
            next_task.delay_on_commit(message_id=message.pk)
    return messages


# --- Delivering ------------------------------------------------------------------------


@dataclass
class DeliveryContext:
    """What delivery stages see and may change.

    `targets` maps each destination mailbox id to the special-use folder it is filed in
    ("inbox" unless a stage says otherwise, e.g. "junk"); a stage may also drop a target
    or set `held` to keep the message out of every mailbox (quarantine). A stage that
    holds the message for some mailboxes only drops those targets and sets
    `partly_held`: the message then stays quarantined after the others are filed.
    """

    message: Message
    raw: bytes
    parsed: ParsedMessage
    targets: dict[int, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # recipient → reason
    held: str = ""
    # External addresses that local aliases forward to: address → the alias it came from.
    forwards: dict[str, str] = field(default_factory=dict)
    # Called inside the transaction that files the message (e.g. to queue the forwards).
    on_commit: list[Callable[[DeliveryContext], None]] = field(default_factory=list)
    partly_held: bool = False
    # Set by a stage's hook when the message must be delivered once more (a release that
    # landed while this pass ran): it is left received and queued again.
    again: bool = False
    # Called inside the transaction that files the message, whether held or not (the
    # quarantine records itself here); `on_commit` hooks run only for filed mail.
    on_record: list[Callable[[DeliveryContext], None]] = field(default_factory=list)


DeliveryStage = Callable[[DeliveryContext], None]


def _stages() -> list[DeliveryStage]:
    return [import_string(path) for path in settings.A3_DELIVERY_STAGES]


@dataclass
class _Expansion:
    mailbox_ids: set[int] = field(default_factory=set)
    external: set[str] = field(default_factory=set)  # forwarding destinations elsewhere

    def __bool__(self) -> bool:
        return bool(self.mailbox_ids or self.external)


def _expand(address: str, *, depth: int = 0, seen: set[str] | None = None) -> tuple[_Expansion, str]:
    """Where `address` delivers to (aliases and catch-all followed): local mailbox ids and
    external forwarding addresses, and a reason when it delivers nowhere."""
    seen = set() if seen is None else seen
    if address in seen or depth > MAX_ALIAS_DEPTH:
        return _Expansion(), "alias loop or chain too deep"
    seen.add(address)
    mailbox = Mailbox.objects.filter(address=address).values("id", "is_active").first()
    if mailbox is not None:
        return (
            (_Expansion({mailbox["id"]}), "") if mailbox["is_active"] else (_Expansion(), "mailbox disabled")
        )
    try:
        domain = parse_address(address).domain
    except AddressError:
        return _Expansion(), "invalid address"
    if depth and not Domain.objects.filter(name=domain).exists():
        return _Expansion(external={address}), ""
    alias = (
        Alias.objects.filter(address=address).first() or Alias.objects.filter(address=f"@{domain}").first()
    )
    if alias is None:
        return _Expansion(), "no such mailbox"
    if not alias.is_active:
        return _Expansion(), "alias disabled"
    found = _Expansion()
    reasons: list[str] = []
    for destination in AliasDestination.objects.filter(alias=alias).values_list("address", flat=True):
        expansion, reason = _expand(destination, depth=depth + 1, seen=seen)
        found.mailbox_ids |= expansion.mailbox_ids
        found.external |= expansion.external
        if reason:
            reasons.append(f"{destination}: {reason}")
    return found, "; ".join(reasons) if not found else ""


def expand_recipients(context: DeliveryContext) -> None:
    """Stage: resolve envelope recipients to mailboxes, filing into INBOX by default, and
    collect the external addresses aliases forward to."""
    for recipient in context.message.recipients.filter(state=MessageRecipient.State.PENDING):
        if recipient.folder:  # a copy straight into one mailbox's folder (Sent)
            mailbox_id = (
                Mailbox.objects.filter(address=recipient.address, is_active=True)
                .values_list("id", flat=True)
                .first()
            )
            if mailbox_id is None:
                context.failures[recipient.address] = "mailbox disabled or gone"
            else:
                context.targets.setdefault(mailbox_id, recipient.folder)
            continue
        expansion, reason = _expand(recipient.address)
        if not expansion:
            context.failures[recipient.address] = reason or "no such mailbox"
        for mailbox_id in expansion.mailbox_ids:
            context.targets.setdefault(mailbox_id, Folder.SpecialUse.INBOX)
        for address in expansion.external:
            context.forwards.setdefault(address, recipient.address)


def _lease(message_id: int, *, alone: bool = False) -> list[Message]:
    """Claim `message_id` and up to A3_DELIVERY_BATCH - 1 other waiting messages for this
    worker, with a random token in one short UPDATE. Workers never parse or file the same
    message twice; a lease whose worker died is released by the sweep."""
    token = secrets.token_hex(8)
    others = list(
        Message.objects.filter(state=Message.State.RECEIVED)
        .exclude(pk=message_id)
        .order_by("id")
        .values_list("id", flat=True)[: 0 if alone else max(0, settings.A3_DELIVERY_BATCH - 1)]
    )
    with transaction.atomic():
        claimed = Message.objects.filter(pk__in=[message_id, *others], state=Message.State.RECEIVED).update(
            state=Message.State.DELIVERING, lease_token=token, leased_at=timezone.now()
        )
    if not claimed:
        return []
    return list(Message.objects.filter(lease_token=token, state=Message.State.DELIVERING).order_by("id"))


MAX_DELIVERY_ATTEMPTS = 5


def _record_failure(message: Message, error: str) -> None:
    """A delivery attempt crashed: count it, and give up (alert) after a few."""
    from apps.alerts.services import emit

    attempts = message.delivery_attempts + 1
    failed = attempts >= MAX_DELIVERY_ATTEMPTS
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            delivery_attempts=attempts,
            last_error=error[:2000],
            state=Message.State.FAILED if failed else Message.State.RECEIVED,
            lease_token="",
        )
        if failed:
            emit(
                "mailboxes.delivery_failed",
                "error",
                f"Message {message.queue_id} could not be delivered after {attempts} attempts: {error[:200]}",
                queue_id=message.queue_id,
            )


def _file(*, message: Message, mailbox_id: int, special_use: str) -> bool:
    """File one message into one mailbox folder; False if it was already there."""
    if MailItem.objects.filter(mailbox_id=mailbox_id, message=message).exists():
        return False  # a redelivered task: nothing to do
    folder = (
        Folder.objects.select_for_update().filter(mailbox_id=mailbox_id, special_use=special_use).first()
    ) or Folder.objects.select_for_update().get(mailbox_id=mailbox_id, special_use=Folder.SpecialUse.INBOX)
    uid = folder.uidnext
    Folder.objects.filter(pk=folder.pk).update(uidnext=F("uidnext") + 1)
    MailItem.objects.create(
        mailbox_id=mailbox_id,
        folder=folder,
        message=message,
        uid=uid,
        size=message.size,
        internal_date=message.received_at,
    )
    Mailbox.objects.filter(pk=mailbox_id).update(used_bytes=F("used_bytes") + message.size)
    return True


def _text(value: str) -> str:
    """Mail may contain NUL characters; PostgreSQL text columns cannot."""
    return value.replace("\x00", "")


def _apply_metadata(message: Message, parsed: ParsedMessage) -> None:
    message.parsed = True
    message.message_id_header = _text(parsed.message_id)
    message.subject = _text(parsed.subject)
    message.from_header = _text(parsed.from_header)
    message.to_header = _text(parsed.to_header)
    message.cc_header = _text(parsed.cc_header)
    message.date_header = parsed.date
    message.has_attachments = parsed.has_attachments
    message.parse_problems = _text("; ".join(parsed.problems))[:2000]
    message.body_text = _text(search_text(parsed))


def _read_current(message: Message) -> bytes:
    """The message's bytes. A scanner may have stored a new copy (with its headers) and
    removed the old one since this row was read: then the row's current hash is used."""
    try:
        return blob_store().read(message.blob_sha256)
    except BlobNotFound:
        current = Message.objects.filter(pk=message.pk).values_list("blob_sha256", flat=True).first()
        if not current or current == message.blob_sha256:
            raise
        message.blob_sha256 = current
        return blob_store().read(current)


def _prepare(message: Message) -> DeliveryContext | None:
    """Read, parse and run the stages for one leased message (no transaction held)."""
    try:
        raw = _read_current(message)
    except BlobNotFound:
        Message.objects.filter(pk=message.pk).update(
            state=Message.State.FAILED, last_error="stored content is missing", lease_token=""
        )
        logger.error("blob %s of message %s is missing", message.blob_sha256, message.queue_id)
        return None
    try:
        context = DeliveryContext(message=message, raw=raw, parsed=parse_message(raw))
        for stage in _stages():
            stage(context)
    except SoftTimeLimitExceeded:
        raise  # the task is out of time: stop; the lease expires and the sweep retries
    except Exception as exc:  # one bad message must not block the batch
        logger.exception("delivery stages failed for message %s", message.queue_id)
        _record_failure(message, f"{type(exc).__name__}: {exc}")
        return None
    return context


def _commit_delivery(context: DeliveryContext) -> None:
    message = context.message
    _apply_metadata(message, context.parsed)
    index_message(message)
    if not context.held:
        for mailbox_id, special_use in sorted(context.targets.items()):
            _file(message=message, mailbox_id=mailbox_id, special_use=special_use)
        for hook in context.on_commit:
            hook(context)
    for hook in context.on_record:
        hook(context)
    for address, reason in context.failures.items():
        MessageRecipient.objects.filter(message=message, address=address).update(
            state=MessageRecipient.State.FAILED, detail=reason[:500]
        )
    if context.again:
        from apps.mailboxes.tasks import message_deliver_task

        message.state = Message.State.RECEIVED
        message_deliver_task.delay_on_commit(message_id=message.pk)
    elif context.held or context.partly_held:
        # Recipients stay pending: a release delivers the message again for them.
        message.state = Message.State.QUARANTINED
    else:
        MessageRecipient.objects.filter(message=message, state=MessageRecipient.State.PENDING).update(
            state=MessageRecipient.State.DELIVERED
        )
        message.state = Message.State.DELIVERED
    message.delivered_at = timezone.now()
    message.delivery_attempts += 1
    message.lease_token = ""
    message.last_error = "; ".join(f"{a}: {r}" for a, r in context.failures.items())[:2000]
    message.save()
    if context.failures:
        logger.warning("message %s not delivered to %d recipient(s)", message.queue_id, len(context.failures))


def message_deliver(*, message_id: int, alone: bool = False) -> bool:
    """Deliver a received message: parse it, run the delivery stages and file it into its
    recipients' folders. Other messages waiting at the same time are delivered in the same
    pass (their own tasks then find nothing to do), which keeps the write transactions
    few. Safe to run twice; returns whether this call delivered `message_id`.

    Reading, parsing and the stages run outside any transaction; filing the whole batch
    is a short write transaction per message, which matters on SQLite's single writer.
    `alone` delivers just this message (a release from the dashboard waits for it).
    """
    leased = _lease(message_id, alone=alone)
    if not leased:
        return False  # delivered already, leased by another worker, failed, or gone
    contexts = [context for message in leased if (context := _prepare(message)) is not None]
    # One short transaction per message: acknowledging new mail never waits long behind
    # delivery, and with the lease held nobody else touches these rows meanwhile.
    delivered = False
    for context in contexts:
        try:
            with transaction.atomic():
                _commit_delivery(context)
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # one bad message must not strand its batch-mates
            logger.exception("filing message %s failed", context.message.queue_id)
            _record_failure(context.message, f"{type(exc).__name__}: {exc}")
            continue
        delivered = delivered or context.message.pk == message_id
    return delivered


# --- Sweeps ----------------------------------------------------------------------------


def messages_requeue_stalled(*, limit: int = 1000) -> int:
    """Re-enqueue messages received (or claimed) long ago but never delivered: their task
    was lost with a crashed worker or an in-memory broker. Returns how many."""
    from apps.mailboxes.tasks import message_deliver_task

    now = timezone.now()
    waited = now - timedelta(seconds=settings.A3_DELIVERY_SWEEP_AFTER_SECONDS)
    # A lease this old belongs to a worker that died mid-delivery: give it back.
    Message.objects.filter(
        state=Message.State.DELIVERING,
        leased_at__lt=now - timedelta(seconds=settings.A3_DELIVERY_SWEEP_AFTER_SECONDS * 5),
    ).update(state=Message.State.RECEIVED, lease_token="")
    ids = list(
        Message.objects.filter(state=Message.State.RECEIVED, received_at__lt=waited)
        .order_by("received_at")
        .values_list("id", flat=True)[:limit]
    )
    for message_id in ids:
        message_deliver_task.delay(message_id=message_id)
    if ids:
        logger.info("re-enqueued %d stalled message(s)", len(ids))
    return len(ids)


def blobs_sweep_orphans(*, grace_seconds: int = 3600) -> int:
    """Delete blobs that no message references and that are older than the grace period
    (a crash between writing the blob and committing its row leaves such orphans)."""
    store = blob_store()
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    removed = 0
    batch: list[str] = []

    def flush() -> int:
        referenced = set(Message.objects.filter(blob_sha256__in=batch).values_list("blob_sha256", flat=True))
        count = sum(1 for sha256 in batch if sha256 not in referenced and store.delete(sha256))
        batch.clear()
        return count

    for sha256 in store.iter_hashes(older_than=cutoff):
        batch.append(sha256)
        if len(batch) >= 500:
            removed += flush()
    if batch:
        removed += flush()
    if removed:
        logger.info("removed %d orphaned blob(s)", removed)
    return removed
