"""Reads of threat data that depend on who is asking.

Scoping of the quarantine: superadmins see every item; a domain admin sees items with a
recipient mailbox in their domains; a mailbox user sees items held for their own
mailboxes. Within an item, a non-superadmin sees only the recipient rows in their scope.
Anything outside the scope is "not found".
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.core.charts import Chart, daily_chart
from apps.core.exceptions import NotFoundError
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import Domain, Mailbox
from apps.threats.models import (
    Category,
    ContentRule,
    DomainPolicy,
    ListEntry,
    QuarantineItem,
    QuarantineRecipient,
    ScanVerdict,
    SubmissionSuspension,
)

if TYPE_CHECKING:
    from apps.accounts.models import User

CHART_DAYS = 14


def _active(user: User) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active)


def mailboxes_in_scope(user: User) -> QuerySet[Mailbox]:
    """The mailboxes whose quarantine `user` reviews: all (superadmin), their domains'
    (domain admin) plus their own."""
    if not _active(user):
        return Mailbox.objects.none()
    if user.is_superadmin:
        return Mailbox.objects.all()
    if user.is_domain_admin:
        return Mailbox.objects.filter(Q(domain__admins=user) | Q(owner=user)).distinct()
    return Mailbox.objects.filter(owner=user)


def quarantine_recipients_visible_to(user: User) -> QuerySet[QuarantineRecipient]:
    rows = QuarantineRecipient.objects.all()
    if not _active(user):
        return rows.none()
    if user.is_superadmin:
        return rows
    return rows.filter(mailbox__in=mailboxes_in_scope(user).values("pk"))


def quarantine_items_visible_to(user: User) -> QuerySet[QuarantineItem]:
    if not _active(user):
        return QuarantineItem.objects.none()
    if user.is_superadmin:
        return QuarantineItem.objects.all()
    visible = quarantine_recipients_visible_to(user).filter(item=OuterRef("pk"))
    return QuarantineItem.objects.filter(Exists(visible))


def quarantine_items_search(
    user: User,
    *,
    category: str = "",
    state: str = "",
    query: str = "",
    mailbox: str = "",
    requested: bool = False,
) -> QuerySet[QuarantineItem]:
    """The list page's and API's filters: category, state (held by default), free text
    (sender, From, subject), a recipient mailbox address, pending release requests."""
    items = quarantine_items_visible_to(user).select_related("message")
    items = items.filter(state=state or QuarantineItem.State.HELD) if state != "all" else items
    if category:
        items = items.filter(category=category)
    if query:
        items = items.filter(
            Q(sender__icontains=query) | Q(from_header__icontains=query) | Q(subject__icontains=query)
        )
    if mailbox:
        items = items.filter(recipients__mailbox__address__iexact=mailbox.strip()).distinct()
    if requested:
        rows = quarantine_recipients_visible_to(user).filter(
            item=OuterRef("pk"), state=QuarantineRecipient.State.RELEASE_REQUESTED
        )
        items = items.filter(Exists(rows))
    return items.order_by("-created_at", "-id")


def quarantine_item_get(user: User, item_id: int) -> QuarantineItem:
    item = quarantine_items_visible_to(user).select_related("message").filter(pk=item_id).first()
    if item is None:
        raise NotFoundError("no such quarantined message")
    return item


def quarantine_item_verdict(item: QuarantineItem) -> ScanVerdict | None:
    """The full verdict that held the item (stages, scores, reasons, times)."""
    return ScanVerdict.objects.filter(message_id=item.message_id).first()


def quarantine_item_raw(item: QuarantineItem) -> bytes:
    """The held message's stored bytes. NotFoundError (content_missing) if they are gone."""
    try:
        return blob_store().read(item.message.blob_sha256)
    except BlobNotFound:
        raise NotFoundError(
            "The stored content of this message is missing.", code="content_missing"
        ) from None


def quarantine_item_recipients(user: User, item: QuarantineItem) -> QuerySet[QuarantineRecipient]:
    """The item's recipient rows that `user` may see."""
    return (
        quarantine_recipients_visible_to(user)
        .filter(item=item)
        .select_related("mailbox", "decided_by")
        .order_by("id")
    )


