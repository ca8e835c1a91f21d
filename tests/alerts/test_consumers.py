"""The /ws/alerts/ feed through the full ASGI stack: origin guard, auth middleware, consumer."""

from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django.test import Client
from django.utils.dateparse import parse_datetime

from a3mailer.asgi import application
from apps.accounts import services as account_services
from apps.alerts import services as alert_services
from tests.factories import TEST_PASSWORD, DomainAdminFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

WS_PATH = "/ws/alerts/"
GOOD_ORIGIN = b"http://localhost"
# Browsers send Host with every handshake; the origin guard compares Origin with it.
BROWSER_HOST = [(b"host", b"localhost")]

EVIL_ORIGIN = b"https://evil.example"


@pytest_asyncio.fixture(autouse=True)
async def close_worker_thread_connections():
    """Database calls from async code run in asgiref's worker thread, whose connection
    outlives the test (CONN_MAX_AGE on PostgreSQL) and would block dropping the test DB."""
    yield
    await sync_to_async(connections.close_all)()


@database_sync_to_async
def bearer_header(user):
    issued = account_services.api_token_create(user=user, name="websocket")
    return (b"authorization", f"Bearer {issued.secret}".encode())


@database_sync_to_async
def session_cookie_header(user):
    """Sign in through the real login page and return the session cookie as a header."""
    client = Client()
    response = client.post("/accounts/login/", {"email": user.email, "password": TEST_PASSWORD})
    assert response.status_code == 302
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={value}".encode())


emit = database_sync_to_async(alert_services.emit)


async def refusal_code(communicator):
    """The close code of a refused handshake, whether the consumer closes before or
    right after accepting; None when the connection stays open."""
    connected, code = await communicator.connect(timeout=5)
    try:
        if not connected:
            return code
        if await communicator.receive_nothing(timeout=0.5):
            return None
        message = await communicator.receive_output()
        assert message["type"] == "websocket.close"
        return message.get("code", 1000)
    finally:
        await communicator.disconnect()


@asynccontextmanager
async def feed(*headers):
    communicator = WebsocketCommunicator(application, WS_PATH, headers=BROWSER_HOST + list(headers))
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert await communicator.receive_nothing(timeout=0.2)  # still open: not a delayed refusal
    try:
        yield communicator
    finally:
        await communicator.disconnect()


async def test_alert_feed_accepts_superadmin_bearer_and_delivers_alert_json(superadmin):
    async with feed(await bearer_header(superadmin)) as communicator:
        alert = await emit("system.disk", "error", "Disk almost full.", free_bytes=10)

        event = await communicator.receive_json_from(timeout=5)

    assert event["id"] == alert.pk
    assert event["kind"] == "system.disk"
    assert event["level"] == "error"
    assert event["message"] == "Disk almost full."
    assert parse_datetime(event["created_at"]) == alert.created_at
    assert event["domain_id"] is None
    assert event["data"] == {"free_bytes": 10}


async def test_alert_feed_delivers_domain_alert_to_superadmin_once(superadmin, domain_a):
    async with feed(await bearer_header(superadmin)) as communicator:
        alert = await emit("mailbox.full", "warning", "alice is full.", domain_id=domain_a.pk)

        event = await communicator.receive_json_from(timeout=5)
        assert await communicator.receive_nothing(timeout=0.5)

    assert event["id"] == alert.pk
    assert event["domain_id"] == domain_a.pk


async def test_alert_feed_accepts_session_cookie_with_valid_origin(superadmin):
    cookie = await session_cookie_header(superadmin)

    async with feed(cookie, (b"origin", GOOD_ORIGIN)) as communicator:
        alert = await emit("system.restart", "info", "Restarted.")

        event = await communicator.receive_json_from(timeout=5)

    assert event["id"] == alert.pk
    assert event["message"] == "Restarted."


async def test_alert_feed_answers_ping(superadmin):
    async with feed(await bearer_header(superadmin)) as communicator:
        await communicator.send_json_to({"type": "ping"})

        assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}


async def test_alert_feed_rejects_unauthenticated_with_4401(db):
    communicator = WebsocketCommunicator(
        application, WS_PATH, headers=[*BROWSER_HOST, (b"origin", GOOD_ORIGIN)]
    )

    assert await refusal_code(communicator) == 4401


@pytest.mark.parametrize(
    "header",
    [b"Bearer garbage", b"Bearer a3_0123456789ab_notatoken", b"Bearer \xff\xfe"],
    ids=["garbage", "unknown", "non-ascii"],
)
async def test_alert_feed_rejects_invalid_bearer_with_4401(db, header):
    communicator = WebsocketCommunicator(
        application, WS_PATH, headers=[*BROWSER_HOST, (b"authorization", header)]
    )

    assert await refusal_code(communicator) == 4401


