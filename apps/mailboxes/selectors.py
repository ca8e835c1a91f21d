from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from apps.accounts.models import User
from apps.core.addresses import AddressError, parse_address
from apps.core.exceptions import NotFoundError
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Alias, AliasDestination, Domain, Folder, Mailbox, MailItem
from apps.mailboxes.search import filter_items as search_items


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
        .prefetch_related(Prefetch("destinations", queryset=AliasDestination.objects.order_by("id")))
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
    """The exact stored bytes of the message (as received, with our trace headers)."""
    return blob_store().read(item.message.blob_sha256)