def quarantine_counts(user: User) -> dict[str, int]:
    """Held items per category, for the summary cards."""
    counts = dict.fromkeys(("spam", "malware", "policy", "unscannable"), 0)
    counts.update(
        quarantine_items_visible_to(user)
        .filter(state=QuarantineItem.State.HELD)
        .order_by()
        .values("category")
        .annotate(n=Count("id"))
        .values_list("category", "n")
    )
    counts["requested"] = (
        quarantine_recipients_visible_to(user)
        .filter(state=QuarantineRecipient.State.RELEASE_REQUESTED)
        .count()
    )
    return counts


def _local_midnight(day: date) -> datetime:
    """The start of `day` in the current time zone, as an aware datetime: compared with
    the column directly, so that its index serves the range (a __date lookup would not)."""
    return timezone.make_aware(datetime.combine(day, time.min))


def quarantine_held_chart(user: User, *, days: int = CHART_DAYS) -> Chart:
    """Mailbox copies held per day and category over the last `days`, within the viewer's
    scope (one message held for three mailboxes counts three times)."""
    today = timezone.localdate()
    rows = (
        quarantine_recipients_visible_to(user)
        .filter(item__created_at__gte=_local_midnight(today - timedelta(days=days - 1)))
        .annotate(day=TruncDate("item__created_at"))
        .order_by()
        .values("day", "item__category")
        .annotate(n=Count("id"))
        .values_list("day", "item__category", "n")
    )
    series: dict[str, dict[date, int]] = {category: {} for category in Category.values}
    for day, category, n in rows:
        series.setdefault(category, {})[day] = n
    return daily_chart(series, days=days, today=today)


def scan_rate_chart(user: User, *, days: int = CHART_DAYS) -> Chart | None:
    """Messages scanned per day, split into clean and spam (scored at or over the server's
    Junk threshold, or held for malware, policy or as unscannable); server-wide, so for
    superadmins only (None for anyone else)."""
    if not (_active(user) and user.is_superadmin):
        return None
    today = timezone.localdate()
    spam = Q(score__gte=settings.A3_SPAM_JUNK_SCORE) | ~Q(category="")
    rows = (
        ScanVerdict.objects.filter(scanned_at__gte=_local_midnight(today - timedelta(days=days - 1)))
        .annotate(day=TruncDate("scanned_at"))
        .order_by()
        .values("day")
        .annotate(scanned=Count("id"), spam=Count("id", filter=spam))
        .values_list("day", "scanned", "spam")
    )
    clean: dict[date, int] = {}
    flagged: dict[date, int] = {}
    for day, scanned, spam_count in rows:
        clean[day], flagged[day] = scanned - spam_count, spam_count
    return daily_chart({"clean": clean, "spam": flagged}, days=days, today=today)


# --- Rules, lists and policies --------------------------------------------------------------


def domains_administered(user: User) -> QuerySet[Domain]:
    if not _active(user):
        return Domain.objects.none()
    if user.is_superadmin:
        return Domain.objects.all()
    if user.is_domain_admin:
        return Domain.objects.filter(admins=user)
    return Domain.objects.none()


def list_entries_visible_to(user: User) -> QuerySet[ListEntry]:
    """Superadmins: every entry. Domain admins: their domains' entries and their
    mailboxes' ones. Users: their own mailboxes' entries. Server-wide entries are
    visible to superadmins only."""
    entries = ListEntry.objects.select_related("domain", "mailbox")
    if not _active(user):
        return entries.none()
    if user.is_superadmin:
        return entries
    domains = domains_administered(user).values("pk")
    return entries.filter(Q(domain__in=domains) | Q(mailbox__domain__in=domains) | Q(mailbox__owner=user))


def content_rules_visible_to(user: User) -> QuerySet[ContentRule]:
    rules = ContentRule.objects.select_related("domain")
    if not _active(user):
        return rules.none()
    if user.is_superadmin:
        return rules
    return rules.filter(domain__in=domains_administered(user).values("pk"))


def domain_policies_visible_to(user: User) -> QuerySet[DomainPolicy]:
    return DomainPolicy.objects.select_related("domain").filter(
        domain__in=domains_administered(user).values("pk")
    )


def suspensions_visible_to(user: User) -> QuerySet[SubmissionSuspension]:
    rows = SubmissionSuspension.objects.select_related("mailbox", "lifted_by")
    if not _active(user):
        return rows.none()
    if user.is_superadmin:
        return rows
    return rows.filter(mailbox__domain__in=domains_administered(user).values("pk"))
