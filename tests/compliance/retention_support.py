"""Filing mail straight into folders for the retention and legal-hold tests."""

from __future__ import annotations

import itertools
from datetime import datetime

from django.db.models import F
from django.utils import timezone

from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message

_serial = itertools.count(1)


def file_mail(
    mailbox: Mailbox,
    *,
    folder: str = "INBOX",
    when: datetime | None = None,
    raw: bytes | None = None,
    mail_from: str = "sender@remote.test",
    from_header: str = "Sender <sender@remote.test>",
    deleted: bool = False,
    message: Message | None = None,
) -> MailItem:
    """A delivered message (its blob in the store) filed in `mailbox`/`folder` at `when`;
    pass `message` to file an existing one (a second copy)."""
    when = when or timezone.now()
    if message is None:
        n = next(_serial)
        raw = raw or f"From: {from_header}\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()
        message = Message.objects.create(
            queue_id=f"RT{n:010d}",
            blob_sha256=blob_store().put(raw),
            size=len(raw),
            state=Message.State.DELIVERED,
            mail_from=mail_from,
            from_header=from_header,
            received_at=when,
        )
    target = Folder.objects.get(mailbox=mailbox, name=folder)
    uid = target.uidnext
    Folder.objects.filter(pk=target.pk).update(uidnext=F("uidnext") + 1)
    item = MailItem.objects.create(
        mailbox=mailbox,
        folder=target,
        message=message,
        uid=uid,
        size=message.size,
        internal_date=when,
        deleted=deleted,
    )
    Mailbox.objects.filter(pk=mailbox.pk).update(used_bytes=F("used_bytes") + message.size)
    return item
