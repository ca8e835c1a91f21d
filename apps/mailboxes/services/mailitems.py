"""Changing filed mail: flags, moves, deletion to Trash and expunge."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils.module_loading import import_string

from apps.accounts.models import User
from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, ConflictError
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message
from apps.mailboxes.search import unindex_messages

logger = logging.getLogger(__name__)

__all__ = [
    "DeletionHeld",
    "MailRemoval",
    "deletion_guards_check",
    "folder_expunge",
    "mail_item_delete",
    "mail_item_move",
    "mail_item_set_flags",
    "mailbox_access_record",
    "mailbox_under_hold",
    "remove_mail_items",
]


class DeletionHeld(ConflictError):
    """A deletion guard (a legal hold) kept some of the mail asked to be deleted. Raised
    after the rest was deleted and committed, so the caller can say what stayed."""

    code = "legal_hold"

    def __init__(self, *, kept: int, removed: int) -> None:
        noun = "message is" if kept == 1 else "messages are"
        super().__init__(
            f"{kept} {noun} under legal hold and could not be deleted ({removed} deleted).",
            fields={"kept": [str(kept)], "removed": [str(removed)]},
        )
        self.kept = kept
        self.removed = removed


@dataclass(frozen=True)
class MailRemoval:
    removed: int  # mail items deleted
    kept: int  # mail items a deletion guard kept


def deletion_guards_check(
    *, message_ids: set[int], mailbox_id: int | None, via: str, actor: User | None
) -> set[int]:
    """Ask every guard in A3_DELETION_GUARDS which of these messages must be kept.

    Guards live in higher apps (compliance's legal holds); this app only knows the
    signature `guard(message_ids, mailbox_id, via, actor) -> set[int]`, so the dependency
    stays one-way. A guard may record what it kept, in the caller's transaction."""
    kept: set[int] = set()
    if not message_ids:
        return kept
    for path in settings.A3_DELETION_GUARDS:
        kept |= import_string(path)(message_ids, mailbox_id, via, actor)
    return kept & message_ids


def mailbox_under_hold(*, mailbox: Mailbox) -> bool:
    """Whether a check in A3_MAILBOX_HOLD_CHECKS says some of this mailbox's mail is under
    legal hold (the pages show it; deletion is decided by the guards, not by this)."""
    return any(import_string(path)(mailbox) for path in settings.A3_MAILBOX_HOLD_CHECKS)


def mailbox_access_record(*, actor: User, mailbox: Mailbox, action: str) -> None:
    """Record an administrator reading someone else's mailbox. (The compliance audit
    log takes this over; until then it is a structured log line.)"""
    if mailbox.owner_id != actor.pk:
        logger.info(
            "admin mailbox access",
            extra={"actor": actor.email, "mailbox": mailbox.address, "action": action},
        )
        audit("mailbox.access", actor=actor, target=mailbox, domain_id=mailbox.domain_id, access=action)


@transaction.atomic
def mail_item_set_flags(
    *,
    actor: User,
    item: MailItem,
    seen: bool | None = None,
    flagged: bool | None = None,
    answered: bool | None = None,
    deleted: bool | None = None,
) -> MailItem:
    """Set IMAP flags; unspecified flags are unchanged. The caller got `item` through a
    scoped selector."""
    changes = {
        name: value
        for name, value in (
            ("seen", seen),
            ("flagged", flagged),
            ("answered", answered),
            ("deleted", deleted),
        )
        if value is not None
    }
    if changes:
        MailItem.objects.filter(pk=item.pk).update(**changes)
        for name, value in changes.items():
            setattr(item, name, value)
        mailbox_access_record(actor=actor, mailbox=item.mailbox, action="flags")
    return item


def _target_folder(item: MailItem, name: str) -> Folder:
    folder = Folder.objects.select_for_update().filter(mailbox=item.mailbox, name__iexact=name).first()
    if folder is None:
        raise ApplicationError(
            f"There is no folder {name} in {item.mailbox.address}.",
            code="unknown_folder",
            fields={"folder": ["No such folder in this mailbox."]},
        )
    return folder


def _refile(item: MailItem, folder: Folder) -> MailItem:
    # A move is a new UID in the target folder (RFC 6851): clients resynchronise by UID.
    uid = folder.uidnext
    Folder.objects.filter(pk=folder.pk).update(uidnext=F("uidnext") + 1)
    MailItem.objects.filter(pk=item.pk).update(folder=folder, uid=uid, deleted=False)
    item.folder, item.uid, item.deleted = folder, uid, False
    return item


@transaction.atomic
def mail_item_move(*, actor: User, item: MailItem, folder_name: str) -> MailItem:
    """Move a message to another folder of the same mailbox."""
    folder = _target_folder(item, folder_name)
    if folder.pk == item.folder_id:
        return item
    mailbox_access_record(actor=actor, mailbox=item.mailbox, action="move")
    return _refile(item, folder)


def mail_item_delete(*, actor: User, item: MailItem) -> MailItem | None:
    """Delete the way mail clients do: to Trash first; from Trash, for good. Returns the
    moved item, or None when it was removed. Raises DeletionHeld (after commit) when a
    legal hold keeps it; moving to Trash is never blocked."""
    moved, removal = _mail_item_delete(actor=actor, item=item)
    if removal.kept:
        raise DeletionHeld(kept=removal.kept, removed=removal.removed)
    return moved


@transaction.atomic
def _mail_item_delete(*, actor: User, item: MailItem) -> tuple[MailItem | None, MailRemoval]:
    mailbox_access_record(actor=actor, mailbox=item.mailbox, action="delete")
    if item.folder.special_use != Folder.SpecialUse.TRASH:
        trash = (
            Folder.objects.select_for_update()
            .filter(mailbox=item.mailbox, special_use=Folder.SpecialUse.TRASH)
            .first()
        )
        if trash is not None:
            return _refile(item, trash), MailRemoval(removed=0, kept=0)
    removal = remove_mail_items(
        MailItem.objects.filter(pk=item.pk), via="user_delete", actor=actor, mailbox_id=item.mailbox_id
    )
    return None, removal


def folder_expunge(*, actor: User, folder: Folder) -> int:
    """Remove every message flagged \\Deleted from the folder; returns how many. Raises
    DeletionHeld (after the others are removed and committed) when legal holds kept some."""
    removal = _folder_expunge(actor=actor, folder=folder)
    if removal.kept:
        raise DeletionHeld(kept=removal.kept, removed=removal.removed)
    return removal.removed


@transaction.atomic
def _folder_expunge(*, actor: User, folder: Folder) -> MailRemoval:
    mailbox_access_record(actor=actor, mailbox=folder.mailbox, action="expunge")
    return remove_mail_items(
        MailItem.objects.filter(folder=folder, deleted=True),
        via="expunge",
        actor=actor,
        mailbox_id=folder.mailbox_id,
    )


def remove_mail_items(
    items: QuerySet[MailItem], *, via: str, actor: User | None = None, mailbox_id: int | None = None
) -> MailRemoval:
    """Delete mail items, give their bytes back to the quota, and drop messages no
    mailbox holds any more. Items whose message a deletion guard keeps (a legal hold) stay.
    Their blobs go with the orphan sweep, after its grace period, so a
    concurrent delivery of identical content can never lose its blob. Run inside a
    transaction: the guards' records and the deletion commit together."""
    rows = list(items.select_for_update().values("id", "mailbox_id", "message_id", "size"))
    if not rows:
        return MailRemoval(removed=0, kept=0)
    kept_messages = deletion_guards_check(
        message_ids={row["message_id"] for row in rows}, mailbox_id=mailbox_id, via=via, actor=actor
    )
    kept = sum(1 for row in rows if row["message_id"] in kept_messages)
    rows = [row for row in rows if row["message_id"] not in kept_messages]
    if not rows:
        return MailRemoval(removed=0, kept=kept)
    freed: dict[int, int] = {}
    for row in rows:
        freed[row["mailbox_id"]] = freed.get(row["mailbox_id"], 0) + row["size"]
    MailItem.objects.filter(pk__in=[row["id"] for row in rows]).delete()
    for freed_id, size in freed.items():
        Mailbox.objects.filter(pk=freed_id).update(used_bytes=F("used_bytes") - size)
        # Never below zero, whatever happened before (e.g. a quota recalculation).
        Mailbox.objects.filter(pk=freed_id, used_bytes__lt=0).update(used_bytes=0)
    message_ids = {row["message_id"] for row in rows}
    # A message the outbound queue still refers to (a sent copy) stays for the queue.
    unheld = list(
        Message.objects.filter(
            pk__in=message_ids, state=Message.State.DELIVERED, items__isnull=True, queue_items__isnull=True
        ).values_list("id", flat=True)
    )
    if unheld:
        Message.objects.filter(pk__in=unheld).delete()
        unindex_messages(unheld)
    return MailRemoval(removed=len(rows), kept=kept)
