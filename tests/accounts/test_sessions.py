"""Web sessions: the sessions page, signing one browser out, signing out everywhere, the
middleware that makes revocation take effect at once, and the sessions API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user
from django.contrib.sessions.models import Session
from django.test import Client, RequestFactory
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts import services
from apps.accounts.models import ApiToken, AuthEvent, UserSession
from apps.accounts.web_sessions import (
    SESSION_ROW_KEY,
    TOUCH_INTERVAL,
    user_agent_summary,
    web_session_touch,
    web_sessions_revoke_all,
)
from apps.mailboxes.models import AppPassword
from apps.relay import services as relay_services
from tests.factories import TEST_PASSWORD, SuperadminFactory, UserFactory

pytestmark = pytest.mark.django_db

SESSIONS_URL = "/accounts/sessions/"
REVOKE_ALL_URL = "/accounts/sessions/revoke-all/"
API_URL = "/api/v1/auth/sessions/"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


def sign_in(user, user_agent: str = FIREFOX_LINUX, client_class=Client) -> Client:
    """A browser signed in through the login form, as people do (so its session is recorded)."""
    client = client_class(HTTP_USER_AGENT=user_agent)
    response = client.post("/accounts/login/", {"email": user.email, "password": TEST_PASSWORD})
    assert response.status_code == 302, response.content
    return client


def row_of(client: Client) -> UserSession:
    return UserSession.objects.get(session_key=client.session.session_key)


def is_signed_in(client: Client) -> bool:
    """The client's next request is a signed-in one (the sessions page, not the login redirect)."""
    response = client.get(SESSIONS_URL)
    if response.status_code == 302:
        assert response.headers["Location"].startswith("/accounts/login/")
        return False
    assert response.status_code == 200
    return True


# --- Recording ---------------------------------------------------------------------------


def test_sign_in_records_the_session_and_its_row_id(plain_user):
    client = sign_in(plain_user)

    row = row_of(client)
    assert (row.user, row.method, row.mfa_verified) == (plain_user, "password", False)
    assert row.user_agent == FIREFOX_LINUX
    assert row.ip == "127.0.0.1"
    assert client.session[SESSION_ROW_KEY] == row.pk


