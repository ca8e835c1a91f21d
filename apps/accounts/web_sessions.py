"""Web sessions as users see them: one UserSession row per signed-in browser, started by
login_complete and marked when a second factor is verified."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils import timezone

from apps.accounts.models import User, UserSession

__all__ = ["web_session_mark_verified", "web_session_start"]


def web_session_start(*, request: HttpRequest, user: User, method: str, mfa_verified: bool) -> UserSession:
    """Record the session Django just started for `user` (call after django's login())."""
    from apps.accounts.services import ClientInfo

    if not request.session.session_key:
        request.session.save()
    client = ClientInfo.from_request(request)
    session, _ = UserSession.objects.update_or_create(
        session_key=request.session.session_key,
        defaults={
            "user": user,
            "ip": client.ip,
            "user_agent": client.user_agent[:300],
            "created_at": timezone.now(),
            "last_seen_at": timezone.now(),
            "mfa_verified": mfa_verified,
            "method": method,
        },
    )
    return session


def web_session_mark_verified(*, request: HttpRequest) -> None:
    """The session's user has just passed a second factor."""
    if request.session.session_key:
        UserSession.objects.filter(session_key=request.session.session_key).update(
            mfa_verified=True, last_seen_at=timezone.now()
        )
