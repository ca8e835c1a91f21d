from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce

from apps.accounts.models import User
from apps.core.exceptions import NotFoundError
from apps.mailboxes.models import Alias, AliasDestination, Domain, Mailbox


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
