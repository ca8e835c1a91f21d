"""Behaviour analysis of sending accounts: outbound volume per mailbox and hour against
the mailbox's own baseline, suspension of submission on a spike, and sign-in anomalies.

A stolen mailbox password is mostly used to send spam through us, which gets the server's
addresses block-listed for everyone. So the analysis watches what an account sends:
- every accepted submission adds to the mailbox's SendingActivity row of the hour
  (messages, recipients, recipients it never wrote to before, and bounces coming back);
- after each one, `behaviour_check` compares the hour with the previous seven days. A
  spike suspends submission (SubmissionSuspension) until an administrator restores it.
Thresholds never go below the A3_BEHAVIOUR_* floors, so a new account without history is
not suspended for its first mails.

Sign-ins: `auth_anomaly_check` (every few minutes) raises an alert when one account fails
to sign in from many addresses at once (a distributed guessing attack), and the networks
a user signs in from are remembered, so that a spike shortly after a sign-in from a
never-seen network raises a critical alert.

The relay and accounts apps sit below this one: they call in through dotted paths in
settings (A3_SUBMISSION_CHECKS, A3_SUBMISSION_SENDER_CHECKS, A3_BOUNCE_OBSERVERS,
A3_LOGIN_OBSERVERS), never by importing it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone

from apps.core.audit import audit
from apps.core.exceptions import ConflictError, NotFoundError
from apps.mailboxes.models import Mailbox, Message, MessageRecipient
from apps.threats import selectors
from apps.threats.models import KnownRecipient, LoginNetwork, SendingActivity, SubmissionSuspension

logger = logging.getLogger(__name__)

__all__ = [
    "SUSPENDED_REPLY",
    "auth_anomaly_check",
    "behaviour_check",
    "bounces_observe",
    "login_network",
    "login_observe",
    "recipient_hash",
    "sending_record",
    "submission_observe",
    "submission_suspended_problem",
    "suspension_create",
    "suspension_lift",
]

SUSPENDED_REPLY = "550 5.7.1 Sending from this account is suspended; contact your administrator"
# Sign-in failures are grouped per account over this window (auth_anomaly_check).
AUTH_WINDOW = timedelta(minutes=15)
# A sending spike this soon after a sign-in from a new network is a likely takeover.
NEW_NETWORK_WINDOW = timedelta(hours=1)
BASELINE_DAYS = 7
# The path django-axes records SMTP AUTH failures under (apps.accounts.lockout's channel
# paths): web and API failures are counted from AuthEvent instead, which also keeps the
# ones made during a lockout.
SMTP_AUTH_PATH = "/smtp/auth"


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# --- Recording ---------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _recipient_key(secret_key: str) -> bytes:
    # A key of its own, derived like apps/core/secrets.py's: the hashes are useless without
    # the secret key, and the secret key is never used directly for two purposes.
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"a3mailer-threats", info=b"known-recipients"
    ).derive(secret_key.encode())


def recipient_hash(address: str) -> str:
    """The keyed hash a recipient address is remembered by (HMAC-SHA256, hex)."""
    key = _recipient_key(settings.SECRET_KEY)
    return hmac.new(key, address.strip().lower().encode(), hashlib.sha256).hexdigest()


def sending_record(*, mailbox_id: int, recipients: list[str], now: datetime | None = None) -> None:
    """Count one accepted message to `recipients` in the mailbox's hour, and remember the
    recipients (as keyed hashes) for "new recipients". Joins the caller's transaction."""
    now = now or timezone.now()
    hashes = {recipient_hash(address) for address in recipients}
    known = set(
        KnownRecipient.objects.filter(mailbox_id=mailbox_id, address_hash__in=hashes).values_list(
            "address_hash", flat=True
        )
    )
    new = hashes - known
    if new:
        KnownRecipient.objects.bulk_create(
            [
                KnownRecipient(mailbox_id=mailbox_id, address_hash=value, first_seen=now)
                for value in sorted(new)
            ],
            ignore_conflicts=True,
        )
    activity, _ = SendingActivity.objects.get_or_create(mailbox_id=mailbox_id, hour=_hour(now))
    SendingActivity.objects.filter(pk=activity.pk).update(
        messages=F("messages") + 1,
        recipients=F("recipients") + len(recipients),
        new_recipients=F("new_recipients") + len(new),
    )


