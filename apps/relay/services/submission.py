"""Authenticated submission: who may log in, whom they may send as, how much they may send,
and accepting their mail (local recipients delivered, remote ones queued)."""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.core.addresses import AddressError, parse_address
from apps.core.audit import audit
from apps.core.db import durable_atomic
from apps.core.exceptions import ApplicationError, NotFoundError
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Alias, AppPassword, Domain, Folder, Mailbox, Message, MessageRecipient
from apps.mailboxes.services import IncomingMessage
from apps.relay.models import QueueItem, QueueRecipient
from apps.relay.services.queue import queue_items_create

__all__ = [
    "NewAppPassword",
    "RateLimited",
    "Sender",
    "SubmissionRefused",
    "app_password_create",
    "app_password_revoke",
    "header_from_problem",
    "rate_limit_problem",
    "sender_allowed",
    "sender_refresh",
    "sending_suspended_problem",
    "submission_accept",
    "submission_authenticate",
]

# Compared against when the login names no mailbox, so a failure takes as long either way
# (the response must not tell whether the mailbox exists).
_DUMMY_HASH = make_password("a3mailer-no-such-mailbox")


@dataclass(frozen=True)
class Sender:
    """An authenticated submission session's identity."""

    mailbox_id: int
    address: str
    domain_id: int
    allowed: frozenset[str]  # addresses it may use as MAIL FROM and From:
    save_sent_copy: bool


def _app_password_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _sender_for(mailbox: Mailbox) -> Sender:
    aliases = Alias.objects.filter(send_as=mailbox, is_active=True, domain__is_active=True).exclude(
        local_part=""
    )
    return Sender(
        mailbox_id=mailbox.pk,
        address=mailbox.address,
        domain_id=mailbox.domain_id,
        allowed=frozenset([mailbox.address, *aliases.values_list("address", flat=True)]),
        save_sent_copy=mailbox.save_sent_copy,
    )


def submission_authenticate(*, username: str, password: str, ip: str | None = None) -> Sender | None:
    """Check SMTP AUTH credentials: the mailbox address with its password or one of its
    app passwords. None for any failure, for whatever reason (unknown, disabled, wrong)."""
    try:
        address = parse_address(username).value
    except AddressError:
        address = ""
    mailbox = (
        Mailbox.objects.filter(address=address, is_active=True, domain__is_active=True).first()
        if address
        else None
    )
    if mailbox is None:
        check_password(password, _DUMMY_HASH)
        return None
    if check_password(password, mailbox.password):
        _login_observed(mailbox, ip)
        return _sender_for(mailbox)
    digest = _app_password_hash(password)
    for app_password in AppPassword.objects.filter(mailbox=mailbox, revoked_at__isnull=True):
        if hmac.compare_digest(app_password.secret_hash, digest):
            AppPassword.objects.filter(pk=app_password.pk).update(
                last_used_at=timezone.now(), last_used_ip=ip
            )
            _login_observed(mailbox, ip)
            return _sender_for(mailbox)
    return None


def _login_observed(mailbox: Mailbox, ip: str | None) -> None:
    # The sign-in hooks (A3_LOGIN_OBSERVERS: threats remembers the networks a user signs
    # in from) hear of SMTP AUTH as of web sign-ins: stolen mailbox passwords are mostly
    # used here.
    for path in settings.A3_LOGIN_OBSERVERS:
        import_string(path)(user_id=mailbox.owner_id, ip=ip, channel="smtp")


def sender_refresh(*, sender: Sender) -> Sender | None:
    """The session's identity as it stands now (an admin may have disabled the mailbox or
    changed its send-as aliases since AUTH); None when it may no longer send."""
    mailbox = Mailbox.objects.filter(pk=sender.mailbox_id, is_active=True, domain__is_active=True).first()
    return _sender_for(mailbox) if mailbox is not None else None


def sender_allowed(sender: Sender, address: str) -> bool:
    try:
        return parse_address(address).value in sender.allowed
    except AddressError:
        return False


