"""WebSocket authentication: the session cookie (browsers) or `Authorization: Bearer`."""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import validate_host

from apps.accounts import services


class SameOriginWebSocketGuard:
    """Refuse cross-site browser handshakes (cross-site WebSocket hijacking).

    A browser always sends Origin; it must name exactly the host and port the handshake
    was sent to (the Host header), and that host must be one we serve (ALLOWED_HOSTS).
    Clients that send no Origin are scripts: they can only authenticate with a bearer
    token, because the session cookie is ignored without an Origin.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not self._allowed(dict(scope.get("headers", []))):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def _allowed(headers: dict[bytes, bytes]) -> bool:
        origin = headers.get(b"origin")
        if origin is None:
            return True
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        parsed = urlsplit(origin.decode("latin-1").strip().lower())
        if parsed.scheme not in {"http", "https"} or not host or parsed.netloc != host:
            return False
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return validate_host(hostname, settings.ALLOWED_HOSTS)


def websocket_origin_guard(app):
    return SameOriginWebSocketGuard(app)


@database_sync_to_async
def _user_for_bearer(secret: str):
    resolved = services.api_token_authenticate(secret)
    # An enrolment-scope token reaches the MFA enrolment endpoints and nothing else.
    if not resolved or resolved[1].scope != "full":
        return AnonymousUser()
    return resolved[0]


@database_sync_to_async
def _session_user_usable(user, session_key: str | None) -> bool:
    """A session user counts only while the session is tracked (not revoked elsewhere) and,
    when the policy wants a second factor, has passed one: the same rules as the pages."""
    from apps.accounts import mfa
    from apps.accounts.models import UserSession

    if not user.is_authenticated or not session_key:
        return False
    row = UserSession.objects.filter(session_key=session_key, user_id=user.pk).values("mfa_verified").first()
    if row is None:
        return False
    return row["mfa_verified"] or not mfa.mfa_required(user)


class _SessionGate:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        session = scope.get("session")
        key = getattr(session, "session_key", None)
        if not await _session_user_usable(scope.get("user", AnonymousUser()), key):
            scope = dict(scope, user=AnonymousUser())
        return await self.inner(scope, receive, send)


class WebSocketAuthMiddleware:
    """Bearer token when the handshake carries one, else the Django session cookie
    (channels' AuthMiddlewareStack), and only for handshakes that carry an Origin."""

    def __init__(self, inner):
        self.inner = inner
        self.session_auth = CookieMiddleware(SessionMiddleware(AuthMiddleware(_SessionGate(inner))))

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"").split()
        if len(auth) == 2 and auth[0].lower() == b"bearer":
            scope = dict(scope, user=await _user_for_bearer(auth[1].decode("ascii", "replace")))
            return await self.inner(scope, receive, send)
        if b"origin" not in headers:
            # No browser, so no cookie auth (see SameOriginWebSocketGuard).
            return await self.inner(dict(scope, user=AnonymousUser()), receive, send)
        return await self.session_auth(scope, receive, send)
