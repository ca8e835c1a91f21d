"""Outbound data loss prevention: per-domain policies, the submission check that applies
them, and the reads (scoped by role) that pages and the API share.

A policy says "mail from this domain to external recipients holding more than
`threshold` distinct items of `category` is held (or only alerted about)". The check runs
inside `submission_accept`'s transaction (settings.A3_SUBMISSION_CHECKS), after the
message's queue items exist and before the transaction commits, so no delivery attempt can
start before a hold is in place.

"Hold" uses the outbound queue's own hold (QueueItem.on_hold): administrators see the item
on the queue page and release or delete it there. Quarantine of outbound mail, once it
exists, will take over this action.

Scoping: superadmins see every policy and hit; domain admins those of the domains they
administer; mailbox users none. Outside the scope is "not found".
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from apps.compliance.models import DlpHit, DlpPolicy, MessageClassification
from apps.compliance.services.classification import CATEGORIES, classify_message, message_classification_store
from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.mailboxes.models import Domain, Mailbox, MailItem, Message

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

__all__ = [
    "dlp_classification_list",
    "dlp_hit_list",
    "dlp_hits_by_category",
    "dlp_policy_create",
    "dlp_policy_delete",
    "dlp_policy_get",
    "dlp_policy_list",
    "dlp_policy_update",
    "outbound_dlp_check",
]


# --- Reads -----------------------------------------------------------------------------


def dlp_policy_list(*, actor: User) -> QuerySet[DlpPolicy]:
    """Policies of the domains `actor` administers (all for superadmins)."""
    return DlpPolicy.objects.filter(domain__in=Domain.objects.manageable_by(actor)).select_related("domain")


def dlp_policy_get(*, actor: User, policy_id: int | str) -> DlpPolicy:
    """One visible policy; NotFoundError otherwise (also for a malformed id)."""
    try:
        return dlp_policy_list(actor=actor).get(pk=int(policy_id))
    except (DlpPolicy.DoesNotExist, TypeError, ValueError):
        raise NotFoundError("No such DLP policy.") from None


def dlp_hit_list(*, actor: User) -> QuerySet[DlpHit]:
    """Hits on mail sent from the domains `actor` administers, newest first. Scoped by the
    submitting mailbox's domain (or the policy's, should the mailbox be gone), never by the
    sender address the message claims."""
    hits = DlpHit.objects.select_related("message", "policy__domain").defer("message__body_text")
    if not getattr(actor, "is_authenticated", False) or not actor.is_active or not actor.is_admin:
        return hits.none()
    if actor.is_superadmin:
        return hits
    domains = Domain.objects.manageable_by(actor)
    return hits.filter(Q(message__submitted_by__domain__in=domains) | Q(policy__domain__in=domains))


def dlp_hits_by_category(*, actor: User, days: int = 30) -> list[dict[str, object]]:
    """[{"category", "label", "hits", "items"}] of the last `days` days, most hits first."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        dlp_hit_list(actor=actor)
        .filter(created_at__gte=since)
        .order_by()
        .values("category")
        .annotate(hits=Count("id"), items=Sum("count"))
        .order_by("-hits", "category")
    )
    return [{**row, "label": CATEGORIES.get(str(row["category"]), row["category"])} for row in rows]


def dlp_classification_list(*, actor: User) -> QuerySet[MessageClassification]:
    """Classifications of the messages `actor` may read: mail filed in a mailbox they can
    see, and mail one of those mailboxes submitted."""
    visible_items = MailItem.objects.visible_to(actor).values("message_id")
    visible_senders = Mailbox.objects.visible_to(actor).values("pk")
    messages = Message.objects.filter(Q(pk__in=visible_items) | Q(submitted_by__in=visible_senders))
    return MessageClassification.objects.filter(message__in=messages).select_related("message")


# --- Policies --------------------------------------------------------------------------


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ApplicationError(
            "Unknown category.", fields={"category": [f"One of: {', '.join(sorted(CATEGORIES))}."]}
        )


def _policy_state(policy: DlpPolicy) -> dict[str, object]:
    return {
        "category": policy.category,
        "threshold": policy.threshold,
        "action": policy.action,
        "is_active": policy.is_active,
    }


