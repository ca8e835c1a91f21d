"""WebSocket authentication: the session cookie (browsers) or `Authorization: Bearer`."""

from __future__ import annotations

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from apps.accounts import services


class NonBrowserTolerantOriginValidator(OriginValidator):
    """Reject cross-site browser handshakes (CSWSH); allow clients that send no Origin.

    Browsers always send Origin, so a missing one means a script or CLI, which can only
    authenticate with a bearer token: the session cookie is ignored without a valid Origin.
    """

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


def websocket_origin_guard(app):
    hosts = list(settings.ALLOWED_HOSTS) or ["localhost", "127.0.0.1", "[::1]"]
    return NonBrowserTolerantOriginValidator(app, hosts)


@database_sync_to_async
def _user_for_bearer(secret: str):
    resolved = services.api_token_authenticate(secret)
    return resolved[0] if resolved else AnonymousUser()


class WebSocketAuthMiddleware:
    """Bearer token when the handshake carries one, else the Django session cookie
    (channels' AuthMiddlewareStack), and only for handshakes that carry an Origin."""

    def __init__(self, inner):
        self.inner = inner
        self.session_auth = CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"").split()
        if len(auth) == 2 and auth[0].lower() == b"bearer":
            scope = dict(scope, user=await _user_for_bearer(auth[1].decode("ascii", "replace")))
            return await self.inner(scope, receive, send)
        if b"origin" not in headers:
            # No browser, so no cookie auth (see NonBrowserTolerantOriginValidator).
            return await self.inner(dict(scope, user=AnonymousUser()), receive, send)
        return await self.session_auth(scope, receive, send)