def header_from_problem(sender: Sender, raw: bytes) -> str | None:
    """Why the message's From: (or Sender:) header is unacceptable for this sender, or None."""
    end = raw.find(b"\r\n\r\n")
    # Decoded as UTF-8 first: internationalised addresses (RFC 6532) must compare as text.
    head = (raw if end < 0 else raw[: end + 2]).decode("utf-8", "replace")
    headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(head)
    values = headers.get_all("From") or []
    if not values:
        return "550 5.6.0 Message has no From header (RFC 5322 3.6)"
    if len(values) > 1:
        return "550 5.6.0 Message has more than one From header"
    addresses = [address for _, address in email.utils.getaddresses([str(values[0])]) if address]
    if not addresses:
        return "550 5.6.0 The From header holds no address"
    for address in addresses:
        if not sender_allowed(sender, address):
            return f"553 5.7.1 You may not send as {address[:200]} (From header)"
    for _, address in email.utils.getaddresses([str(v) for v in headers.get_all("Sender") or []]):
        if address and not sender_allowed(sender, address):
            return f"553 5.7.1 You may not send as {address[:200]} (Sender header)"
    return None


# --- Rate limits -------------------------------------------------------------------------


def sending_suspended_problem(*, sender: Sender) -> str | None:
    """The reply refusing a mailbox whose sending is suspended, or None. The checks are
    the A3_SUBMISSION_SENDER_CHECKS dotted paths (threats' suspensions; relay never
    imports the apps above it); each is one cheap query, as it runs at MAIL, RCPT and
    when the message is stored."""
    for path in settings.A3_SUBMISSION_SENDER_CHECKS:
        problem = import_string(path)(mailbox_id=sender.mailbox_id)
        if problem:
            return problem
    return None


def _sent_last_hour(scope: Q) -> tuple[int, int]:
    since = timezone.now() - timedelta(hours=1)
    messages = Message.objects.filter(scope, received_at__gte=since)
    local = MessageRecipient.objects.filter(message__in=messages, folder="").count()
    remote = QueueRecipient.objects.filter(
        item__message__in=messages, item__kind=QueueItem.Kind.SUBMISSION
    ).count()
    return messages.count(), local + remote


def rate_limit_problem(*, sender: Sender, recipients: int = 0) -> str | None:
    """The 451 reply when this sender, or its domain, is over its hourly limits with
    one more message to `recipients` more recipients; None while within them. Going
    over raises an alert once an hour per mailbox or domain. A mailbox whose sending is
    suspended (behaviour analysis, apps.threats) gets that check's 550 instead."""
    problem = sending_suspended_problem(sender=sender)
    if problem:
        return problem
    mailbox = Mailbox.objects.select_related("domain").get(pk=sender.mailbox_id)
    checks = [
        (
            "mailbox",
            mailbox.address,
            Q(submitted_by_id=mailbox.pk),
            mailbox.max_messages_per_hour or settings.A3_RATE_MAILBOX_MESSAGES_PER_HOUR,
            mailbox.max_recipients_per_hour or settings.A3_RATE_MAILBOX_RECIPIENTS_PER_HOUR,
        ),
        (
            "domain",
            mailbox.domain.name,
            Q(submitted_by__domain_id=mailbox.domain_id),
            mailbox.domain.max_messages_per_hour or settings.A3_RATE_DOMAIN_MESSAGES_PER_HOUR,
            mailbox.domain.max_recipients_per_hour or settings.A3_RATE_DOMAIN_RECIPIENTS_PER_HOUR,
        ),
    ]
    for scope_name, label, scope, max_messages, max_recipients in checks:
        messages, recipient_count = _sent_last_hour(scope)
        if messages + 1 > max_messages:
            what = f"{max_messages} messages per hour"
        elif recipients and recipient_count + recipients > max_recipients:
            what = f"{max_recipients} recipients per hour"
        else:
            continue
        _rate_alert(scope_name, label, what, mailbox.domain_id)
        return f"451 4.7.1 Sending limit of {what} reached for {label}; try again later"
    return None


def _rate_alert(scope: str, label: str, what: str, domain_id: int) -> None:
    from apps.alerts.models import Alert
    from apps.alerts.services import emit

    recent = Alert.objects.filter(
        kind="relay.rate_limited", created_at__gte=timezone.now() - timedelta(hours=1), data__subject=label
    ).exists()
    if not recent:
        emit(
            "relay.rate_limited",
            "warning",
            f"The {scope} {label} reached its sending limit of {what}.",
            domain_id=domain_id,
            scope=scope,
            subject=label,
        )


# --- Accepting ---------------------------------------------------------------------------