def submission_observe(
    *, message: Message, raw: bytes, sender_domain_id: int, remote_recipients: list[str]
) -> None:
    """A3_SUBMISSION_CHECKS hook, inside submission_accept's transaction: record the
    message, then check the mailbox's behaviour once the message is committed."""
    mailbox_id = message.submitted_by_id
    if mailbox_id is None:
        return
    local = MessageRecipient.objects.filter(message=message, folder="").values_list("address", flat=True)
    sending_record(mailbox_id=mailbox_id, recipients=[*local, *remote_recipients])
    # After commit and robust: the sender already has its 250 coming, and a failing
    # check must never turn an accepted message into an error the client would retry.
    transaction.on_commit(lambda: behaviour_check(mailbox_id=mailbox_id), robust=True)


def bounces_observe(*, queue_recipient_ids: list[int]) -> None:
    """A3_BOUNCE_OBSERVERS hook: remote delivery reports turned these queue recipients
    into bounces; count them in their sending mailboxes' current hour, then check."""
    from apps.relay.models import QueueRecipient

    senders = Counter(
        QueueRecipient.objects.filter(
            pk__in=queue_recipient_ids, item__message__submitted_by__isnull=False
        ).values_list("item__message__submitted_by_id", flat=True)
    )
    hour = _hour(timezone.now())
    for mailbox_id, count in senders.items():
        activity, _ = SendingActivity.objects.get_or_create(mailbox_id=mailbox_id, hour=hour)
        SendingActivity.objects.filter(pk=activity.pk).update(bounces=F("bounces") + count)
        transaction.on_commit(
            lambda mailbox_id=mailbox_id: behaviour_check(mailbox_id=mailbox_id), robust=True
        )


# --- Spike detection -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Counts:
    messages: int = 0
    recipients: int = 0
    new_recipients: int = 0
    bounces: int = 0

    def __sub__(self, other: _Counts) -> _Counts:
        return _Counts(
            max(0, self.messages - other.messages),
            max(0, self.recipients - other.recipients),
            max(0, self.new_recipients - other.new_recipients),
            max(0, self.bounces - other.bounces),
        )

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.messages + other.messages,
            self.recipients + other.recipients,
            self.new_recipients + other.new_recipients,
            self.bounces + other.bounces,
        )


def _counts(row: SendingActivity) -> _Counts:
    return _Counts(row.messages, row.recipients, row.new_recipients, row.bounces)


def _lift_snapshot(mailbox_id: int) -> tuple[datetime, _Counts] | None:
    """The hour and its counts when the mailbox's last suspension was lifted, if any."""
    lifted = (
        SubmissionSuspension.objects.filter(mailbox_id=mailbox_id, lifted_at__isnull=False)
        .order_by("-lifted_at")
        .values_list("details", flat=True)
        .first()
    )
    at_lift = (lifted or {}).get("at_lift") or {}
    try:
        hour = datetime.fromisoformat(at_lift["hour"])
        counts = _Counts(*(int(at_lift.get(name, 0)) for name in (f.name for f in fields(_Counts))))
    except (KeyError, TypeError, ValueError):
        return None
    return hour, counts


def _since_lift(hour: datetime, counts: _Counts, snapshot: tuple[datetime, _Counts] | None) -> _Counts:
    """What of an hour's counts came after the last lifted suspension: the mail that
    caused it must not suspend the account again the moment an administrator restores it."""
    if snapshot is None or hour > snapshot[0]:
        return counts
    if hour < snapshot[0]:
        return _Counts()
    return counts - snapshot[1]


