from __future__ import annotations

from django.db.models import QuerySet

from apps.accounts.models import SsoProvider, User
from apps.core.exceptions import NotFoundError


def sso_provider_list(*, actor: User) -> QuerySet[SsoProvider]:
    """Every identity provider for superadmins; nothing for anyone else."""
    if not (actor.is_authenticated and actor.is_superadmin):
        return SsoProvider.objects.none()
    return SsoProvider.objects.all()


def sso_provider_get(*, actor: User, provider_id: int | str) -> SsoProvider:
    try:
        return sso_provider_list(actor=actor).get(pk=int(provider_id))
    except (SsoProvider.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such identity provider.") from None


def sso_provider_list_enabled() -> QuerySet[SsoProvider]:
    """The providers offered on the login page (public: names and slugs only are shown)."""
    return SsoProvider.objects.filter(enabled=True).only("pk", "slug", "name", "kind")


def sso_provider_get_enabled(*, slug: str = "", pk: int | str | None = None) -> SsoProvider:
    """An enabled provider by slug or primary key; NotFoundError for a disabled one too."""
    providers = SsoProvider.objects.filter(enabled=True)
    try:
        if pk is not None:
            return providers.get(pk=int(pk))
        return providers.get(slug=slug)
    except (SsoProvider.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such identity provider.") from None
