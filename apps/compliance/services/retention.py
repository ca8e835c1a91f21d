"""Retention: delete mail older than the policy that applies to its folder.

Which policy applies. Each folder gets at most one policy, the most specific active one:

    1. the folder's domain and its special use   (alpha.test, Trash: 30 days)
    2. the folder's domain, all folders          (alpha.test: 365 days)
    3. every domain, the folder's special use    (Trash: 60 days)
    4. every domain, all folders                 (730 days)

so a domain's own rules always beat global ones, even a longer domain rule over a shorter
global Trash rule: a domain that asked for longer keeping gets it. Folders without a
special use (the user's own) only match "all folders" policies. Two active policies with
the same domain and folder should not exist; if they do, the longer one wins, so a
mistake keeps mail rather than losing it.

An item's age is its internal date (when it was filed). Deleting goes through the
mailboxes app's `remove_mail_items`, so the deletion guards (legal holds) are asked and
quotas are given back; then messages no mailbox holds and no relay queue item refers to
are gone, and their blobs are removed once no message row uses the hash any more.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from apps.accounts.models import User
from apps.compliance.models import RetentionPolicy, RetentionRun
from apps.core.audit import audit, audit_diff
from apps.core.exceptions import ApplicationError, NotFoundError, PermissionDeniedError
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Domain, Folder, MailItem, Message
from apps.mailboxes.services import remove_mail_items

logger = logging.getLogger(__name__)

__all__ = [
    "MailboxRetention",
    "RetentionPlan",
    "retention_apply",
    "retention_plan",
    "retention_policy_create",
    "retention_policy_delete",
    "retention_policy_get",
    "retention_policy_list",
    "retention_policy_update",
    "retention_run_list",
]


@dataclass
class MailboxRetention:
    mailbox_id: int
    address: str
    items: int = 0
    bytes: int = 0


@dataclass
class RetentionPlan:
    """What a retention run would delete now (held mail included: the guard decides at
    deletion time)."""

    now: datetime
    mailboxes: list[MailboxRetention] = field(default_factory=list)

    @property
    def total_items(self) -> int:
        return sum(row.items for row in self.mailboxes)

    @property
    def total_bytes(self) -> int:
        return sum(row.bytes for row in self.mailboxes)


# --- Policies ------------------------------------------------------------------------------


def retention_policy_list(*, actor: User) -> QuerySet[RetentionPolicy]:
    """Superadmins: every policy. Domain admins: the policies on their domains and the
    global ones (which apply to their domains too). Others: none."""
    policies = RetentionPolicy.objects.select_related("domain")
    if not (actor.is_authenticated and actor.is_active):
        return policies.none()
    if actor.is_superadmin:
        return policies
    if actor.is_domain_admin:
        return policies.filter(Q(domain__isnull=True) | Q(domain__admins=actor)).distinct()
    return policies.none()


def retention_policy_get(*, actor: User, policy_id: int | str) -> RetentionPolicy:
    try:
        return retention_policy_list(actor=actor).get(pk=int(policy_id))
    except (RetentionPolicy.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such retention policy.") from None


def retention_run_list(*, actor: User) -> QuerySet[RetentionRun]:
    """Runs name mailboxes of every domain: superadmins only."""
    if actor.is_authenticated and actor.is_active and actor.is_superadmin:
        return RetentionRun.objects.all()
    return RetentionRun.objects.none()


def _validate_policy(*, days: int, folder_special_use: str) -> None:
    errors: dict[str, list[str]] = {}
    if days < 1:
        errors["days"] = ["Keep mail at least one day."]
    if folder_special_use not in Folder.SpecialUse.values:
        errors["folder_special_use"] = ["Choose a special-use folder, or none for every folder."]
    if errors:
        raise ApplicationError("The retention policy is not valid.", code="invalid_policy", fields=errors)


def _require_superadmin(actor: User) -> None:
    if not actor.is_superadmin:
        raise PermissionDeniedError("Only superadmins manage retention policies.")


@transaction.atomic
def retention_policy_create(
    *,
    actor: User,
    domain: Domain | None,
    folder_special_use: str = "",
    days: int,
    is_active: bool = True,
    description: str = "",
) -> RetentionPolicy:
    """Add a policy (superadmins only). It takes effect at the next run."""
    _require_superadmin(actor)
    _validate_policy(days=days, folder_special_use=folder_special_use)
    policy = RetentionPolicy.objects.create(
        domain=domain,
        folder_special_use=folder_special_use,
        days=days,
        is_active=is_active,
        description=description,
    )
    audit(
        "compliance.retention_policy_created",
        actor=actor,
        target=policy,
        changes=_policy_fields(policy),
        domain_id=policy.domain_id,
    )
    return policy


def _policy_fields(policy: RetentionPolicy) -> dict[str, object]:
    return {
        "domain": policy.domain.name if policy.domain_id else "",
        "folder_special_use": policy.folder_special_use,
        "days": policy.days,
        "is_active": policy.is_active,
        "description": policy.description,
    }


@transaction.atomic
def retention_policy_update(
    *,
    actor: User,
    policy: RetentionPolicy,
    folder_special_use: str | None = None,
    days: int | None = None,
    is_active: bool | None = None,
    description: str | None = None,
) -> RetentionPolicy:
    """Change a policy (superadmins only); arguments left None are unchanged. The domain
    is fixed: delete the policy and add another instead."""
    _require_superadmin(actor)
    before = _policy_fields(policy)
    if folder_special_use is not None:
        policy.folder_special_use = folder_special_use
    if days is not None:
        policy.days = days
    if is_active is not None:
        policy.is_active = is_active
    if description is not None:
        policy.description = description
    _validate_policy(days=policy.days, folder_special_use=policy.folder_special_use)
    policy.save()
    audit(
        "compliance.retention_policy_updated",
        actor=actor,
        target=policy,
        changes=audit_diff(before, _policy_fields(policy)),
        domain_id=policy.domain_id,
    )
    return policy


@transaction.atomic
def retention_policy_delete(*, actor: User, policy: RetentionPolicy) -> None:
    """Remove a policy (superadmins only); mail it would have deleted stays."""
    _require_superadmin(actor)
    audit(
        "compliance.retention_policy_deleted",
        actor=actor,
        target=policy,
        changes=_policy_fields(policy),
        domain_id=policy.domain_id,
    )
    policy.delete()


# --- Which items are due -----------------------------------------------------------------


def _effective_policies() -> list[tuple[RetentionPolicy, Q]]:
    """Each active policy with the MailItem filter of the folders it governs. The filters
    are disjoint: a more specific policy takes its folders away from the broader ones."""
    chosen: dict[tuple[int | None, str], RetentionPolicy] = {}
    for policy in RetentionPolicy.objects.filter(is_active=True).order_by("-days", "pk"):
        chosen.setdefault((policy.domain_id, policy.folder_special_use), policy)  # longest wins
    domain_wide = {domain_id for domain_id, use in chosen if domain_id is not None and not use}
    domain_folder = {(domain_id, use) for domain_id, use in chosen if domain_id is not None and use}
    global_folder = {use for domain_id, use in chosen if domain_id is None and use}

    result: list[tuple[RetentionPolicy, Q]] = []
    for (domain_id, use), policy in chosen.items():
        if domain_id is not None and use:
            q = Q(mailbox__domain_id=domain_id, folder__special_use=use)
        elif domain_id is not None:
            q = Q(mailbox__domain_id=domain_id)
            specific = [u for d, u in domain_folder if d == domain_id]
            if specific:
                q &= ~Q(folder__special_use__in=specific)
        elif use:
            q = Q(folder__special_use=use)
            specific_domains = domain_wide | {d for d, u in domain_folder if u == use}
            if specific_domains:
                q &= ~Q(mailbox__domain_id__in=specific_domains)
        else:
            q = Q()
            if domain_wide:
                q &= ~Q(mailbox__domain_id__in=domain_wide)
            if global_folder:
                q &= ~Q(folder__special_use__in=global_folder)
            for d, u in domain_folder:
                q &= ~Q(mailbox__domain_id=d, folder__special_use=u)
        result.append((policy, q))
    return result


def _due(policy: RetentionPolicy, q: Q, now: datetime) -> QuerySet[MailItem]:
    return MailItem.objects.filter(q, internal_date__lt=now - timedelta(days=policy.days))


def retention_plan(*, now: datetime | None = None) -> RetentionPlan:
    """Dry run: per mailbox, how many items and bytes the policies make due now. Writes
    nothing."""
    now = now or timezone.now()
    rows: dict[int, MailboxRetention] = {}
    for policy, q in _effective_policies():
        counted = (
            _due(policy, q, now)
            .order_by()
            .values("mailbox_id", "mailbox__address")
            .annotate(items=Count("id"), bytes=Sum("size"))
        )
        for row in counted:
            entry = rows.setdefault(
                row["mailbox_id"], MailboxRetention(row["mailbox_id"], row["mailbox__address"])
            )
            entry.items += row["items"]
            entry.bytes += row["bytes"] or 0
    return RetentionPlan(now=now, mailboxes=sorted(rows.values(), key=lambda row: row.address))


# --- Applying ------------------------------------------------------------------------------


@dataclass
class _Tally:
    deleted_items: int = 0
    deleted_bytes: int = 0
    deleted_blobs: int = 0
    held_items: int = 0
    per_mailbox: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _apply_batch(ids: list[int], tally: _Tally) -> set[str]:
    """Delete one batch of due items in one short transaction; returns the blob hashes of
    the messages that went with them."""
    with transaction.atomic():
        rows = list(
            MailItem.objects.filter(pk__in=ids).values(
                "id", "mailbox_id", "mailbox__address", "message_id", "message__blob_sha256", "size"
            )
        )
        by_mailbox: dict[int, list[dict]] = defaultdict(list)
        for row in rows:
            by_mailbox[row["mailbox_id"]].append(row)
        for mailbox_id, mailbox_rows in by_mailbox.items():
            item_ids = [row["id"] for row in mailbox_rows]
            removal = remove_mail_items(
                MailItem.objects.filter(pk__in=item_ids), via="retention", mailbox_id=mailbox_id
            )
            tally.held_items += removal.kept
            if removal.removed:
                # Which ones went: the guard kept whole messages, so look at what is left.
                left = set(MailItem.objects.filter(pk__in=item_ids).values_list("id", flat=True))
                gone = [row for row in mailbox_rows if row["id"] not in left]
                tally.deleted_items += len(gone)
                tally.deleted_bytes += sum(row["size"] for row in gone)
                tally.per_mailbox[mailbox_rows[0]["mailbox__address"]] += len(gone)
        message_ids = {row["message_id"]: row["message__blob_sha256"] for row in rows}
        remaining = set(Message.objects.filter(pk__in=message_ids).values_list("id", flat=True))
        return {sha256 for message_id, sha256 in message_ids.items() if message_id not in remaining}


def _delete_unreferenced_blobs(hashes: set[str]) -> int:
    """Remove blobs no message row uses any more. Checked after the deletion committed: a
    message sharing the content (identical bytes, another delivery) keeps it. A delivery of
    the same bytes that has written the blob but not yet committed its row could still lose
    it in that instant; the window is the length of one accept transaction."""
    if not hashes:
        return 0
    used = set(Message.objects.filter(blob_sha256__in=hashes).values_list("blob_sha256", flat=True))
    store = blob_store()
    return sum(1 for sha256 in hashes - used if store.delete(sha256))


def retention_apply(
    *, now: datetime | None = None, batch_size: int = 500, dry_run: bool = False
) -> RetentionRun:
    """Apply every active policy and record the run. Deletes in batches, each in its own
    short transaction, so a long run never holds locks for long and a crash loses nothing
    but the rest of the run (the next run carries on). Held mail stays (the guard records a
    BlockedDeletion with via="retention"). With `dry_run`, records the plan and deletes
    nothing. Safe to run twice: the second run finds nothing due."""
    now = now or timezone.now()
    run = RetentionRun.objects.create(started_at=now, dry_run=dry_run)
    if dry_run:
        plan = retention_plan(now=now)
        run.deleted_items = plan.total_items
        run.deleted_bytes = plan.total_bytes
        run.per_mailbox = {row.address: row.items for row in plan.mailboxes}
        run.finished_at = timezone.now()
        run.save()
        return run

    tally = _Tally()
    try:
        for policy, q in _effective_policies():
            due = _due(policy, q, now)
            last_id = 0
            while True:
                # Walk by id: held items stay due, so re-reading "the first N due" would loop.
                ids = list(
                    due.filter(pk__gt=last_id).order_by("pk").values_list("id", flat=True)[:batch_size]
                )
                if not ids:
                    break
                last_id = ids[-1]
                hashes = _apply_batch(ids, tally)
                tally.deleted_blobs += _delete_unreferenced_blobs(hashes)
    except Exception as exc:
        # A task boundary: record what happened on the run row, then let Celery see it.
        logger.exception("retention run failed", extra={"retention_run_id": run.pk})
        run.error = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        run.deleted_items = tally.deleted_items
        run.deleted_bytes = tally.deleted_bytes
        run.deleted_blobs = tally.deleted_blobs
        run.held_items = tally.held_items
        run.per_mailbox = dict(tally.per_mailbox)
        run.finished_at = timezone.now()
        run.save()
    if tally.deleted_items or tally.held_items:
        logger.info(
            "retention deleted %d item(s), kept %d held",
            tally.deleted_items,
            tally.held_items,
            extra={"retention_run_id": run.pk},
        )
    return run
