"""Reads of relay data that depend on who is asking: the outbound queue, app passwords and
transport rules. Views, viewsets and services get these objects only through here.

Scoping of the queue: superadmins see every item. A domain admin sees the items that came
from their domains: mail submitted by one of their mailboxes, and copies forwarded by one
of their aliases (never by the sender address an item claims, which anyone can forge).
Mailbox users see no queue at all. Anything outside the scope is "not found".
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from django.db.models import Count, Min, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.core.addresses import AddressError, normalize_domain, parse_address
from apps.core.exceptions import NotFoundError
from apps.mailboxes.models import AppPassword, Mailbox
from apps.relay.models import DeliveryAttempt, QueueItem, QueueRecipient, TransportRule

if TYPE_CHECKING:
    from apps.accounts.models import User

State = QueueItem.State
WAITING_STATES = (State.QUEUED, State.SENDING, State.DEFERRED)
TOP_DEFERRED_DOMAINS = 5


def _is_active_user(user: User) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active)


# --- Outbound queue ------------------------------------------------------------------------


def queue_items_visible_to(user: User) -> QuerySet[QueueItem]:
    """The queue items `user` may see and act on (see the module docstring); empty for
    mailbox users and anonymous callers."""
    items = QueueItem.objects.all()
    if not _is_active_user(user):
        return items.none()
    if user.is_superadmin:
        return items
    if not user.is_domain_admin:
        return items.none()
    names = list(user.administered_domains.values_list("name", flat=True))
    if not names:
        return items.none()
    # Scoped by where the mail came from, never by the addresses it claims (anyone can
    # claim a sender in any domain): mail their domains' mailboxes submitted, and copies
    # their domains' aliases forwarded. Delivery reports and relayed bounces are for
    # superadmins.
    forwarded = Q()
    for name in names:
        forwarded |= Q(original_address__iendswith=f"@{name}")
    submitted = Mailbox.objects.filter(domain__admins=user).values("pk")
    forwarding = QueueRecipient.objects.filter(forwarded, item__kind=QueueItem.Kind.FORWARD).values("item_id")
    return items.filter(Q(message__submitted_by__in=submitted) | Q(pk__in=forwarding))


def queue_item_list(user: User) -> QuerySet[QueueItem]:
    """Visible items, newest first, with their message and a recipient count: what list
    pages and the API list need, in one query."""
    recipient_count = (
        QueueRecipient.objects.filter(item=OuterRef("pk"))
        .order_by()
        .values("item")
        .annotate(total=Count("pk"))
        .values("total")
    )
    return (
        queue_items_visible_to(user)
        .select_related("message")
        .defer("message__body_text")
        .annotate(recipient_count=Coalesce(Subquery(recipient_count), 0))
        .order_by("-created_at", "-id")
    )


def queue_item_detail(user: User, pk: int | str) -> QueueItem:
    """One visible item with its recipients and attempt log prefetched. Raises
    NotFoundError for an item that does not exist or is outside the caller's scope."""
    try:
        return (
            queue_item_list(user)
            .prefetch_related(
                Prefetch("recipients", queryset=QueueRecipient.objects.order_by("id")),
                Prefetch("attempts_log", queryset=DeliveryAttempt.objects.order_by("started_at", "id")),
            )
            .get(pk=int(pk))
        )
    except (QueueItem.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such queue item.") from None


def queue_item_filter(
    items: QuerySet[QueueItem],
    *,
    state: str = "",
    domain: str = "",
    sender: str = "",
    on_hold: bool | None = None,
    kind: str = "",
) -> QuerySet[QueueItem]:
    """Narrow a queue listing the way the dashboard's filter form asks: exact state and
    kind, destination domain (as typed, or its A-label), sender substring, held or not."""
    if state:
        items = items.filter(state=state)
    if kind:
        items = items.filter(kind=kind)
    if domain:
        items = items.filter(domain=queue_domain_label(domain))  # exact: uses the domain index
    if sender:
        items = items.filter(sender__icontains=sender.strip())
    if on_hold is not None:
        items = items.filter(on_hold=on_hold)
    return items


def queue_domain_label(value: str) -> str:
    """The stored (lower-case A-label) form of a destination domain typed in a filter; what
    was typed, lower-cased, when it is no valid domain, so the filter finds nothing rather
    than failing."""
    try:
        return normalize_domain(value)
    except AddressError:
        return value.strip().lower()


class DomainCount(TypedDict):
    domain: str
    count: int


class QueueSummary(TypedDict):
    queued: int
    sending: int
    deferred: int
    sent: int
    bounced: int
    waiting: int  # queued + sending + deferred
    on_hold: int  # waiting items that are held
    oldest_deferred_at: datetime | None  # when the oldest deferred message entered the queue
    oldest_deferred_age_seconds: int | None
    top_deferred_domains: list[DomainCount]


def queue_summary(user: User) -> QueueSummary:
    """Counts of the visible queue by state, how many waiting items are held, how long the
    oldest deferred message has waited, and the destinations with the most deferred items.
    Two queries whatever the queue's size."""
    items = queue_items_visible_to(user).order_by()
    totals = items.aggregate(
        **{value: Count("pk", filter=Q(state=value)) for value in State.values},
        on_hold=Count("pk", filter=Q(on_hold=True, state__in=WAITING_STATES)),
        oldest_deferred_at=Min("created_at", filter=Q(state=State.DEFERRED)),
    )
    top = (
        items.filter(state=State.DEFERRED)
        .values("domain")
        .annotate(count=Count("pk"))
        .order_by("-count", "domain")[:TOP_DEFERRED_DOMAINS]
    )
    oldest = totals["oldest_deferred_at"]
    return QueueSummary(
        queued=totals[State.QUEUED],
        sending=totals[State.SENDING],
        deferred=totals[State.DEFERRED],
        sent=totals[State.SENT],
        bounced=totals[State.BOUNCED],
        waiting=sum(totals[value] for value in WAITING_STATES),
        on_hold=totals["on_hold"],
        oldest_deferred_at=oldest,
        oldest_deferred_age_seconds=(
            max(0, int((timezone.now() - oldest).total_seconds())) if oldest is not None else None
        ),
        top_deferred_domains=[DomainCount(domain=row["domain"], count=row["count"]) for row in top],
    )


# --- App passwords -------------------------------------------------------------------------


def app_password_mailboxes(user: User) -> QuerySet[Mailbox]:
    """Mailboxes whose app passwords `user` manages: their own, or those they administer."""
    return Mailbox.objects.visible_to(user).select_related("domain").order_by("address")


def app_password_mailbox_get(user: User, address: str) -> Mailbox:
    """A mailbox `user` manages app passwords of, by address. Raises NotFoundError."""
    try:
        normalized = parse_address(address).value
    except AddressError:
        raise NotFoundError("No such mailbox.") from None
    mailbox = app_password_mailboxes(user).filter(address=normalized).first()
    if mailbox is None:
        raise NotFoundError("No such mailbox.")
    return mailbox


def app_password_list(user: User) -> QuerySet[AppPassword]:
    """App passwords (active and revoked) of the mailboxes `user` manages, newest first."""
    return (
        AppPassword.objects.filter(mailbox__in=Mailbox.objects.visible_to(user).values("pk"))
        .select_related("mailbox", "mailbox__domain")
        .order_by("mailbox__address", "-created_at", "-id")
    )


def app_password_get(user: User, pk: int | str) -> AppPassword:
    try:
        return app_password_list(user).get(pk=int(pk))
    except (AppPassword.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such app password.") from None


# --- Transport rules -----------------------------------------------------------------------


def transport_rule_list(user: User) -> QuerySet[TransportRule]:
    """Every transport rule for superadmins; nothing for anyone else (rules route the mail
    of every domain, so only superadmins manage them)."""
    if not (_is_active_user(user) and user.is_superadmin):
        return TransportRule.objects.none()
    return TransportRule.objects.order_by("domain")


def transport_rule_get(user: User, pk: int | str) -> TransportRule:
    try:
        return transport_rule_list(user).get(pk=int(pk))
    except (TransportRule.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such transport rule.") from None
