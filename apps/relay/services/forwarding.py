"""Forwarding: copies of inbound mail that local aliases send to external addresses, and
bounces coming back to our SRS addresses."""

from __future__ import annotations

from apps.core.db import durable_atomic
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Message
from apps.mailboxes.services import DeliveryContext, IncomingMessage
from apps.relay.models import QueueItem
from apps.relay.services.queue import queue_items_create
from apps.relay.services.routing import srs_forward

__all__ = ["queue_forwards", "srs_bounce_accept"]


def queue_forwards(context: DeliveryContext) -> None:
    """Delivery stage: queue the external addresses aliases forward to, with the sender
    rewritten by SRS so SPF passes at the destination, in the transaction that files
    the message (a redelivered task files and forwards nothing twice)."""
    if context.forwards:
        context.on_commit.append(_queue_forwards)


def _queue_forwards(context: DeliveryContext) -> None:
    message = context.message
    # Mail our own user submitted keeps its sender: it really is from our domain (and is
    # signed as such). Anything received from outside is rewritten.
    sender = message.mail_from if message.submitted_by_id else srs_forward(message.mail_from)
    queue_items_create(
        message=message,
        sender=sender,
        recipients=sorted(context.forwards.items()),
        report_to=message.mail_from,
        kind=QueueItem.Kind.FORWARD,
    )


def srs_bounce_accept(*, incoming: IncomingMessage, srs_recipients: dict[str, str]) -> Message:
    """Accept a message for local recipients and for SRS addresses of ours (bounces of
    mail we forwarded): the latter are relayed to the original senders they encode, with
    a null sender so they can never bounce again. Durable before it returns."""
    blob = incoming.blob_sha256 or mail_services.message_blob_store(raw=incoming.raw)
    stored = IncomingMessage(**{**incoming.__dict__, "blob_sha256": blob})
    with durable_atomic():
        (message,) = mail_services.messages_accept(incoming=[stored])
        queue_items_create(
            message=message,
            sender="",
            recipients=[(original, srs) for srs, original in srs_recipients.items()],
            report_to="",
            kind=QueueItem.Kind.BOUNCE,
        )
    return message
