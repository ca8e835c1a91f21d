from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.alerts import selectors

# Close codes in the application range (RFC 6455 §7.4.2).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class AlertConsumer(AsyncJsonWebsocketConsumer):
    """Live alert feed for administrators: joins the groups the user may see, forwards
    `alerts.created` events as JSON objects, and never writes anything."""

    groups_joined: list[str]

    async def connect(self) -> None:
        self.groups_joined = []
        user = self.scope.get("user")
        # Refusals accept first and then close with a code, so that clients can tell
        # "sign in" (4401) from "not allowed" (4403); a bare refusal is an opaque HTTP 403.
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        groups = await database_sync_to_async(selectors.alert_groups_for)(actor=user)
        if not groups:
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: dict, **kwargs: object) -> None:
        # The feed is one-way; a ping gets a pong so clients can check liveness.
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def alerts_created(self, event: dict) -> None:
        await self.send_json(event["payload"])