def test_last_seen_is_touched_at_most_once_a_minute(plain_user, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    client = sign_in(plain_user)
    client.get(SESSIONS_URL)
    first_seen = row_of(client).last_seen_at

    time_machine.shift(timedelta(seconds=30))
    client.get(SESSIONS_URL)
    assert row_of(client).last_seen_at == first_seen

    time_machine.shift(timedelta(seconds=31))
    client.get(SESSIONS_URL)
    assert row_of(client).last_seen_at == timezone.now()


def test_the_session_check_costs_one_query_a_minute(plain_user, time_machine, django_assert_num_queries):
    time_machine.move_to(timezone.now(), tick=False)
    client = sign_in(plain_user)
    request = RequestFactory().get("/")
    request.session = client.session
    request.user = get_user(request)  # loaded up front: only the check's own queries count

    with django_assert_num_queries(1):
        assert web_session_touch(request)
    with django_assert_num_queries(0):
        assert web_session_touch(request)
    time_machine.shift(TOUCH_INTERVAL)
    with django_assert_num_queries(1):
        assert web_session_touch(request)


def test_a_session_from_before_tracking_is_adopted_and_keeps_working(plain_user):
    client = Client(HTTP_USER_AGENT=SAFARI_IPHONE)
    client.force_login(plain_user)  # a Django session without a row
    assert not UserSession.objects.exists()

    assert is_signed_in(client)
    assert is_signed_in(client)

    row = row_of(client)
    assert (row.user, row.method, row.user_agent) == (plain_user, "unknown", SAFARI_IPHONE)
    assert SESSION_ROW_KEY not in client.session  # adopting costs no session write


def test_a_rotated_session_key_takes_its_row_along(plain_user):
    client = sign_in(plain_user)
    row = row_of(client)
    # As if Django had rotated the key (cycle_key) without the row following.
    UserSession.objects.filter(pk=row.pk).update(session_key="x" * 32)

    assert is_signed_in(client)

    assert row_of(client).pk == row.pk


def test_sign_out_forgets_the_row(plain_user):
    client = sign_in(plain_user)
    assert UserSession.objects.filter(user=plain_user).count() == 1

    client.post("/accounts/logout/")

    assert not UserSession.objects.filter(user=plain_user).exists()


def test_rows_of_ended_sessions_are_not_listed_and_go_at_the_next_sign_in(plain_user):
    current = sign_in(plain_user)
    old = sign_in(plain_user)
    Session.objects.filter(session_key=old.session.session_key).delete()  # expired and cleared
    stale = sign_in(plain_user, SAFARI_IPHONE)
    UserSession.objects.filter(pk=row_of(stale).pk).update(
        last_seen_at=timezone.now() - timedelta(seconds=settings.SESSION_COOKIE_AGE + 60)
    )

    response = current.get(SESSIONS_URL)

    assert [row.session.pk for row in response.context["rows"]] == [row_of(current).pk]
    # The stale row is still there (the stored-session-gone one went when "stale" signed in).
    assert UserSession.objects.filter(user=plain_user).count() == 2
    newest = sign_in(plain_user)
    assert set(UserSession.objects.filter(user=plain_user).values_list("pk", flat=True)) == {
        row_of(current).pk,
        row_of(newest).pk,
    }


# --- The page ----------------------------------------------------------------------------


def test_sessions_page_lists_own_sessions_and_marks_this_one(plain_user):
    laptop = sign_in(plain_user, FIREFOX_LINUX)
    sign_in(plain_user, SAFARI_IPHONE)
    sign_in(UserFactory(), SAFARI_IPHONE)  # someone else's

    response = laptop.get(SESSIONS_URL)

    assert response.status_code == 200
    rows = response.context["rows"]
    assert sorted(row.device for row in rows) == ["Firefox on Linux", "Safari on iOS"]
    assert [row.current for row in rows if row.device == "Firefox on Linux"] == [True]
    content = response.content.decode()
    assert content.count("this session") == 1
    assert "Safari on iOS" in content and "127.0.0.1" in content
    assert "Sign out everywhere" in content


def test_sessions_page_lists_active_tokens_and_own_app_passwords(user_a, mailbox_a, admin_a):
    client = sign_in(user_a)
    services.api_token_create(user=user_a, name="backup script")
    revoked = services.api_token_create(user=user_a, name="old script").token
    services.api_token_revoke(actor=user_a, token=revoked)
    relay_services.app_password_create(actor=user_a, mailbox=mailbox_a, name="Phone")
    services.api_token_create(user=admin_a, name="admin's token")

    content = client.get(SESSIONS_URL).content.decode()

    assert "backup script" in content
    assert "old script" not in content
    assert "Phone" in content
    assert "admin&#x27;s token" not in content and "admin's token" not in content


def test_sessions_page_needs_sign_in(db):
    response = Client().get(SESSIONS_URL)

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/accounts/login/")


def test_revoked_session_is_signed_out_on_its_next_request(plain_user):
    laptop = sign_in(plain_user, FIREFOX_LINUX)
    phone = sign_in(plain_user, SAFARI_IPHONE)
    phone_row = row_of(phone)

    response = laptop.post(f"/accounts/sessions/{phone_row.pk}/revoke/")

    assert response.status_code == 302
    assert response.headers["Location"] == SESSIONS_URL
    assert not is_signed_in(phone)
    assert SESSION_KEY not in phone.session
    assert not UserSession.objects.filter(pk=phone_row.pk).exists()
    assert is_signed_in(laptop)
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.SESSION_REVOKED)
    assert (event.user, event.detail["session_id"]) == (plain_user, phone_row.pk)


