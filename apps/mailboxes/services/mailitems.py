"""Changing filed mail: flags, moves, deletion to Trash and expunge."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import F, QuerySet

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message
from apps.mailboxes.search import unindex_messages

logger = logging.getLogger(__name__)

__all__ = [
    "folder_expunge",
    "mail_item_delete",
    "mail_item_move",
    "mail_item_set_flags",
    "mailbox_access_record",
    "remove_mail_items",
]


def mailbox_access_record(*, actor: User, mailbox: Mailbox, action: str) -> None:
    """Record an administrator reading someone else's mailbox. (The compliance audit
    log takes this over; until then it is a structured log line.)"""
    if mailbox.owner_id != actor.pk:
        logger.info(
            "admin mailbox access",
            extra={"actor": actor.email, "mailbox": mailbox.address, "action": action},
        )


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


@transaction.atomic
def mail_item_delete(*, actor: User, item: MailItem) -> MailItem | None:
    """Delete the way mail clients do: to Trash first; from Trash, for good. Returns the
    moved item, or None when it was removed."""
    mailbox_access_record(actor=actor, mailbox=item.mailbox, action="delete")
    if item.folder.special_use != Folder.SpecialUse.TRASH:
        trash = (
            Folder.objects.select_for_update()
            .filter(mailbox=item.mailbox, special_use=Folder.SpecialUse.TRASH)
            .first()
        )
        if trash is not None:
            return _refile(item, trash)
    remove_mail_items(MailItem.objects.filter(pk=item.pk))
    return None


@transaction.atomic
def folder_expunge(*, actor: User, folder: Folder) -> int:
    """Remove every message flagged \\Deleted from the folder; returns how many."""
    mailbox_access_record(actor=actor, mailbox=folder.mailbox, action="expunge")
    return remove_mail_items(MailItem.objects.filter(folder=folder, deleted=True))


def remove_mail_items(items: QuerySet[MailItem]) -> int:
    """Delete mail items, give their bytes back to the quota, and drop messages no
    mailbox holds any more. Their blobs go with the orphan sweep, after its grace period, so a
    concurrent delivery of identical content can never lose its blob."""
    rows = list(items.select_for_update().values("id", "mailbox_id", "message_id", "size"))
    if not rows:
        return 0
    freed: dict[int, int] = {}
    for row in rows:
        freed[row["mailbox_id"]] = freed.get(row["mailbox_id"], 0) + row["size"]
    MailItem.objects.filter(pk__in=[row["id"] for row in rows]).delete()
    for mailbox_id, size in freed.items():
        Mailbox.objects.filter(pk=mailbox_id).update(used_bytes=F("used_bytes") - size)
        # Never below zero, whatever happened before (e.g. a quota recalculation).
        Mailbox.objects.filter(pk=mailbox_id, used_bytes__lt=0).update(used_bytes=0)
    message_ids = {row["message_id"] for row in rows}
    unheld = list(
        Message.objects.filter(
            pk__in=message_ids, state=Message.State.DELIVERED, items__isnull=True
        ).values_list("id", flat=True)
    )
    if unheld:
        Message.objects.filter(pk__in=unheld).delete()
        unindex_messages(unheld)
    return len(rows)
