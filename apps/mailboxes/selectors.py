from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, replace
from typing import BinaryIO

from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from apps.accounts.models import User
from apps.core.addresses import AddressError, parse_address
from apps.core.exceptions import NotFoundError
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import Alias, AliasDestination, Domain, Folder, Mailbox, MailItem
from apps.mailboxes.parsing import AttachmentInfo, attachment_of, headers_of, parse_message
from apps.mailboxes.rendering import sanitize_html
from apps.mailboxes.search import filter_items as search_items

logger = logging.getLogger(__name__)


def _count_in_domain(model: type[Mailbox] | type[Alias]) -> Coalesce:
    # A correlated subquery, not Count() over a join: the visibility filter may itself join
    # mailboxes, and a joined Count would then count only the rows that filter kept.
    counted = (
        model.objects.filter(domain=OuterRef("pk"))
        .order_by()
        .values("domain")
        .annotate(total=Count("pk"))
        .values("total")
    )
    return Coalesce(Subquery(counted), 0)


def domain_list(*, actor: User) -> QuerySet[Domain]:
    return (
        Domain.objects.visible_to(actor)
        .annotate(mailbox_count=_count_in_domain(Mailbox), alias_count=_count_in_domain(Alias))
        .prefetch_related(Prefetch("admins", queryset=User.objects.only("id", "email")))
        .order_by("name")
    )