def test_revoked_session_is_signed_out_even_when_its_stored_session_stayed(plain_user):
    """Only the row goes (a session engine that cannot delete, or a race): the row id the
    session carries tells the middleware it was revoked."""
    phone = sign_in(plain_user, SAFARI_IPHONE)
    UserSession.objects.filter(pk=row_of(phone).pk).delete()
    assert Session.objects.filter(session_key=phone.session.session_key).exists()

    assert not is_signed_in(phone)
    assert not UserSession.objects.filter(user=plain_user).exists()  # not adopted again


def test_revoking_this_session_signs_this_browser_out(plain_user):
    client = sign_in(plain_user)

    response = client.post(f"/accounts/sessions/{row_of(client).pk}/revoke/")

    assert response.headers["Location"] == "/accounts/login/"
    assert not is_signed_in(client)


def test_revoking_another_users_session_is_404_and_changes_nothing(plain_user):
    other = sign_in(UserFactory())
    other_row = row_of(other)
    client = sign_in(plain_user)

    response = client.post(f"/accounts/sessions/{other_row.pk}/revoke/")
    named = client.post(f"/accounts/sessions/{other_row.pk}/revoke/", {"user": other_row.user_id})

    assert (response.status_code, named.status_code) == (404, 404)
    assert is_signed_in(other)
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.SESSION_REVOKED).exists()


def test_revoke_needs_post(plain_user):
    client = sign_in(plain_user)

    response = client.get(f"/accounts/sessions/{row_of(client).pk}/revoke/")

    assert response.status_code == 405
    assert is_signed_in(client)


def test_sign_out_everywhere_asks_first(plain_user):
    client = sign_in(plain_user)
    phone = sign_in(plain_user, SAFARI_IPHONE)

    response = client.get(REVOKE_ALL_URL)

    assert response.status_code == 200
    assert 'name="revoke_tokens"' in response.content.decode()
    assert is_signed_in(phone)


def test_sign_out_everywhere_keeps_this_browser_and_revokes_tokens(user_a, mailbox_a):
    laptop = sign_in(user_a, FIREFOX_LINUX)
    phone = sign_in(user_a, SAFARI_IPHONE)
    legacy = Client()
    legacy.force_login(user_a)  # signed in before tracking, never seen since
    token = services.api_token_create(user=user_a, name="script").token
    app_password = relay_services.app_password_create(actor=user_a, mailbox=mailbox_a, name="Phone")
    bystander = sign_in(UserFactory())

    response = laptop.post(REVOKE_ALL_URL, {"revoke_tokens": "on"})

    assert response.status_code == 302
    assert is_signed_in(laptop)
    assert not is_signed_in(phone)
    assert not is_signed_in(legacy)
    assert is_signed_in(bystander)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AppPassword.objects.get(pk=app_password.app_password.pk).revoked_at is None
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.SESSION_REVOKED)
    assert (event.user, event.detail["count"], event.detail["all"]) == (user_a, 2, True)
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.TOKEN_REVOKED).detail["count"] == 1


def test_sign_out_everywhere_can_leave_tokens(plain_user):
    client = sign_in(plain_user)
    token = services.api_token_create(user=plain_user, name="script").token

    client.post(REVOKE_ALL_URL, {})  # the box unticked

    token.refresh_from_db()
    assert token.revoked_at is None


def test_sign_out_everywhere_including_this_browser(plain_user):
    client = sign_in(plain_user)
    phone = sign_in(plain_user, SAFARI_IPHONE)

    response = client.post(REVOKE_ALL_URL, {"revoke_tokens": "on", "include_current": "on"})

    assert response.headers["Location"] == "/accounts/login/"
    assert not is_signed_in(client)
    assert not is_signed_in(phone)
    assert not UserSession.objects.filter(user=plain_user).exists()