def _baseline(mailbox_id: int, hour: datetime) -> tuple[float, float]:
    """The median messages and new recipients of the mailbox's active hours in the last
    seven days (0 without history). A median, not a mean: one earlier spike must not
    raise the bar for the next one."""
    rows = SendingActivity.objects.filter(
        mailbox_id=mailbox_id, hour__gte=hour - timedelta(days=BASELINE_DAYS), hour__lt=hour, messages__gt=0
    ).values_list("messages", "new_recipients")
    if not rows:
        return 0.0, 0.0
    messages, new_recipients = zip(*rows, strict=True)
    return float(statistics.median(messages)), float(statistics.median(new_recipients))


def _spike_reasons(mailbox_id: int, now: datetime) -> tuple[list[str], dict[str, object]]:
    hour = _hour(now)
    rows = {
        row.hour: row
        for row in SendingActivity.objects.filter(
            mailbox_id=mailbox_id, hour__in=[hour, hour - timedelta(hours=1)]
        )
    }
    if hour not in rows:
        return [], {}
    snapshot = _lift_snapshot(mailbox_id)
    current = _since_lift(hour, _counts(rows[hour]), snapshot)
    previous_row = rows.get(hour - timedelta(hours=1))
    previous = _since_lift(previous_row.hour, _counts(previous_row), snapshot) if previous_row else _Counts()
    usual_messages, usual_new = _baseline(mailbox_id, hour)
    factor = settings.A3_BEHAVIOUR_SPIKE_FACTOR
    message_limit = max(settings.A3_BEHAVIOUR_MIN_MESSAGES, usual_messages * factor)
    new_limit = max(settings.A3_BEHAVIOUR_NEW_RECIPIENTS, usual_new * factor)
    reasons: list[str] = []
    if current.messages > message_limit:
        reasons.append(
            f"{current.messages} messages this hour (limit {message_limit:g}; usually {usual_messages:g})"
        )
    if current.new_recipients > new_limit:
        reasons.append(
            f"{current.new_recipients} never-before-seen recipients this hour (limit {new_limit:g})"
        )
    # Bounces come back minutes to hours after the mail went out: judged over this hour
    # and the one before.
    recent = current + previous
    ratio = recent.bounces / recent.recipients if recent.recipients else 0.0
    if (
        recent.recipients >= settings.A3_BEHAVIOUR_BOUNCE_MIN_RECIPIENTS
        and ratio >= settings.A3_BEHAVIOUR_BOUNCE_RATIO
    ):
        reasons.append(f"{recent.bounces} of {recent.recipients} recipients bounced in the last two hours")
    details = {
        "hour": hour.isoformat(),
        "messages": current.messages,
        "recipients": current.recipients,
        "new_recipients": current.new_recipients,
        "bounces": recent.bounces,
        "baseline_messages": usual_messages,
        "baseline_new_recipients": usual_new,
    }
    return reasons, details


def behaviour_check(*, mailbox_id: int, now: datetime | None = None) -> SubmissionSuspension | None:
    """Compare the mailbox's current hour with its baseline; on a spike, suspend its
    submission (see suspension_create). Returns the new suspension, or None (no spike,
    or already suspended). Safe to run repeatedly."""
    now = now or timezone.now()
    if SubmissionSuspension.objects.filter(mailbox_id=mailbox_id, lifted_at__isnull=True).exists():
        return None
    reasons, details = _spike_reasons(mailbox_id, now)
    if not reasons:
        return None
    mailbox = Mailbox.objects.select_related("owner").filter(pk=mailbox_id).first()
    if mailbox is None:
        return None
    network = _recent_new_network(mailbox.owner_id, now)
    if network is not None:
        details["new_network"] = network.network
    return suspension_create(mailbox=mailbox, reason="; ".join(reasons), details=details, new_network=network)


