"""The lockout through the API: the token endpoint, and /lockouts/ for superadmins."""

import pytest
from rest_framework.test import APIClient

from apps.accounts import lockout
from apps.accounts.models import ApiToken, AuthEvent
from tests.factories import TEST_PASSWORD

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token/"
LOCKOUTS_URL = "/api/v1/lockouts/"
CLEAR_URL = "/api/v1/lockouts/clear/"
ATTACKER = "192.0.2.66"
LOCKED_DETAIL = "Invalid email or password. Too many attempts; try again later."


def _obtain(email, password, *, ip=ATTACKER):
    return APIClient(REMOTE_ADDR=ip).post(TOKEN_URL, {"email": email, "password": password}, format="json")


def _lock(email, *, ip=ATTACKER):
    for _ in range(5):
        assert _obtain(email, "not the password", ip=ip).status_code == 401


def assert_error(response, status, code, fields=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "detail", "fields"}
    assert body["code"] == code
    if fields is not None:
        assert set(body["fields"]) == set(fields), body["fields"]
    return body


# --- POST /auth/token/ -----------------------------------------------------------------------


def test_token_obtain_locks_out_after_limit_and_refuses_correct_password(user_a):
    _lock(user_a.email)

    response = _obtain(user_a.email, TEST_PASSWORD)

    body = assert_error(response, 429, "locked_out", fields=[])
    assert body["detail"] == LOCKED_DETAIL
    assert 890 <= int(response.headers["Retry-After"]) <= 900
    assert not ApiToken.objects.exists()
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOCKOUT)
    assert (event.email, event.channel, event.detail["subjects"]) == (user_a.email, "api", ["username", "ip"])


def test_token_obtain_refuses_locked_address_for_any_account(user_a):
    for n in range(5):
        assert _obtain(f"guess{n}@alpha.test", "nope").status_code == 401

    assert_error(_obtain(user_a.email, TEST_PASSWORD), 429, "locked_out")
    assert _obtain(user_a.email, TEST_PASSWORD, ip="198.51.100.7").status_code == 201


def test_token_obtain_answers_do_not_tell_whether_the_account_exists(user_a):
    wrong = _obtain(user_a.email, "nope", ip="198.51.100.1")
    unknown = _obtain("nobody@alpha.test", "nope", ip="198.51.100.2")
    assert (wrong.status_code, wrong.json()) == (unknown.status_code, unknown.json())
    assert wrong.json()["code"] == "authentication_failed"

    for email, ip in [(user_a.email, "198.51.100.1"), ("nobody@alpha.test", "198.51.100.2")]:
        for _ in range(4):
            _obtain(email, "nope", ip=ip)
    known_locked = _obtain(user_a.email, TEST_PASSWORD, ip="198.51.100.1")
    unknown_locked = _obtain("nobody@alpha.test", TEST_PASSWORD, ip="198.51.100.2")

    assert known_locked.status_code == unknown_locked.status_code == 429
    assert known_locked.json() == unknown_locked.json()
    assert known_locked.headers["Retry-After"] == unknown_locked.headers["Retry-After"]


# --- GET /lockouts/ --------------------------------------------------------------------------


def test_lockouts_list_shows_locked_names_and_addresses(api_client_for, superadmin, user_a):
    _lock(user_a.email)

    response = api_client_for(superadmin).get(LOCKOUTS_URL)

    assert response.status_code == 200
    rows = response.json()["results"]
    assert response.json()["count"] == 2
    assert {(row["username"], row["ip"], row["failures"], row["channel"]) for row in rows} == {
        (user_a.email, None, 5, "api"),
        ("", ATTACKER, 5, "api"),
    }
    assert all(row["locked_until"] for row in rows)


def test_lockouts_list_query_count_does_not_grow_with_lockouts(
    api_client_for, superadmin, django_assert_max_num_queries
):
    for n in range(6):
        lockout_ip = f"203.0.113.{n + 1}"
        for _ in range(5):
            lockout.lockout_record_failure(username=f"victim{n}@alpha.test", ip=lockout_ip, channel="smtp")
    client = api_client_for(superadmin)

    with django_assert_max_num_queries(8):
        response = client.get(LOCKOUTS_URL)

    assert response.json()["count"] == 12


@pytest.mark.parametrize("actor", ["admin_a", "user_a"])
def test_lockouts_api_is_forbidden_for_non_superadmins(api_client_for, request, actor):
    client = api_client_for(request.getfixturevalue(actor))
    _lock("victim@alpha.test")

    assert_error(client.get(LOCKOUTS_URL), 403, "permission_denied")
    assert_error(
        client.post(CLEAR_URL, {"username": "victim@alpha.test"}, format="json"), 403, "permission_denied"
    )
    assert lockout.lockout_remaining(username="victim@alpha.test", ip=None) > 0


@pytest.mark.parametrize(("method", "url"), [("get", LOCKOUTS_URL), ("post", CLEAR_URL)])
def test_lockouts_api_refuses_unauthenticated(db, method, url):
    assert_error(getattr(APIClient(), method)(url, format="json"), 401, "not_authenticated")


# --- POST /lockouts/clear/ -------------------------------------------------------------------


def test_lockouts_clear_by_username_lets_the_account_sign_in(api_client_for, superadmin, user_a):
    for n in range(5):
        assert _obtain(user_a.email, "nope", ip=f"198.51.100.{n + 1}").status_code == 401

    response = api_client_for(superadmin).post(CLEAR_URL, {"username": user_a.email.upper()}, format="json")

    assert response.status_code == 200
    assert response.json() == {"removed": 5}
    assert _obtain(user_a.email, TEST_PASSWORD, ip="198.51.100.9").status_code == 201
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOCKOUT_CLEARED)
    assert (event.email, event.user, event.channel) == (user_a.email, user_a, "api")
    assert event.detail["actor"] == superadmin.email


def test_lockouts_clear_by_ip_frees_the_address(api_client_for, superadmin, user_a):
    for n in range(5):
        _obtain(f"guess{n}@alpha.test", "nope")

    response = api_client_for(superadmin).post(CLEAR_URL, {"ip": ATTACKER}, format="json")

    assert response.json() == {"removed": 5}
    assert _obtain(user_a.email, TEST_PASSWORD).status_code == 201
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOCKOUT_CLEARED)
    assert (event.ip, event.email, event.detail["subject"]) == (ATTACKER, "", "ip")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["non_field_errors"]),
        ({"username": "a@alpha.test", "ip": ATTACKER}, ["non_field_errors"]),
        ({"ip": "999.1.1.1"}, ["ip"]),
        ({"username": ""}, ["username"]),
        ({"username": "a@alpha.test", "reason": "x"}, ["reason"]),
        ({"username": ["a@alpha.test"]}, ["username"]),
    ],
)
def test_lockouts_clear_rejects_invalid_body(api_client_for, superadmin, body, fields):
    response = api_client_for(superadmin).post(CLEAR_URL, body, format="json")

    assert_error(response, 400, "invalid", fields=fields)
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT_CLEARED).exists()