def test_tokens_and_app_passwords_are_revoked_from_the_page(user_a, mailbox_a):
    client = sign_in(user_a)
    token = services.api_token_create(user=user_a, name="script").token
    app_password = relay_services.app_password_create(
        actor=user_a, mailbox=mailbox_a, name="Phone"
    ).app_password

    first = client.post(f"/accounts/sessions/tokens/{token.pk}/revoke/")
    second = client.post(f"/accounts/sessions/app-passwords/{app_password.pk}/revoke/")

    assert first.headers["Location"] == second.headers["Location"] == SESSIONS_URL
    token.refresh_from_db()
    app_password.refresh_from_db()
    assert token.revoked_at is not None
    assert app_password.revoked_at is not None


def test_others_tokens_and_app_passwords_cannot_be_revoked_from_the_page(plain_user, mailbox_b):
    client = sign_in(plain_user)
    token = services.api_token_create(user=mailbox_b.owner, name="script").token
    app_password = relay_services.app_password_create(
        actor=mailbox_b.owner, mailbox=mailbox_b, name="Phone"
    ).app_password

    first = client.post(f"/accounts/sessions/tokens/{token.pk}/revoke/")
    second = client.post(f"/accounts/sessions/app-passwords/{app_password.pk}/revoke/")

    assert (first.status_code, second.status_code) == (404, 404)
    token.refresh_from_db()
    app_password.refresh_from_db()
    assert (token.revoked_at, app_password.revoked_at) == (None, None)


def test_superadmin_sees_and_revokes_a_users_sessions(plain_user):
    superadmin = SuperadminFactory()
    admin = sign_in(superadmin)
    phone = sign_in(plain_user, SAFARI_IPHONE)
    row = row_of(phone)

    page = admin.get(f"{SESSIONS_URL}?user={plain_user.pk}")
    response = admin.post(f"/accounts/sessions/{row.pk}/revoke/", {"user": plain_user.pk})

    assert [r.session.pk for r in page.context["rows"]] == [row.pk]
    assert 'id="api-tokens"' not in page.content.decode()  # credentials are for their owner
    assert response.headers["Location"] == f"{SESSIONS_URL}?user={plain_user.pk}"
    assert not is_signed_in(phone)
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.SESSION_REVOKED).detail["actor"] == superadmin.email


def test_others_cannot_name_a_user_on_the_sessions_page(plain_user, admin_a, user_a):
    client = sign_in(admin_a)

    response = client.get(f"{SESSIONS_URL}?user={user_a.pk}")

    assert response.status_code == 404


# --- Service -----------------------------------------------------------------------------


def test_revoke_all_refuses_an_actor_without_reach(plain_user):
    from apps.core.exceptions import NotFoundError

    with pytest.raises(NotFoundError):
        web_sessions_revoke_all(actor=UserFactory(), user=plain_user, keep_current=None)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (FIREFOX_LINUX, "Firefox on Linux"),
        (SAFARI_IPHONE, "Safari on iOS"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36",
            "Chrome on macOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Mobile Safari/537.36",
            "Chrome on Android",
        ),
        ("curl/8.5.0", "curl"),
        ("", "Unknown device"),
    ],
)
def test_user_agent_summary(user_agent, expected):
    assert user_agent_summary(user_agent) == expected


# --- API ---------------------------------------------------------------------------------


def test_api_lists_own_sessions_with_the_current_one_marked(plain_user):
    browser = sign_in(plain_user, FIREFOX_LINUX, client_class=APIClient)
    sign_in(plain_user, SAFARI_IPHONE)
    sign_in(UserFactory())

    response = browser.get(API_URL)

    assert response.status_code == 200
    results = response.json()["results"]
    assert sorted((r["device"], r["current"]) for r in results) == [
        ("Firefox on Linux", True),
        ("Safari on iOS", False),
    ]
    assert set(results[0]) == {
        "id",
        "device",
        "user_agent",
        "ip",
        "method",
        "mfa_verified",
        "created_at",
        "last_seen_at",
        "current",
    }
    assert "session_key" not in response.content.decode()


