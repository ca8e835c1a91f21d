"""Legal holds: mail that must not be deleted, whatever asks for it.

A hold covers a mailbox, a whole domain, or a search (sender and/or a received date range,
optionally narrowed to one mailbox or domain). While it is active (not released, and its
`ends_at`, if any, still ahead) every permanent deletion path asks `deletion_guard` first:
expunge and delete-from-Trash in webmail and the API, mailbox deletion, retention and
erasure. Mail the guard keeps stays, and a BlockedDeletion row says who tried, how and
which hold stopped it. Moving mail to Trash is not a deletion and is never blocked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.accounts.models import User
from apps.alerts.services import emit
from apps.compliance.models import BlockedDeletion, LegalHold
from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from apps.mailboxes.models import Domain, Mailbox, MailItem, Message

__all__ = [
    "deletion_guard",
    "held_message_ids",
    "hold_for_mailbox",
    "hold_for_user",
    "holds_active",
    "holds_covering_mailbox",
    "holds_covering_subject",
    "legal_hold_create",
    "legal_hold_get",
    "legal_hold_is_active",
    "legal_hold_list",
    "legal_hold_release",
    "mailbox_is_held",
]


# --- Reads -------------------------------------------------------------------------------


def holds_active(*, now: datetime | None = None) -> QuerySet[LegalHold]:
    """Holds in force now: not released, and without an end or with one still ahead."""
    now = now or timezone.now()
    return LegalHold.objects.filter(released_at__isnull=True).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=now)
    )


def legal_hold_is_active(hold: LegalHold, *, now: datetime | None = None) -> bool:
    """Whether the hold is in force (the same rule as `holds_active`)."""
    now = now or timezone.now()
    return hold.released_at is None and (hold.ends_at is None or hold.ends_at > now)


def legal_hold_list(*, actor: User) -> QuerySet[LegalHold]:
    """Holds the actor may see: superadmins all; domain admins those on their domains (a
    domain hold, a mailbox hold on one of its mailboxes, or a search narrowed to either).
    Each carries `blocked_count`, the deletions it refused."""
    # A subquery, not Count(): the scope joins below would multiply a joined count.
    blocked = (
        BlockedDeletion.objects.filter(hold=OuterRef("pk"))
        .order_by()
        .values("hold")
        .annotate(n=Count("pk"))
        .values("n")
    )
    holds = LegalHold.objects.select_related("mailbox", "domain", "created_by").annotate(
        blocked_count=Coalesce(Subquery(blocked), 0)
    )
    if not (actor.is_authenticated and actor.is_active):
        return holds.none()
    if actor.is_superadmin:
        return holds
    if actor.is_domain_admin:
        return holds.filter(Q(domain__admins=actor) | Q(mailbox__domain__admins=actor)).distinct()
    return holds.none()


def legal_hold_get(*, actor: User, hold_id: int | str) -> LegalHold:
    """One hold in the actor's scope; NotFoundError otherwise (never says which)."""
    try:
        return legal_hold_list(actor=actor).get(pk=int(hold_id))
    except (LegalHold.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such legal hold.") from None


def _search_q(hold: LegalHold) -> Q:
    """The message filter of a search hold (on Message fields)."""
    q = Q()
    if hold.sender:
        q &= Q(mail_from__icontains=hold.sender) | Q(from_header__icontains=hold.sender)
    if hold.date_from:
        q &= Q(received_at__gte=hold.date_from)
    if hold.date_to:
        q &= Q(received_at__lte=hold.date_to)
    return q


def _covers_place(hold: LegalHold, mailbox_id: int, domain_id: int) -> bool:
    """Whether the hold's mailbox/domain part covers a message filed in this mailbox (a
    search hold without either covers every mailbox)."""
    if hold.mailbox_id is not None and hold.mailbox_id != mailbox_id:
        return False
    if hold.domain_id is not None and hold.domain_id != domain_id:
        return False
    return hold.scope == LegalHold.Scope.SEARCH or hold.mailbox_id is not None or hold.domain_id is not None


def _holds_by_message(message_ids: set[int], mailbox_id: int | None) -> dict[int, list[LegalHold]]:
    holds = list(holds_active().order_by("created_at", "pk"))
    if not holds or not message_ids:
        return {}
    # Where each message is filed. Deleting from one mailbox only asks about that mailbox:
    # another mailbox's copy stays wherever it is, so a hold there is not at stake.
    places: dict[int, set[tuple[int, int]]] = defaultdict(set)
    if mailbox_id is not None:
        domain_id = Mailbox.objects.filter(pk=mailbox_id).values_list("domain_id", flat=True).first()
        if domain_id is not None:
            for message_id in message_ids:
                places[message_id].add((mailbox_id, domain_id))
    else:
        rows = MailItem.objects.filter(message_id__in=message_ids).values_list(
            "message_id", "mailbox_id", "mailbox__domain_id"
        )
        for message_id, item_mailbox_id, domain_id in rows:
            places[message_id].add((item_mailbox_id, domain_id))

    found: dict[int, list[LegalHold]] = defaultdict(list)
    for hold in holds:
        if hold.scope == LegalHold.Scope.SEARCH:
            candidates = set(
                Message.objects.filter(_search_q(hold), pk__in=message_ids).values_list("id", flat=True)
            )
        else:
            candidates = message_ids
        for message_id in candidates:
            if any(_covers_place(hold, mb, dom) for mb, dom in places.get(message_id, ())):
                found[message_id].append(hold)
    return dict(found)


def held_message_ids(message_ids: Iterable[int], mailbox_id: int | None = None) -> dict[int, LegalHold]:
    """Which of these messages an active hold covers, with the (oldest) hold covering each.

    With `mailbox_id`, the question is about the messages' copies in that mailbox; without
    it, about every mailbox each message is filed in."""
    found = _holds_by_message(set(message_ids), mailbox_id)
    return {message_id: holds[0] for message_id, holds in found.items()}


def holds_covering_mailbox(mailbox: Mailbox) -> list[LegalHold]:
    """Active holds that keep (some of) this mailbox's mail: a hold on the mailbox or its
    domain, or a search hold matching a message filed in it."""
    covering: list[LegalHold] = []
    for hold in holds_active().order_by("created_at", "pk"):
        if not _covers_place(hold, mailbox.pk, mailbox.domain_id):
            continue
        if hold.scope == LegalHold.Scope.SEARCH:
            matches = Message.objects.filter(_search_q(hold), items__mailbox=mailbox)
            if not matches.exists():
                continue
        covering.append(hold)
    return covering


def holds_covering_subject(subject: User | Mailbox) -> list[LegalHold]:
    """Active holds on a person's mailboxes (or on one mailbox). Erasure must be refused
    while this is not empty."""
    mailboxes = [subject] if isinstance(subject, Mailbox) else list(Mailbox.objects.filter(owner=subject))
    seen: dict[int, LegalHold] = {}
    for mailbox in mailboxes:
        for hold in holds_covering_mailbox(mailbox):
            seen.setdefault(hold.pk, hold)
    return list(seen.values())


def mailbox_is_held(mailbox: Mailbox) -> bool:
    """For A3_MAILBOX_HOLD_CHECKS: whether any active hold covers the mailbox."""
    return bool(holds_covering_mailbox(mailbox))


def hold_for_mailbox(mailbox: Mailbox) -> LegalHold | None:
    """The first active hold covering the mailbox, or None."""
    holds = holds_covering_mailbox(mailbox)
    return holds[0] if holds else None


def hold_for_user(user: User) -> LegalHold | None:
    """The first active hold covering any of the user's mailboxes, or None."""
    holds = holds_covering_subject(user)
    return holds[0] if holds else None


# --- The deletion guard (A3_DELETION_GUARDS) ---------------------------------------------


def deletion_guard(message_ids: set[int], mailbox_id: int | None, via: str, actor: User | None) -> set[int]:
    """Return the messages an active hold keeps, recording one BlockedDeletion per kept
    message and hold. Runs in the caller's transaction, so the record and the (partial)
    deletion commit together."""
    found = _holds_by_message(set(message_ids), mailbox_id)
    if not found:
        return set()
    actor_id = actor.pk if actor is not None and actor.is_authenticated else None
    now = timezone.now()
    BlockedDeletion.objects.bulk_create(
        BlockedDeletion(
            hold=hold,
            message_id=message_id,
            mailbox_id=mailbox_id,
            via=via,
            actor_id=actor_id,
            created_at=now,
        )
        for message_id, holds in found.items()
        for hold in holds
    )
    return set(found)


# --- Writes ------------------------------------------------------------------------------


def _require_superadmin(actor: User) -> None:
    if not actor.is_superadmin:
        raise PermissionDeniedError("Only superadmins manage legal holds.")


@transaction.atomic
def legal_hold_create(
    *,
    actor: User,
    scope: str,
    mailbox: Mailbox | None = None,
    domain: Domain | None = None,
    sender: str = "",
    date_from: datetime | None = None,
    date_to: datetime | None = None,
    reason: str,
    ends_at: datetime | None = None,
) -> LegalHold:
    """Put mail under hold (superadmins only). Raises ApplicationError for a scope without
    its target, an empty search, a reversed date range or an end in the past. Emits
    "compliance.legal_hold_created"."""
    _require_superadmin(actor)
    sender = sender.strip()
    reason = reason.strip()
    errors: dict[str, list[str]] = {}
    if scope not in LegalHold.Scope.values:
        errors["scope"] = ["Choose mailbox, domain or search."]
    if scope == LegalHold.Scope.MAILBOX and mailbox is None:
        errors["mailbox"] = ["A mailbox hold needs a mailbox."]
    if scope == LegalHold.Scope.DOMAIN and domain is None:
        errors["domain"] = ["A domain hold needs a domain."]
    if scope == LegalHold.Scope.SEARCH and not (sender or date_from or date_to):
        errors["sender"] = ["A search hold needs a sender or a date range."]
    if date_from and date_to and date_from > date_to:
        errors["date_to"] = ["The range ends before it starts."]
    if ends_at is not None and ends_at <= timezone.now():
        errors["ends_at"] = ["The end must be in the future."]
    if not reason:
        errors["reason"] = ["Say why the mail is held."]
    if errors:
        raise ApplicationError("The legal hold is not valid.", code="invalid_hold", fields=errors)
    if scope == LegalHold.Scope.MAILBOX:
        domain = None  # the mailbox says where; one target per scope keeps matching simple
    elif scope == LegalHold.Scope.DOMAIN:
        mailbox = None
    elif mailbox is not None and domain is not None and mailbox.domain_id != domain.pk:
        domain = None  # a search narrowed to a mailbox is already narrowed to its domain
    if scope != LegalHold.Scope.SEARCH:
        sender, date_from, date_to = "", None, None
    hold = LegalHold.objects.create(
        scope=scope,
        mailbox=mailbox,
        domain=domain,
        sender=sender,
        date_from=date_from,
        date_to=date_to,
        reason=reason,
        created_by=actor,
        ends_at=ends_at,
    )
    audit(
        "compliance.legal_hold_created",
        actor=actor,
        target=hold,
        changes={"scope": scope, "what": _describe(hold), "reason": reason, "ends_at": ends_at},
        domain_id=_alert_domain_id(hold),
    )
    emit(
        "compliance.legal_hold_created",
        "info",
        f"Legal hold {hold.pk} ({_describe(hold)}) placed by {actor.email}.",
        domain_id=_alert_domain_id(hold),
        hold_id=hold.pk,
    )
    return hold


@transaction.atomic
def legal_hold_release(*, actor: User, hold: LegalHold) -> LegalHold:
    """Release a hold (superadmins only); ConflictError if it was already released. Emits
    "compliance.legal_hold_released". What the hold kept becomes deletable again."""
    _require_superadmin(actor)
    claimed = LegalHold.objects.filter(pk=hold.pk, released_at__isnull=True).update(
        released_at=timezone.now()
    )
    if claimed != 1:
        raise ConflictError("This legal hold was already released.", code="already_released")
    hold.refresh_from_db()
    audit(
        "compliance.legal_hold_released",
        actor=actor,
        target=hold,
        changes={"what": _describe(hold)},
        domain_id=_alert_domain_id(hold),
    )
    emit(
        "compliance.legal_hold_released",
        "info",
        f"Legal hold {hold.pk} ({_describe(hold)}) released by {actor.email}.",
        domain_id=_alert_domain_id(hold),
        hold_id=hold.pk,
    )
    return hold


def _alert_domain_id(hold: LegalHold) -> int | None:
    if hold.domain_id is not None:
        return hold.domain_id
    return hold.mailbox.domain_id if hold.mailbox_id is not None else None


def _describe(hold: LegalHold) -> str:
    if hold.scope == LegalHold.Scope.MAILBOX:
        return f"mailbox {hold.mailbox.address}"
    if hold.scope == LegalHold.Scope.DOMAIN:
        return f"domain {hold.domain.name}"
    parts = [f"sender contains {hold.sender!r}"] if hold.sender else []
    if hold.date_from or hold.date_to:
        parts.append(f"received {hold.date_from or '…'} to {hold.date_to or '…'}")
    return "search: " + ", ".join(parts)