@transaction.atomic
def dlp_policy_create(
    *, actor: User, domain_id: int, category: str, threshold: int, action: str, is_active: bool = True
) -> DlpPolicy:
    """Add a policy for a domain `actor` administers. Raises NotFoundError (domain out of
    scope), ApplicationError (bad category or action), ConflictError (the domain already
    has a policy for the category). Audited."""
    domain = Domain.objects.manageable_by(actor).filter(pk=domain_id).first()
    if domain is None:
        raise NotFoundError("No such domain.")
    _check_category(category)
    if action not in DlpPolicy.Action.values:
        raise ApplicationError("Unknown action.", fields={"action": ["One of: hold, alert."]})
    if DlpPolicy.objects.filter(domain=domain, category=category).exists():
        raise ConflictError(f"{domain.name} already has a policy for {category}.", code="dlp_policy_exists")
    policy = DlpPolicy(
        domain=domain, category=category, threshold=threshold, action=action, is_active=is_active
    )
    try:
        with transaction.atomic():  # a concurrent create loses on the unique constraint
            policy.save()
    except IntegrityError:
        raise ConflictError(
            f"{domain.name} already has a policy for {category}.", code="dlp_policy_exists"
        ) from None
    audit(
        "compliance.dlp_policy_create",
        actor=actor,
        target=policy,
        changes=_policy_state(policy),
        domain_id=domain.pk,
    )
    return policy


@transaction.atomic
def dlp_policy_update(
    *,
    actor: User,
    policy: DlpPolicy,
    threshold: int | None = None,
    action: str | None = None,
    is_active: bool | None = None,
) -> DlpPolicy:
    """Change a visible policy's threshold, action or state (domain and category are its
    identity: delete it and add another instead). Audited."""
    policy = dlp_policy_get(actor=actor, policy_id=policy.pk)
    before = _policy_state(policy)
    if action is not None and action not in DlpPolicy.Action.values:
        raise ApplicationError("Unknown action.", fields={"action": ["One of: hold, alert."]})
    for name, value in (("threshold", threshold), ("action", action), ("is_active", is_active)):
        if value is not None:
            setattr(policy, name, value)
    policy.save(update_fields=["threshold", "action", "is_active"])
    after = _policy_state(policy)
    changes = {key: [before[key], after[key]] for key in after if before[key] != after[key]}
    audit(
        "compliance.dlp_policy_update",
        actor=actor,
        target=policy,
        changes=changes,
        domain_id=policy.domain_id,
    )
    return policy


@transaction.atomic
def dlp_policy_delete(*, actor: User, policy: DlpPolicy) -> None:
    """Delete a visible policy; its past hits stay (without the policy). Audited."""
    policy = dlp_policy_get(actor=actor, policy_id=policy.pk)
    audit(
        "compliance.dlp_policy_delete",
        actor=actor,
        target=policy,
        changes=_policy_state(policy),
        domain_id=policy.domain_id,
    )
    policy.delete()


# --- The submission check --------------------------------------------------------------


def outbound_dlp_check(
    *, message: Message, raw: bytes, sender_domain_id: int, remote_recipients: list[str]
) -> None:
    """Apply the sender domain's active policies to a submitted message (see the module
    docstring). Runs in the caller's transaction; records a DlpHit per matching policy,
    holds the message's queue items when a matching policy says so, and raises one
    `compliance.dlp_hit` alert. Mail to local recipients only is never checked.

    Fails open: if classification itself breaks, the mail goes out and the error is
    logged (a detector bug must not stop a domain's outbound mail).
    """
    from apps.alerts.services import emit
    from apps.relay.models import QueueItem

    if not remote_recipients:
        return
    policies = list(DlpPolicy.objects.filter(domain_id=sender_domain_id, is_active=True))
    if not policies:
        return  # nothing to enforce: no classification on the submission path
    try:
        categories = classify_message(raw=raw)
    except Exception:  # fails open, see the docstring
        logger.exception("DLP classification of message %s failed", message.queue_id)
        return
    if categories:
        message_classification_store(message_id=message.pk, categories=categories)
    matched = [policy for policy in policies if categories.get(policy.category, 0) > policy.threshold]
    if not matched:
        return
    hold = any(policy.action == DlpPolicy.Action.HOLD for policy in matched)
    if hold:
        QueueItem.objects.filter(message=message).update(on_hold=True)
    DlpHit.objects.bulk_create(
        DlpHit(
            policy=policy,
            message=message,
            category=policy.category,
            count=categories[policy.category],
            action=policy.action,
        )
        for policy in matched
    )
    found = ", ".join(f"{categories[policy.category]} {policy.category}" for policy in matched)
    emit(
        "compliance.dlp_hit",
        "warning",
        f"Outbound message {message.queue_id} holds {found}: "
        + ("held in the queue for review." if hold else "sent (alert only)."),
        domain_id=sender_domain_id,
        message_id=message.pk,
        queue_id=message.queue_id,
        categories={policy.category: categories[policy.category] for policy in matched},
        action=DlpPolicy.Action.HOLD if hold else DlpPolicy.Action.ALERT,
    )