def domain_get(*, actor: User, domain_id: int | str) -> Domain:
    try:
        return domain_list(actor=actor).get(pk=int(domain_id))
    except (Domain.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such domain.") from None


def domain_is_visible(*, actor: User, domain_id: int) -> bool:
    return Domain.objects.visible_to(actor).filter(pk=domain_id).exists()


def domains_manageable(*, actor: User) -> QuerySet[Domain]:
    return Domain.objects.manageable_by(actor)


def mailbox_list(*, actor: User) -> QuerySet[Mailbox]:
    return Mailbox.objects.visible_to(actor).select_related("domain", "owner")


def mailbox_get(*, actor: User, mailbox_id: int | str) -> Mailbox:
    try:
        return mailbox_list(actor=actor).get(pk=int(mailbox_id))
    except (Mailbox.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such mailbox.") from None


def alias_list(*, actor: User) -> QuerySet[Alias]:
    return (
        Alias.objects.visible_to(actor)
        .select_related("domain")
        .prefetch_related(
            Prefetch("destinations", queryset=AliasDestination.objects.order_by("id")),
            Prefetch("send_as", queryset=Mailbox.objects.only("id", "address")),
        )
    )


def alias_get(*, actor: User, alias_id: int | str) -> Alias:
    try:
        return alias_list(actor=actor).get(pk=int(alias_id))
    except (Alias.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such alias.") from None


@dataclass(frozen=True)
class Overview:
    domains: int
    mailboxes: int
    mailboxes_disabled: int
    aliases: int
    quota_used_bytes: int


def overview_counts(*, actor: User) -> Overview:
    mailboxes = Mailbox.objects.visible_to(actor)
    return Overview(
        domains=Domain.objects.visible_to(actor).count(),
        mailboxes=mailboxes.count(),
        mailboxes_disabled=mailboxes.filter(is_active=False).count(),
        aliases=Alias.objects.visible_to(actor).count(),
        quota_used_bytes=sum(mailboxes.values_list("used_bytes", flat=True)),
    )


# --- Messages --------------------------------------------------------------------------


def mailbox_get_by_address(*, actor: User, address: str) -> Mailbox:
    try:
        normalized = parse_address(address).value
        return mailbox_list(actor=actor).get(address=normalized)
    except (AddressError, Mailbox.DoesNotExist):
        raise NotFoundError(f"No mailbox {address}.") from None


def folder_list(*, actor: User, mailbox: Mailbox) -> QuerySet[Folder]:
    """The mailbox's folders with `total` and `unread` counts (not counting \\Deleted)."""
    if not mailbox_list(actor=actor).filter(pk=mailbox.pk).exists():
        return Folder.objects.none()
    live = Q(items__deleted=False)
    return (
        Folder.objects.filter(mailbox=mailbox)
        .annotate(
            total=Count("items", filter=live),
            unread=Count("items", filter=live & Q(items__seen=False)),
        )
        .order_by("id")
    )


def folder_get(*, actor: User, mailbox: Mailbox, name: str) -> Folder:
    folder = folder_list(actor=actor, mailbox=mailbox).filter(name__iexact=name).first()
    if folder is None:
        raise NotFoundError(f"No folder {name} in {mailbox.address}.")
    return folder


def mail_item_list(
    *,
    actor: User,
    mailbox: Mailbox | None = None,
    folder: Folder | None = None,
    unread: bool | None = None,
    flagged: bool | None = None,
    search: str = "",
    include_deleted: bool = False,
) -> QuerySet[MailItem]:
    """Messages filed in mailboxes the actor may see, newest first."""
    items = MailItem.objects.visible_to(actor).select_related("message", "folder", "mailbox")
    if mailbox is not None:
        items = items.filter(mailbox=mailbox)
    if folder is not None:
        items = items.filter(folder=folder)
    if not include_deleted:
        items = items.filter(deleted=False)
    if unread is not None:
        items = items.filter(seen=not unread)
    if flagged is not None:
        items = items.filter(flagged=flagged)
    if search:
        items = search_items(items, search)
    return items.order_by("-internal_date", "-id")


def mail_item_get(*, actor: User, item_id: int | str) -> MailItem:
    try:
        return (
            MailItem.objects.visible_to(actor)
            .select_related("message", "folder", "mailbox", "mailbox__domain")
            .get(pk=int(item_id))
        )
    except (MailItem.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such message.") from None


def mail_item_raw(*, item: MailItem) -> bytes:
    """The exact stored bytes of the message (as received, with our trace headers).
    Raises NotFoundError (code content_missing) if the blob is gone."""
    try:
        return blob_store().read(item.message.blob_sha256)
    except BlobNotFound:
        raise _content_missing(item) from None


# --- Reading one message ---------------------------------------------------------------


@dataclass(frozen=True)
class MessageContent:
    """What a reader sees of a message. `html` is sanitised (never raw mail HTML)."""

    headers: list[tuple[str, str]]
    text: str
    html: str | None
    blocked_images: int  # remote images swapped for a blank image
    remote_images: bool  # whether remote images were allowed
    attachments: list[AttachmentInfo]


@dataclass(frozen=True)
class MessageAttachment:
    filename: str  # safe as a download name: no path, no control or bidi characters
    content_type: str
    data: bytes


def _content_missing(item: MailItem) -> NotFoundError:
    # Nothing the reader can do about it; operators get the log line.
    logger.error("blob %s of message %s is missing", item.message.blob_sha256, item.message.queue_id)
    return NotFoundError("The stored content of this message is missing.", code="content_missing")


def mail_item_open_raw(*, item: MailItem) -> BinaryIO:
    """The exact stored bytes as an open binary file (the caller closes it), for
    streaming. Raises NotFoundError (code content_missing) if the blob is gone."""
    try:
        return blob_store().open(item.message.blob_sha256)
    except BlobNotFound:
        raise _content_missing(item) from None


def mail_item_content(*, item: MailItem, allow_remote_images: bool = False) -> MessageContent:
    """Headers, text, sanitised HTML and attachment list (with safe filenames) of a
    filed message. No script survives the HTML sanitiser; remote images only when
    allowed. Reads, never marks the message seen. Raises NotFoundError if the stored
    bytes are missing."""
    raw = mail_item_raw(item=item)
    parsed = parse_message(raw)
    sanitized = (
        sanitize_html(parsed.html, allow_remote_images=allow_remote_images)
        if parsed.html is not None
        else None
    )
    return MessageContent(
        headers=headers_of(raw),
        text=parsed.text,
        html=sanitized.html if sanitized else None,
        blocked_images=sanitized.blocked_images if sanitized else 0,
        remote_images=allow_remote_images,
        attachments=[
            replace(info, filename=_safe_filename(info.filename, f"attachment-{info.index}"))
            for info in parsed.attachments
        ],
    )


_FILENAME_RESERVED = set('<>:"/\\|?*')  # not allowed in names on Windows


def _safe_filename(name: str, fallback: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # no directories
    # Drop Unicode "other" characters: controls, format characters (a right-to-left
    # override disguises "txt.exe" as "exe.txt"), surrogates, private use, unassigned.
    cleaned = "".join(
        "_" if char in _FILENAME_RESERVED else char
        for char in name
        if not unicodedata.category(char).startswith("C")
    )
    cleaned = cleaned.strip(" .")[:150].strip(" .")
    return cleaned or fallback


def mail_item_attachment(*, item: MailItem, index: int | str) -> MessageAttachment:
    """One attachment (by the MIME part index from `mail_item_content`) with a safe
    download filename. Raises NotFoundError for an index that is not an attachment."""
    try:
        position = int(index)
    except (TypeError, ValueError):
        raise NotFoundError("No such attachment.") from None
    raw = mail_item_raw(item=item)
    if position not in {info.index for info in parse_message(raw).attachments}:
        raise NotFoundError("No such attachment.")
    found = attachment_of(raw, position)
    if found is None:
        raise NotFoundError("No such attachment.")
    filename, content_type, data = found
    return MessageAttachment(
        filename=_safe_filename(filename, f"attachment-{position}"),
        content_type=content_type,
        data=data,
    )
