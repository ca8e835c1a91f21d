"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a3mailer.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from a3mailer.routing import websocket_urlpatterns  # noqa: E402
from apps.accounts.websocket import WebSocketAuthMiddleware, websocket_origin_guard  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_origin_guard(WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
