"""Mail the platform itself sends to people (password reset links and the like): built
here as a complete RFC 5322 message and handed to the same routing as delivery reports,
into a local mailbox or through the outbound queue."""

from __future__ import annotations

import email.policy
import email.utils
import logging
from email.message import EmailMessage

from django.conf import settings
from django.utils import timezone

from apps.core.addresses import parse_address
from apps.core.db import durable_atomic
from apps.mailboxes import services as mail_services
from apps.mailboxes.services import IncomingMessage
from apps.relay.models import QueueItem
from apps.relay.services.queue import queue_items_create

__all__ = ["system_mail_build", "system_mail_send"]

logger = logging.getLogger(__name__)

SENDER_NAME = "A3Mailer"


def system_mail_sender() -> str:
    """The From address of platform mail: nobody reads replies to it."""
    return f"no-reply@{settings.A3_HOSTNAME}"


def system_mail_build(*, to: str, subject: str, text: str) -> bytes:
    """The RFC 5322 bytes of a plain-text UTF-8 message from the platform to `to`.

    Raises AddressError for an invalid address. Header values are checked by the email
    package: a line break in the subject raises ValueError instead of adding headers."""
    recipient = parse_address(to, field="to").value
    sender = system_mail_sender()
    # SMTPUTF8 only where the address needs it; everything else stays plain 7-bit headers
    # (RFC 2047 encoded words for a non-ASCII subject).
    policy = email.policy.SMTP if recipient.isascii() else email.policy.SMTPUTF8
    message = EmailMessage(policy=policy)
    message["From"] = email.utils.formataddr((SENDER_NAME, sender))
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(timezone.now())
    message["Message-ID"] = email.utils.make_msgid(domain=settings.A3_HOSTNAME)
    # RFC 3834: machine-generated; well-behaved auto-responders stay quiet.
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps non-ASCII text 7-bit clean, so no server needs 8BITMIME for it.
    message.set_content(text, charset="utf-8", cte=None if text.isascii() else "quoted-printable")
    return message.as_bytes()


def system_mail_send(*, to: str, subject: str, text: str) -> None:
    """Send a platform message to `to`: filed into the local mailbox when the address is
    ours, else queued for the remote server. Durable when it returns (in the caller's
    transaction when there is one); delivery runs after commit.

    The envelope sender is null (RFC 5321 §4.5.5), as for delivery reports: a failure to
    deliver a password reset needs no bounce, and none can loop back to us. An address of
    a local domain that takes no mail (unknown, disabled, full) is logged and skipped:
    queueing it would only send it back to ourselves. Raises AddressError for an invalid
    address."""
    raw = system_mail_build(to=to, subject=subject, text=text)
    verdict = mail_services.recipient_check(address=to, size=len(raw))
    if verdict.accepted:
        recipients: tuple[str, ...] = (verdict.address,)
    elif verdict.status is mail_services.RecipientStatus.NOT_LOCAL:
        recipients = ()
    else:
        logger.warning("system mail to %s not sent: %s", verdict.address, verdict.status.value)
        return
    incoming = IncomingMessage(
        queue_id=mail_services.new_queue_id(), mail_from="", recipients=recipients, raw=raw
    )
    with durable_atomic():
        (message,) = mail_services.messages_accept(incoming=[incoming])
        if not recipients:
            # Kind BOUNCE is the queue's kind for mail we generate with a null sender: never
            # DKIM-signed as a user's mail, never counted against a mailbox's limits, and
            # never answered with a delivery report.
            queue_items_create(
                message=message,
                sender="",
                recipients=[(verdict.address, "")],
                report_to="",
                kind=QueueItem.Kind.BOUNCE,
            )