def _with_required_headers(raw: bytes, queue_id: str) -> bytes:
    """Add the Message-ID and Date a submission server may supply (RFC 6409 §8)."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    extra = b""
    if headers.get("Message-ID") is None:
        extra += f"Message-ID: <{queue_id}.{secrets.token_hex(6)}@{settings.A3_HOSTNAME}>\r\n".encode()
    if headers.get("Date") is None:
        extra += f"Date: {email.utils.format_datetime(timezone.now())}\r\n".encode()
    return extra + raw


class SubmissionRefused(Exception):
    """The message is not taken; `reply` is the SMTP reply that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class RateLimited(SubmissionRefused):
    """Over a sending limit when the message was about to be stored (parallel sessions
    can pass the checks at MAIL and RCPT together); the reply is the 451 to send (or the
    550 of a sender suspended meanwhile, see sending_suspended_problem)."""


def submission_accept(
    *, sender: Sender, mail_from: str, recipients: list[str], raw: bytes, trace: bytes, queue_id: str
) -> Message:
    """Make a submitted message durable: local recipients are delivered like inbound
    mail, remote ones queued per domain, and a copy goes to the sender's Sent folder.
    `trace` is the Received header to prepend. Durable when it returns (SMTP 250)."""
    local: list[str] = []
    remote: list[str] = []
    for address in recipients:
        verdict = mail_services.recipient_check(address=address)
        (remote if verdict.status is mail_services.RecipientStatus.NOT_LOCAL else local).append(
            verdict.address
        )
    # Content checks of other apps (the malware scan), by dotted path: each returns the
    # SMTP reply that refuses the message, or None. Before anything is stored.
    for path in settings.A3_SUBMISSION_CONTENT_CHECKS:
        problem = import_string(path)(raw=raw, mailbox_id=sender.mailbox_id, domain_id=sender.domain_id)
        if problem:
            raise SubmissionRefused(problem)
    stored = trace + _with_required_headers(raw, queue_id)
    incoming = IncomingMessage(
        queue_id=queue_id,
        mail_from=mail_from,
        recipients=tuple(local),
        raw=stored,
        blob_sha256=mail_services.message_blob_store(raw=stored),
        submitted_by_id=sender.mailbox_id,
        copies=((sender.address, Folder.SpecialUse.SENT),) if sender.save_sent_copy else (),
    )
    with durable_atomic():
        # Submissions of one domain are counted one at a time, so concurrent sessions
        # cannot all slip under the limit before any of them is stored.
        list(Domain.objects.select_for_update().filter(pk=sender.domain_id).values_list("pk", flat=True))
        problem = rate_limit_problem(sender=sender, recipients=len(recipients))
        if problem:
            raise RateLimited(problem)
        (message,) = mail_services.messages_accept(incoming=[incoming])
        if remote:
            queue_items_create(message=message, sender=mail_from, recipients=[(a, "") for a in remote])
        # Policy checks of other apps (DLP) by dotted path, so relay never imports them;
        # inside the transaction, so a hold is in place before delivery can start.
        for path in settings.A3_SUBMISSION_CHECKS:
            import_string(path)(
                message=message, raw=stored, sender_domain_id=sender.domain_id, remote_recipients=remote
            )
    return message


# --- App passwords -----------------------------------------------------------------------


@dataclass(frozen=True)
class NewAppPassword:
    app_password: AppPassword
    secret: str  # shown once


def app_password_create(*, actor, mailbox: Mailbox, name: str) -> NewAppPassword:
    """A new per-device password for `mailbox`, shown once. The mailbox's owner and its
    administrators may create one."""
    if not Mailbox.objects.visible_to(actor).filter(pk=mailbox.pk).exists():
        raise NotFoundError("No such mailbox.")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ApplicationError(
            "Give the app password a name (up to 100 characters).", fields={"name": ["Required."]}
        )
    # Four groups of four lowercase letters: easy to type on a phone, ~75 bits.
    alphabet = "abcdefghijkmnopqrstuvwxyz"
    secret = "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))
    app_password = AppPassword.objects.create(
        mailbox=mailbox, name=name, secret_hash=_app_password_hash(secret)
    )
    audit(
        "app_password.create",
        actor=actor,
        target=app_password,
        domain_id=mailbox.domain_id,
        mailbox=mailbox.pk,
    )
    return NewAppPassword(app_password=app_password, secret=secret)


def app_password_revoke(*, actor, app_password: AppPassword) -> AppPassword:
    if not Mailbox.objects.visible_to(actor).filter(pk=app_password.mailbox_id).exists():
        raise NotFoundError("No such app password.")
    if app_password.revoked_at is None:
        app_password.revoked_at = timezone.now()
        app_password.save(update_fields=["revoked_at"])
        audit(
            "app_password.revoke", actor=actor, target=app_password, domain_id=app_password.mailbox.domain_id
        )
    return app_password
