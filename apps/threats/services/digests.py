"""Quarantine digests: a periodic mail to each mailbox listing what was held for it, with
one-click links to release, delete or allow the sender of each item.

A link carries a random token signed with Django's TimestampSigner: a tampered or
expired link is refused before the database is asked. Only a SHA-256 of the token is
stored (DigestLink.token_hash), so a database dump holds no usable link. A link works
once: using it is a conditional UPDATE that only one request can win. Opening a link
(GET) never changes anything, because mail scanners and link previews fetch every URL
in a message; the action happens on the confirmation page's POST.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core import signing
from django.db import transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from apps.core.exceptions import ApplicationError
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Mailbox
from apps.threats.models import (
    DigestFrequency,
    DigestLink,
    QuarantineItem,
    QuarantinePreference,
    QuarantineRecipient,
)
from apps.threats.policy import policy_for_domain
from apps.threats.services.quarantine import (
    USER_RELEASABLE,
    allow_sender_for,
    quarantine_delete,
    quarantine_release,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DigestLinkGone",
    "DigestLinkInvalid",
    "DigestLinkView",
    "digest_frequency",
    "digest_link_resolve",
    "digest_link_use",
    "digests_send",
]

SIGNING_SALT = "threats.digest"
# Items listed in one digest; the rest wait for the next one (the quarantine page shows all).
DIGEST_MAX_ITEMS = 100
_PERIODS = {DigestFrequency.DAILY: timedelta(hours=24), DigestFrequency.WEEKLY: timedelta(days=7)}


class DigestLinkInvalid(ApplicationError):
    """The link was altered or is not one of ours (HTTP 400)."""

    code = "digest_link_invalid"
    status_code = 400


class DigestLinkGone(ApplicationError):
    """The link was ours but no longer works: expired, used, or its message decided (410)."""

    code = "digest_link_gone"
    status_code = 410


@dataclass(frozen=True)
class DigestLinkView:
    """What the confirmation page shows about a link."""

    link: DigestLink
    recipient: QuarantineRecipient
    item: QuarantineItem
    mailbox: Mailbox


# --- Tokens ----------------------------------------------------------------------------


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SIGNING_SALT)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _link_create(*, recipient: QuarantineRecipient, action: str, now: datetime) -> str:
    """A new single-use link for `action` on `recipient`; returns its absolute URL."""
    token = secrets.token_urlsafe(32)
    DigestLink.objects.create(
        token_hash=_token_hash(token),
        recipient=recipient,
        action=action,
        created_at=now,
        expires_at=now + timedelta(hours=settings.A3_DIGEST_LINK_HOURS),
    )
    path = reverse("threats:digest-action", kwargs={"token": _signer().sign(token)})
    # Like the password reset mail: built on A3_PUBLIC_URL, never on a request's Host.
    return f"{settings.A3_PUBLIC_URL}{path}"


def _unsign(signed: str) -> str:
    try:
        return _signer().unsign(signed, max_age=timedelta(hours=settings.A3_DIGEST_LINK_HOURS))
    except signing.SignatureExpired as exc:
        raise DigestLinkGone(
            "This link has expired. Open the quarantine page to review the message."
        ) from exc
    except signing.BadSignature as exc:
        raise DigestLinkInvalid("This link is not valid. Copy the whole link from the digest mail.") from exc


def digest_link_resolve(*, token: str, now: datetime | None = None) -> DigestLinkView:
    """The link behind a signed token, for the confirmation page. Changes nothing.
    Raises DigestLinkInvalid (tampered) or DigestLinkGone (expired, used, or the message
    is no longer held for this mailbox)."""
    now = now or timezone.now()
    raw = _unsign(token)
    link = (
        DigestLink.objects.select_related("recipient__item", "recipient__mailbox__owner")
        .filter(token_hash=_token_hash(raw))
        .first()
    )
    if link is None:
        # Signed by us, so it existed: its message has gone since (deleted with its rows).
        raise DigestLinkGone("This link no longer works: the message is no longer in the quarantine.")
    if link.used_at is not None:
        raise DigestLinkGone("This link has already been used. Each link in a digest works once.")
    if link.expires_at <= now:
        raise DigestLinkGone("This link has expired. Open the quarantine page to review the message.")
    recipient = link.recipient
    if not (recipient.mailbox.is_active and recipient.mailbox.owner.is_active):
        raise DigestLinkGone("This mailbox is disabled; ask your administrator.")
    if recipient.state != QuarantineRecipient.State.HELD:
        raise DigestLinkGone(
            f"This message was already {recipient.get_state_display().lower()}; nothing left to do."
        )
    return DigestLinkView(link=link, recipient=recipient, item=recipient.item, mailbox=recipient.mailbox)


def digest_link_use(*, token: str, request: HttpRequest | None = None) -> DigestLinkView:
    """Perform a link's action as the mailbox's owner (the signed token is the credential),
    exactly once. Raises DigestLinkInvalid or DigestLinkGone as digest_link_resolve does,
    also when another request used the link first; the quarantine services' own refusals
    come back as DigestLinkGone."""
    now = timezone.now()
    view = digest_link_resolve(token=token, now=now)
    owner = view.mailbox.owner
    with transaction.atomic():
        # The claim and the action commit together: if the action is refused the link
        # stays unused, and of two concurrent requests only one gets past this UPDATE.
        claimed = DigestLink.objects.filter(pk=view.link.pk, used_at__isnull=True, expires_at__gt=now).update(
            used_at=now
        )
        if claimed != 1:
            raise DigestLinkGone("This link has already been used. Each link in a digest works once.")
        try:
            _perform(view, owner=owner, request=request)
        except ApplicationError as exc:
            raise DigestLinkGone(exc.message) from exc
    return view


def _perform(view: DigestLinkView, *, owner, request: HttpRequest | None) -> None:
    action = view.link.action
    mailbox_ids = [view.mailbox.pk]
    if action == DigestLink.Action.RELEASE:
        # A release link is only ever made for these categories; checked again here so
        # an owner who is also an administrator gains nothing through a digest.
        if view.item.category not in USER_RELEASABLE:
            raise ApplicationError("This message can only be released by an administrator.")
        quarantine_release(actor=owner, item=view.item, mailbox_ids=mailbox_ids, request=request)
    elif action == DigestLink.Action.DELETE:
        quarantine_delete(actor=owner, item=view.item, mailbox_ids=mailbox_ids, request=request)
    elif action == DigestLink.Action.ALLOW:
        if not view.item.sender:
            raise ApplicationError("This message has no sender to allow.")
        allow_sender_for(actor=owner, mailbox=view.mailbox, sender=view.item.sender)
    else:  # a row written by something else than this module
        raise ApplicationError("Unknown link action.")


# --- Sending ---------------------------------------------------------------------------


def digest_frequency(mailbox: Mailbox) -> str:
    """The mailbox's digest frequency: its own preference, else its domain's default."""
    preference = QuarantinePreference.objects.filter(mailbox=mailbox).values_list("digest", flat=True).first()
    return preference or policy_for_domain(mailbox.domain_id).digest_default


def _is_due(frequency: str, last: datetime | None, now: datetime) -> bool:
    period = _PERIODS.get(frequency)
    if period is None:  # never
        return False
    return last is None or now - last >= period


def _pending_rows(mailbox_id: int):
    return (
        QuarantineRecipient.objects.filter(
            mailbox_id=mailbox_id,
            state=QuarantineRecipient.State.HELD,
            digested_at__isnull=True,
            item__state=QuarantineItem.State.HELD,
        )
        .select_related("item")
        .order_by("item__created_at", "id")
    )


def digests_send(*, now: datetime | None = None) -> int:
    """Send the digests that are due: one mail per mailbox with held items not yet listed
    in a digest, at the mailbox's frequency. Listed rows get `digested_at`, the mailbox
    preference `last_digest_at`. Safe to run twice or concurrently (a mailbox's
    preference row is locked while its digest is built). Returns how many were sent."""
    now = now or timezone.now()
    mailbox_ids = (
        QuarantineRecipient.objects.filter(
            state=QuarantineRecipient.State.HELD,
            digested_at__isnull=True,
            item__state=QuarantineItem.State.HELD,
            mailbox__is_active=True,
            mailbox__domain__is_active=True,
        )
        .values_list("mailbox_id", flat=True)
        .distinct()
        .order_by("mailbox_id")
    )
    # Links past their time are refused by their signature already; their rows can go.
    DigestLink.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()
    sent = 0
    for mailbox_id in list(mailbox_ids):
        try:
            sent += _digest_send_one(mailbox_id=mailbox_id, now=now)
        except SoftTimeLimitExceeded:
            raise  # out of time: the rest waits for the next run
        except Exception:  # one mailbox's failure must not stop the others' digests
            logger.exception("quarantine digest for mailbox %s failed", mailbox_id)
    if sent:
        logger.info("sent %d quarantine digest(s)", sent)
    return sent


@transaction.atomic
def _digest_send_one(*, mailbox_id: int, now: datetime) -> int:
    mailbox = Mailbox.objects.select_related("domain").get(pk=mailbox_id)
    QuarantinePreference.objects.get_or_create(mailbox=mailbox)
    preference = QuarantinePreference.objects.select_for_update().get(mailbox=mailbox)
    if not _is_due(
        preference.digest or policy_for_domain(mailbox.domain_id).digest_default,
        preference.last_digest_at,
        now,
    ):
        return 0
    rows = list(_pending_rows(mailbox_id)[:DIGEST_MAX_ITEMS])
    if not rows:
        return 0
    waiting = _pending_rows(mailbox_id).count() - len(rows)
    entries = [_entry(row, now=now) for row in rows]
    subject = (
        f"Quarantine digest: {len(rows)} message{'s' if len(rows) != 1 else ''} held for {mailbox.address}"
    )
    context = {
        "mailbox": mailbox,
        "entries": entries,
        "waiting": waiting,
        "hours": settings.A3_DIGEST_LINK_HOURS,
        "public_url": settings.A3_PUBLIC_URL,
    }
    text = render_to_string("threats/digest_mail.txt", context)
    html = render_to_string("threats/digest_mail.html", context)
    _mail_send(to=mailbox.address, subject=subject, text=text, html=html)
    QuarantineRecipient.objects.filter(pk__in=[row.pk for row in rows]).update(digested_at=now)
    preference.last_digest_at = now
    preference.save(update_fields=["last_digest_at"])
    return 1


def _entry(row: QuarantineRecipient, *, now: datetime) -> dict[str, object]:
    item = row.item
    links = {}
    if item.category in USER_RELEASABLE:
        links["release"] = _link_create(recipient=row, action=DigestLink.Action.RELEASE, now=now)
    links["delete"] = _link_create(recipient=row, action=DigestLink.Action.DELETE, now=now)
    if item.sender:
        links["allow"] = _link_create(recipient=row, action=DigestLink.Action.ALLOW, now=now)
    return {
        "sender": _one_line(item.from_header or item.sender or "<>", 200),
        "subject": _one_line(item.subject or "(no subject)", 200),
        "category": item.get_category_display(),
        "reason": _one_line(item.reason, 300),
        "received": timezone.localtime(item.created_at),
        "links": links,
        "releasable": item.category in USER_RELEASABLE,
    }


def _one_line(value: str, limit: int) -> str:
    """Header text from a stranger: one line, bounded, no control characters."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in value)
    return " ".join(cleaned.split())[:limit]


def _mail_send(*, to: str, subject: str, text: str, html: str) -> None:
    """Deliver the digest into the local mailbox `to`, as platform mail: null envelope
    sender, built by the relay's system mail builder (its From, Date, Message-ID and
    Auto-Submitted headers), with an HTML alternative. No remote content: no images, no
    external styles, only links back to this server."""
    from apps.relay.services.system_mail import system_mail_build

    # system_mail_send takes one text part; the digest needs an HTML alternative too, so
    # the message is built by the same builder and filed here (a digest only ever goes
    # to a local mailbox, the local branch of system_mail_send).
    base = system_mail_build(to=to, subject=subject, text=text)
    # The builder's own choice: SMTPUTF8 headers only for an internationalised address.
    policy = email.policy.SMTP if base.isascii() else email.policy.SMTPUTF8
    message = email.message_from_bytes(base, policy=policy)
    message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    raw = message.as_bytes()
    verdict = mail_services.recipient_check(address=to, size=len(raw))
    if not verdict.accepted:
        raise ApplicationError(f"digest for {to} not delivered: {verdict.status.value}")
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(), mail_from="", recipients=(verdict.address,), raw=raw
    )
    mail_services.messages_accept(incoming=[incoming])