def test_api_list_with_a_token_has_no_current_session(plain_user, api_client_for):
    sign_in(plain_user)

    results = api_client_for(plain_user).get(API_URL).json()["results"]

    assert [r["current"] for r in results] == [False]


def test_api_list_query_count_is_capped(plain_user, api_client_for, django_assert_max_num_queries):
    for _ in range(5):
        sign_in(plain_user)
    client = api_client_for(plain_user)

    with django_assert_max_num_queries(6):
        response = client.get(API_URL)

    assert response.json()["count"] == 5


def test_api_needs_authentication(db):
    response = APIClient().get(API_URL)

    assert response.status_code in (401, 403)
    assert response.json()["code"] in ("not_authenticated", "authentication_failed")


def test_api_revokes_an_own_session(plain_user, api_client_for):
    phone = sign_in(plain_user, SAFARI_IPHONE)

    response = api_client_for(plain_user).delete(f"{API_URL}{row_of(phone).pk}/")

    assert response.status_code == 204
    assert not is_signed_in(phone)


def test_api_revoking_the_current_session_signs_it_out(plain_user):
    browser = sign_in(plain_user, client_class=APIClient)

    response = browser.delete(f"{API_URL}{row_of(browser).pk}/")

    assert response.status_code == 204
    assert browser.get(API_URL).status_code in (401, 403)


def test_api_another_users_session_is_404(plain_user, api_client_for):
    other = sign_in(UserFactory())
    client = api_client_for(plain_user)

    response = client.delete(f"{API_URL}{row_of(other).pk}/")
    named = client.get(f"{API_URL}?user={row_of(other).user_id}")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert named.status_code == 404
    assert is_signed_in(other)


def test_api_superadmin_reaches_a_users_sessions(plain_user, superadmin, api_client_for):
    phone = sign_in(plain_user, SAFARI_IPHONE)
    row = row_of(phone)
    client = api_client_for(superadmin)

    listed = client.get(f"{API_URL}?user={plain_user.pk}").json()["results"]
    without_user = client.delete(f"{API_URL}{row.pk}/")
    with_user = client.delete(f"{API_URL}{row.pk}/?user={plain_user.pk}")

    assert [r["id"] for r in listed] == [row.pk]
    assert without_user.status_code == 404  # ids are looked up among the named user's sessions
    assert with_user.status_code == 204
    assert not is_signed_in(phone)
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.SESSION_REVOKED)
    assert (event.user, event.detail["actor"]) == (plain_user, superadmin.email)


def test_api_revoke_all_keeps_the_calling_token(plain_user, api_client_for):
    phone = sign_in(plain_user, SAFARI_IPHONE)
    other_token = services.api_token_create(user=plain_user, name="other").token
    client = api_client_for(plain_user)

    response = client.post(f"{API_URL}revoke-all/", {}, format="json")

    assert response.status_code == 200
    assert response.json() == {"sessions": 1, "tokens": 1}
    assert not is_signed_in(phone)
    other_token.refresh_from_db()
    assert other_token.revoked_at is not None
    assert client.get(API_URL).status_code == 200  # the caller's token still works


def test_api_revoke_all_without_keeping_the_current_credential(plain_user, api_client_for):
    client = api_client_for(plain_user)

    response = client.post(f"{API_URL}revoke-all/", {"keep_current": False}, format="json")

    assert response.json() == {"sessions": 0, "tokens": 1}
    assert client.get(API_URL).status_code == 401
    assert not ApiToken.objects.usable().filter(user=plain_user).exists()


def test_api_revoke_all_by_session_keeps_that_session(plain_user):
    browser = sign_in(plain_user, client_class=APIClient)
    phone = sign_in(plain_user, SAFARI_IPHONE)

    response = browser.post(f"{API_URL}revoke-all/", {"revoke_tokens": False}, format="json")

    assert response.json() == {"sessions": 1, "tokens": 0}
    assert browser.get(API_URL).status_code == 200
    assert not is_signed_in(phone)