def suspension_create(
    *,
    mailbox: Mailbox,
    reason: str,
    details: dict[str, object] | None = None,
    actor=None,
    new_network: LoginNetwork | None = None,
    request: HttpRequest | None = None,
) -> SubmissionSuspension | None:
    """Stop submission from `mailbox` (by behaviour analysis when `actor` is None). One
    active suspension per mailbox: returns None when one is already in place. Emits the
    critical alert threats.account_suspended (and threats.auth_anomaly when the spike
    follows a sign-in from a never-seen network) and writes an audit event."""
    from apps.alerts.services import emit

    try:
        with transaction.atomic():
            suspension = SubmissionSuspension.objects.create(
                mailbox=mailbox, reason=reason[:500], details=details or {}
            )
            emit(
                "threats.account_suspended",
                "critical",
                f"Sending from {mailbox.address} is suspended: {reason}"[:500],
                domain_id=mailbox.domain_id,
                mailbox_id=mailbox.pk,
                mailbox=mailbox.address,
                suspension_id=suspension.pk,
            )
            if new_network is not None:
                emit(
                    "threats.auth_anomaly",
                    "critical",
                    f"{mailbox.address} was signed in to from a never-seen network ({new_network.network}) "
                    f"and then sent a spike of mail: the account is likely compromised.",
                    domain_id=mailbox.domain_id,
                    account=mailbox.address,
                    network=new_network.network,
                    mailbox_id=mailbox.pk,
                )
            audit(
                "threats.account_suspended",
                actor=actor,
                target=suspension,
                request=request,
                changes={"reason": reason[:500]},
                domain_id=mailbox.domain_id,
                mailbox=mailbox.address,
            )
    except IntegrityError:  # another check suspended it a moment ago (one active per mailbox)
        return None
    logger.warning("submission suspended for mailbox %s: %s", mailbox.pk, reason)
    return suspension


def suspension_lift(
    *, actor, suspension: SubmissionSuspension, request: HttpRequest | None = None
) -> SubmissionSuspension:
    """Restore sending: by a superadmin or an administrator of the mailbox's domain
    (NotFoundError for anyone else: the suspension is outside their scope). The mail that
    caused it does not count again (see _since_lift). ConflictError if already lifted.
    Writes an audit event and an info alert."""
    from apps.alerts.services import emit

    if not selectors.suspensions_visible_to(actor).filter(pk=suspension.pk).exists():
        raise NotFoundError("No such suspension.")
    now = timezone.now()
    with transaction.atomic():
        suspension = (
            SubmissionSuspension.objects.select_for_update().select_related("mailbox").get(pk=suspension.pk)
        )
        if suspension.lifted_at is not None:
            raise ConflictError("Sending was already restored for this account.")
        hour = _hour(now)
        row = SendingActivity.objects.filter(mailbox_id=suspension.mailbox_id, hour=hour).first()
        counts = _counts(row) if row is not None else _Counts()
        suspension.details = {
            **suspension.details,
            "at_lift": {"hour": hour.isoformat(), **asdict(counts)},
        }
        suspension.lifted_at = now
        suspension.lifted_by = actor
        suspension.save(update_fields=["details", "lifted_at", "lifted_by"])
        mailbox = suspension.mailbox
        audit(
            "threats.suspension_lift",
            actor=actor,
            target=suspension,
            request=request,
            domain_id=mailbox.domain_id,
            mailbox=mailbox.address,
        )
        emit(
            "threats.suspension_lifted",
            "info",
            f"{actor.email} restored sending for {mailbox.address}.",
            domain_id=mailbox.domain_id,
            mailbox_id=mailbox.pk,
            suspension_id=suspension.pk,
        )
    return suspension


def submission_suspended_problem(*, mailbox_id: int) -> str | None:
    """A3_SUBMISSION_SENDER_CHECKS hook: the SMTP reply for a suspended mailbox, else
    None. One indexed query: it runs at MAIL, RCPT and when the message is stored."""
    if SubmissionSuspension.objects.filter(mailbox_id=mailbox_id, lifted_at__isnull=True).exists():
        return SUSPENDED_REPLY
    return None


# --- Sign-ins ----------------------------------------------------------------------------