async def test_alert_feed_rejects_revoked_bearer_with_4401(superadmin):
    issued = await database_sync_to_async(account_services.api_token_create)(user=superadmin, name="ws")
    await database_sync_to_async(account_services.api_token_revoke)(actor=superadmin, token=issued.token)
    headers = [(b"authorization", f"Bearer {issued.secret}".encode())]

    assert (
        await refusal_code(WebsocketCommunicator(application, WS_PATH, headers=BROWSER_HOST + headers))
        == 4401
    )


@pytest.mark.parametrize("via", ["bearer", "session"])
async def test_alert_feed_rejects_mailbox_user_with_4403(user_a, via):
    if via == "bearer":
        headers = [await bearer_header(user_a)]
    else:
        headers = [await session_cookie_header(user_a), (b"origin", GOOD_ORIGIN)]

    assert (
        await refusal_code(WebsocketCommunicator(application, WS_PATH, headers=BROWSER_HOST + headers))
        == 4403
    )


async def test_alert_feed_rejects_session_cookie_with_foreign_origin(superadmin):
    cookie = await session_cookie_header(superadmin)
    communicator = WebsocketCommunicator(
        application, WS_PATH, headers=[*BROWSER_HOST, cookie, (b"origin", EVIL_ORIGIN)]
    )

    try:
        connected, _ = await communicator.connect(timeout=5)
    finally:
        await communicator.disconnect()

    assert connected is False  # refused by the origin guard before any consumer code runs


async def test_alert_feed_ignores_session_cookie_without_origin(superadmin):
    cookie = await session_cookie_header(superadmin)

    assert (
        await refusal_code(WebsocketCommunicator(application, WS_PATH, headers=[*BROWSER_HOST, cookie]))
        == 4401
    )


async def test_alert_feed_gives_domain_admin_only_own_domain_alerts(admin_a, domain_a, domain_b):
    async with feed(await bearer_header(admin_a)) as communicator:
        await emit("mailbox.full", "warning", "bob is full.", domain_id=domain_b.pk)
        await emit("system.disk", "error", "Global: superadmins only.")
        alert_a = await emit("mailbox.full", "warning", "alice is full.", domain_id=domain_a.pk)

        event = await communicator.receive_json_from(timeout=5)
        assert await communicator.receive_nothing(timeout=0.5)

    assert event["id"] == alert_a.pk
    assert event["message"] == "alice is full."
    assert event["domain_id"] == domain_a.pk


async def test_alert_feed_gives_other_domain_admin_nothing_from_domain_a(admin_a, admin_b, domain_a):
    async with feed(await bearer_header(admin_b)) as communicator:
        await emit("mailbox.full", "warning", "alice is full.", domain_id=domain_a.pk)

        assert await communicator.receive_nothing(timeout=0.5)


async def test_alert_feed_accepts_domain_admin_session_with_valid_origin(admin_a, domain_a):
    cookie = await session_cookie_header(admin_a)

    async with feed(cookie, (b"origin", GOOD_ORIGIN)) as communicator:
        alert = await emit("mailbox.full", "warning", "alice is full.", domain_id=domain_a.pk)

        assert (await communicator.receive_json_from(timeout=5))["id"] == alert.pk


async def test_alert_feed_keeps_domain_admin_without_domains_quiet(domain_a):
    admin = await database_sync_to_async(DomainAdminFactory)()

    async with feed(await bearer_header(admin)) as communicator:
        await emit("mailbox.full", "warning", "alice is full.", domain_id=domain_a.pk)
        await emit("system.disk", "error", "Global.")

        assert await communicator.receive_nothing(timeout=0.5)


async def test_alert_feed_refuses_a_session_that_still_owes_its_second_factor(superadmin, settings):
    settings.A3_MFA_REQUIRED_ROLES = ["superadmin"]
    cookie = await session_cookie_header(superadmin)  # password only: sent to enrolment
    communicator = WebsocketCommunicator(
        application, WS_PATH, headers=[*BROWSER_HOST, cookie, (b"origin", GOOD_ORIGIN)]
    )
    assert await refusal_code(communicator) == 4401


async def test_alert_feed_refuses_a_revoked_session(superadmin):
    from apps.accounts.models import UserSession

    cookie = await session_cookie_header(superadmin)
    await database_sync_to_async(lambda: UserSession.objects.filter(user=superadmin).delete())()
    communicator = WebsocketCommunicator(
        application, WS_PATH, headers=[*BROWSER_HOST, cookie, (b"origin", GOOD_ORIGIN)]
    )
    assert await refusal_code(communicator) == 4401