def test_api_revoke_all_rejects_unknown_fields(plain_user, api_client_for):
    response = api_client_for(plain_user).post(f"{API_URL}revoke-all/", {"everything": True}, format="json")

    assert response.status_code == 400
    assert response.json()["fields"] == {"everything": ["Unknown field."]}


# --- The sign-in log page ----------------------------------------------------------------

EVENTS_URL = "/accounts/events/"


def record(kind: str, user, days_ago: int = 0, email: str = "") -> AuthEvent:
    event = services.auth_event_record(
        kind=kind, client=services.ClientInfo(ip="192.0.2.7"), user=user, email=email
    )
    AuthEvent.objects.filter(pk=event.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return event


def test_sign_in_log_filters_by_kind_account_and_date(plain_user, superadmin):
    other = UserFactory()
    changed = record(AuthEvent.Kind.PASSWORD_CHANGED, plain_user)
    revoked = record(AuthEvent.Kind.SESSION_REVOKED, plain_user, days_ago=10)
    record(AuthEvent.Kind.PASSWORD_CHANGED, other)
    client = Client()
    client.force_login(superadmin)

    by_kind = client.get(EVENTS_URL, {"kind": "password_changed"}).context["page"]
    by_account = client.get(EVENTS_URL, {"email": plain_user.email.upper()}).context["page"]
    since = (timezone.now() - timedelta(days=3)).date().isoformat()
    by_date = client.get(EVENTS_URL, {"email": plain_user.email, "since": since}).context["page"]
    until = (timezone.now() - timedelta(days=5)).date().isoformat()
    older = client.get(EVENTS_URL, {"email": plain_user.email, "until": until}).context["page"]

    assert {e.user_id for e in by_kind} == {plain_user.pk, other.pk}
    assert {e.kind for e in by_kind} == {"password_changed"}
    assert {e.pk for e in by_account} == {changed.pk, revoked.pk}
    assert [e.pk for e in by_date] == [changed.pk]
    assert [e.pk for e in older] == [revoked.pk]


def test_sign_in_log_shows_others_only_their_own_events(plain_user):
    other = UserFactory()
    own = record(AuthEvent.Kind.PASSWORD_RESET_REQUESTED, plain_user)
    record(AuthEvent.Kind.PASSWORD_RESET_REQUESTED, other)
    client = Client()
    client.force_login(plain_user)

    response = client.get(EVENTS_URL, {"email": other.email})

    assert [e.pk for e in response.context["page"]] == [own.pk]  # the account filter is not theirs
    assert 'name="email"' not in response.content.decode()
    assert 'name="kind"' in response.content.decode()


@pytest.mark.parametrize(
    "kind",
    [
        AuthEvent.Kind.PASSWORD_CHANGED,
        AuthEvent.Kind.PASSWORD_RESET_REQUESTED,
        AuthEvent.Kind.PASSWORD_RESET,
        AuthEvent.Kind.SESSION_REVOKED,
        AuthEvent.Kind.TOKEN_REVOKED,
        AuthEvent.Kind.APP_PASSWORD_CREATED,
        AuthEvent.Kind.APP_PASSWORD_REVOKED,
    ],
)
def test_sign_in_log_labels_the_session_and_password_events(plain_user, kind):
    record(kind, plain_user)
    client = Client()
    client.force_login(plain_user)

    content = client.get(EVENTS_URL).content.decode()

    assert f'<td data-label="Event">{AuthEvent.Kind(kind).label}</td>' in content


def test_sign_in_log_htmx_request_gets_the_table_only(plain_user):
    record(AuthEvent.Kind.PASSWORD_CHANGED, plain_user)
    client = Client()
    client.force_login(plain_user)

    response = client.get(EVENTS_URL, {"kind": "password_changed"}, HTTP_HX_REQUEST="true")

    content = response.content.decode()
    assert content.startswith('<div id="event-table">')
    assert "<html" not in content
    assert "Password changed" in content
