from __future__ import annotations

from django.db.models import QuerySet

from apps.accounts.models import ApiToken, AuthEvent, User
from apps.core.exceptions import NotFoundError


def user_list(*, actor: User) -> QuerySet[User]:
    return User.objects.visible_to(actor)


def user_get(*, actor: User, user_id: int) -> User:
    try:
        return user_list(actor=actor).get(pk=user_id)
    except (User.DoesNotExist, ValueError):
        raise NotFoundError("No such user.") from None


def user_get_by_email(*, actor: User, email: str) -> User:
    try:
        return user_list(actor=actor).get(email=email.strip().lower())
    except User.DoesNotExist:
        raise NotFoundError(f"No user {email}.") from None


def api_token_list(*, actor: User) -> QuerySet[ApiToken]:
    """The actor's own tokens: tokens are listable and revocable by their owner only."""
    if not actor.is_authenticated:
        return ApiToken.objects.none()
    return ApiToken.objects.filter(user=actor)


def api_token_get(*, actor: User, token_id: int) -> ApiToken:
    try:
        return api_token_list(actor=actor).get(pk=token_id)
    except (ApiToken.DoesNotExist, ValueError):
        raise NotFoundError("No such token.") from None


def auth_event_list(*, actor: User) -> QuerySet[AuthEvent]:
    """Superadmins see every auth event; others see their own."""
    if not actor.is_authenticated:
        return AuthEvent.objects.none()
    if actor.is_superadmin:
        return AuthEvent.objects.select_related("user")
    return AuthEvent.objects.filter(user=actor).select_related("user")