def login_network(ip: str | None) -> str | None:
    """The network an address belongs to for "never-seen network": IPv4 /24, IPv6 /48."""
    try:
        address = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def login_observe(*, user_id: int, ip: str | None, channel: str = "web", now: datetime | None = None) -> bool:
    """A3_LOGIN_OBSERVERS hook, after a successful sign-in: remember the network. Returns
    whether it was never seen for this user before."""
    network = login_network(ip)
    if network is None:
        return False
    now = now or timezone.now()
    if LoginNetwork.objects.filter(user_id=user_id, network=network).update(last_seen=now):
        return False
    try:
        with transaction.atomic():
            LoginNetwork.objects.create(user_id=user_id, network=network, first_seen=now, last_seen=now)
    except IntegrityError:  # a concurrent sign-in from the same network recorded it
        return False
    logger.info("user %s signed in from a new network (%s)", user_id, channel)
    return True


def _recent_new_network(user_id: int, now: datetime) -> LoginNetwork | None:
    """A network first seen within the last hour, for a user who had signed in from
    another network before (a first sign-in ever is not an anomaly)."""
    recent = (
        LoginNetwork.objects.filter(
            user_id=user_id, first_seen__gte=now - NEW_NETWORK_WINDOW, first_seen__lte=now
        )
        .order_by("-first_seen")
        .first()
    )
    if recent is None:
        return None
    if not LoginNetwork.objects.filter(user_id=user_id, first_seen__lt=recent.first_seen).exists():
        return None
    return recent


def auth_anomaly_check(*, now: datetime | None = None) -> int:
    """Alert (threats.auth_anomaly, warning) for each existing account that failed to sign
    in at least A3_BEHAVIOUR_AUTH_FAILURES times from at least A3_BEHAVIOUR_AUTH_IPS
    addresses in the last 15 minutes, over every door (web, API, SMTP AUTH). At most one
    alert per account and hour. Returns how many alerts were raised."""
    from axes.models import AccessAttempt

    from apps.accounts.models import AuthEvent, User
    from apps.alerts.models import Alert
    from apps.alerts.services import emit

    now = now or timezone.now()
    since = now - AUTH_WINDOW
    failures: Counter[str] = Counter()
    addresses: defaultdict[str, set[str]] = defaultdict(set)
    for account, ip in (
        AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED, created_at__gte=since, created_at__lte=now)
        .exclude(email="")
        .values_list("email", "ip")
    ):
        failures[account.lower()] += 1
        if ip:
            addresses[account.lower()].add(ip)
    # SMTP AUTH failures are only in axes' counters: one row per name and address with
    # its failure count (attempt_time is the latest failure).
    for account, ip, count in (
        AccessAttempt.objects.filter(path_info=SMTP_AUTH_PATH, attempt_time__gte=since, attempt_time__lte=now)
        .exclude(username="")
        .values_list("username", "ip_address", "failures_since_start")
    ):
        failures[account.lower()] += count
        if ip:
            addresses[account.lower()].add(ip)
    suspects = [
        account
        for account, count in failures.items()
        if count >= settings.A3_BEHAVIOUR_AUTH_FAILURES
        and len(addresses[account]) >= settings.A3_BEHAVIOUR_AUTH_IPS
    ]
    raised = 0
    for account in sorted(suspects):
        mailbox = Mailbox.objects.filter(address=account).values_list("domain_id", flat=True).first()
        user = User.objects.filter(email=account).values_list("pk", flat=True).first()
        if mailbox is None and user is None:
            continue  # guessing at names that do not exist: the lockout handles those
        recent = Alert.objects.filter(
            kind="threats.auth_anomaly", created_at__gte=now - timedelta(hours=1), data__account=account
        ).exists()
        if recent:
            continue
        emit(
            "threats.auth_anomaly",
            "warning",
            f"{failures[account]} failed sign-ins for {account} from {len(addresses[account])} different "
            f"addresses in the last {int(AUTH_WINDOW.total_seconds() // 60)} minutes: a distributed password-guessing attack.",
            domain_id=mailbox,
            account=account,
            failures=failures[account],
            addresses=len(addresses[account]),
        )
        raised += 1
    return raised
