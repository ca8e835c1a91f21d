"""A mailbox user's quarantine preferences: how often a quarantine digest arrives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction

from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, PermissionDeniedError
from apps.mailboxes.models import Mailbox
from apps.threats.models import DigestFrequency, QuarantinePreference
from apps.threats.services.rules import may_manage_mailbox

if TYPE_CHECKING:
    from apps.accounts.models import User

__all__ = ["quarantine_preference_get", "quarantine_preference_set"]


def quarantine_preference_get(*, mailbox: Mailbox) -> QuarantinePreference:
    """The mailbox's preference row, or an unsaved one meaning "the domain's default"
    (`digest == ""`). Never writes."""
    preference = QuarantinePreference.objects.filter(mailbox=mailbox).first()
    return preference if preference is not None else QuarantinePreference(mailbox=mailbox, digest="")


@transaction.atomic
def quarantine_preference_set(*, actor: User, mailbox: Mailbox, digest: str) -> QuarantinePreference:
    """Set the digest frequency ("" = the domain's default, never, daily, weekly) of a
    mailbox its owner, its domain's administrators or a superadmin manage. Idempotent;
    audited when the value changes. Raises PermissionDeniedError or ApplicationError."""
    if digest not in ("", *DigestFrequency.values):
        message = f"Choose one of {', '.join(DigestFrequency.values)} or the domain's default."
        raise ApplicationError(message, fields={"digest": [message]})
    if not may_manage_mailbox(actor, mailbox):
        raise PermissionDeniedError(f"You may not change the quarantine settings of {mailbox.address}.")
    preference, _ = QuarantinePreference.objects.select_for_update().get_or_create(mailbox=mailbox)
    if preference.digest != digest:
        before = preference.digest
        preference.digest = digest
        preference.save(update_fields=["digest"])
        audit(
            "threats.preference_update",
            actor=actor,
            target=preference,
            changes={"digest": [before, digest]},
            domain_id=mailbox.domain_id,
        )
    return preference
