"""Push small JSON events to Channels groups, only once the surrounding transaction commits."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# The event loop that serves WebSockets in this process, when `serve` runs the web role.
# The in-memory layer's queues belong to that loop, so sends from other threads (the
# embedded Celery worker) must be handed to it rather than run on a loop of their own.
_home_loop: asyncio.AbstractEventLoop | None = None


def set_home_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    global _home_loop
    _home_loop = loop


def _on_home_loop() -> bool:
    try:
        return asyncio.get_running_loop() is _home_loop
    except RuntimeError:
        return False


def broadcast(*, group: str, type: str, payload: dict) -> None:
    """Send now. A channel layer that is down must not fail the caller's operation."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": type, "payload": payload}
    try:
        home = _home_loop
        if isinstance(layer, InMemoryChannelLayer) and home is not None and home.is_running():
            future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), home)
            if not _on_home_loop():
                future.result(timeout=5)
        else:
            async_to_sync(layer.group_send)(group, message)
    except Exception:
        logger.exception("realtime broadcast to %s failed", group)


def broadcast_on_commit(*, group: str, type: str, payload: dict) -> None:
    transaction.on_commit(lambda: broadcast(group=group, type=type, payload=payload))
