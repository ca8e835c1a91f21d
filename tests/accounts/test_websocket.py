"""The WebSocket origin guard (apps/accounts/websocket.py)."""

import pytest

from apps.accounts.websocket import SameOriginWebSocketGuard


@pytest.mark.parametrize(
    "origin, host, allowed",
    [
        ("http://localhost:8000", "localhost:8000", True),
        ("http://localhost:9999", "localhost:8000", False),  # same host, other port
        ("https://evil.example", "localhost:8000", False),
        ("http://evil.example:8000", "evil.example:8000", False),  # host not served
        ("null", "localhost:8000", False),
    ],
)
def test_same_origin_guard_compares_host_and_port(origin, host, allowed):
    headers = {b"origin": origin.encode(), b"host": host.encode()}
    assert SameOriginWebSocketGuard._allowed(headers) is allowed
