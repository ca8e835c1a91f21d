"""App passwords through the API (/api/v1/app-passwords/) and the dashboard page: the
secret is shown once and works for SMTP AUTH, lists never show it, revoking stops it, and
nobody reaches another user's app passwords."""

from __future__ import annotations

import pytest

from apps.mailboxes.models import AppPassword
from apps.relay.services import app_password_create, submission_authenticate

pytestmark = pytest.mark.django_db

API = "/api/v1/app-passwords"
PAGE = "/relay/app-passwords/"
HX = {"HTTP_HX_REQUEST": "true"}
ERROR_KEYS = {"code", "detail", "fields"}
FIELDS = {"id", "mailbox", "name", "is_active", "created_at", "last_used_at", "last_used_ip", "revoked_at"}


def assert_error(response, status: int, code: str | None = None, *, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    if code is not None:
        assert body["code"] == code, body
    if field is not None:
        assert body["fields"].get(field), body
    return body


@pytest.fixture
def as_user_a(api_client_for, user_a):
    return api_client_for(user_a)


@pytest.fixture
def bob_password(mailbox_b):
    return app_password_create(actor=mailbox_b.owner, mailbox=mailbox_b, name="Bob's phone")


def assert_no_secrets(text: str) -> None:
    for stored in AppPassword.objects.values_list("secret_hash", flat=True):
        assert stored not in text
    assert '"secret"' not in text


# --- API --------------------------------------------------------------------------------


def test_create_returns_the_secret_once_and_it_authenticates(as_user_a, mailbox_a):
    response = as_user_a.post(API + "/", {"mailbox": "Alice@Alpha.test", "name": "Laptop"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == FIELDS | {"secret"}
    assert body["mailbox"] == "alice@alpha.test" and body["name"] == "Laptop" and body["is_active"] is True
    sender = submission_authenticate(username="alice@alpha.test", password=body["secret"])
    assert sender is not None and sender.mailbox_id == mailbox_a.pk

    listed = as_user_a.get(API + "/")
    assert body["secret"] not in listed.content.decode()
    assert_no_secrets(listed.content.decode())
    (row,) = listed.json()["results"]
    assert set(row) == FIELDS and row["last_used_at"] is not None  # the AUTH above used it
    detail = as_user_a.get(f"{API}/{body['id']}/")
    assert set(detail.json()) == FIELDS and body["secret"] not in detail.content.decode()


def test_revoke_stops_the_secret(as_user_a, mailbox_a, user_a):
    issued = app_password_create(actor=user_a, mailbox=mailbox_a, name="Old phone")

    response = as_user_a.delete(f"{API}/{issued.app_password.pk}/")

    assert response.status_code == 204
    assert submission_authenticate(username="alice@alpha.test", password=issued.secret) is None
    (row,) = as_user_a.get(API + "/").json()["results"]
    assert row["is_active"] is False and row["revoked_at"] is not None
    assert as_user_a.delete(f"{API}/{issued.app_password.pk}/").status_code == 204  # harmless twice
    assert as_user_a.get(f"{API}/?revoked=false").json()["count"] == 0
    assert as_user_a.get(f"{API}/?revoked=true").json()["count"] == 1


def test_a_user_cannot_reach_another_users_app_passwords(as_user_a, bob_password, mailbox_a):
    pk = bob_password.app_password.pk
    assert as_user_a.get(API + "/").json()["count"] == 0
    assert_error(as_user_a.get(f"{API}/{pk}/"), 404, "not_found")
    assert_error(as_user_a.delete(f"{API}/{pk}/"), 404, "not_found")
    assert_error(as_user_a.post(API + "/", {"mailbox": "bob@beta.test", "name": "x"}, format="json"), 404)
    assert AppPassword.objects.get(pk=pk).revoked_at is None
    assert submission_authenticate(username="bob@beta.test", password=bob_password.secret) is not None


def test_admins_manage_app_passwords_within_their_domains(
    api_client_for, admin_a, bob_password, mailbox_a, superadmin
):
    as_admin_a = api_client_for(admin_a)
    created = as_admin_a.post(API + "/", {"mailbox": "alice@alpha.test", "name": "Scanner"}, format="json")
    assert created.status_code == 201
    assert_error(as_admin_a.post(API + "/", {"mailbox": "bob@beta.test", "name": "x"}, format="json"), 404)
    assert {r["mailbox"] for r in as_admin_a.get(API + "/").json()["results"]} == {"alice@alpha.test"}
    assert_error(as_admin_a.delete(f"{API}/{bob_password.app_password.pk}/"), 404)

    as_super = api_client_for(superadmin)
    assert as_super.get(API + "/").json()["count"] == 2
    filtered = as_super.get(f"{API}/?mailbox=BOB@beta.test").json()["results"]
    assert [r["id"] for r in filtered] == [bob_password.app_password.pk]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"mailbox": "alice@alpha.test"}, "name"),
        ({"name": "Phone"}, "mailbox"),
        ({"mailbox": "alice@alpha.test", "name": ""}, "name"),
        ({"mailbox": "alice@alpha.test", "name": "x" * 101}, "name"),
        ({"mailbox": "alice@alpha.test", "name": "Phone", "secret": "chosen"}, "secret"),
    ],
)
def test_create_rejects_bad_payloads(as_user_a, mailbox_a, payload, field):
    assert_error(as_user_a.post(API + "/", payload, format="json"), 400, "invalid", field=field)
    assert not AppPassword.objects.exists()


def test_anonymous_callers_are_refused(api_client_for, mailbox_a):
    response = api_client_for().post(API + "/", {"mailbox": "alice@alpha.test", "name": "x"}, format="json")
    assert response.status_code in (401, 403) and set(response.json()) == ERROR_KEYS
    assert not AppPassword.objects.exists()


# --- Page -------------------------------------------------------------------------------


def test_page_shows_the_secret_once_and_never_keeps_it(client, user_a, mailbox_a):
    client.force_login(user_a)

    response = client.post(PAGE, {"mailbox": "alice@alpha.test", "name": "Tablet"})

    assert response.status_code == 200
    body = response.content.decode()
    secret = body.split('id="app-password-secret">', 1)[1].split("<", 1)[0]
    assert submission_authenticate(username="alice@alpha.test", password=secret) is not None
    assert "no-store" in response["Cache-Control"]
    assert all(secret not in str(value) for value in client.session.values())
    again = client.get(PAGE).content.decode()
    assert secret not in again and "Tablet" in again
    assert_no_secrets(again)


def test_page_form_errors_and_partial(client, user_a, mailbox_a):
    client.force_login(user_a)
    body = client.post(PAGE, {"mailbox": "alice@alpha.test", "name": ""}).content.decode()
    assert "field-error" in body and not AppPassword.objects.exists()
    body = client.post(PAGE, {"mailbox": "bob@beta.test", "name": "x"}).content.decode()
    assert "field-error" in body and not AppPassword.objects.exists()  # not a choice for alice
    partial = client.get(PAGE, **HX).content.decode()
    assert "<html" not in partial and 'id="app-password-table"' in partial


def test_page_revoke_and_scope(client, user_a, mailbox_a, bob_password):
    issued = app_password_create(actor=user_a, mailbox=mailbox_a, name="Watch")
    client.force_login(user_a)
    body = client.get(PAGE).content.decode()
    assert "Watch" in body and "Bob&#x27;s phone" not in body and "Bob's phone" not in body

    response = client.post(f"{PAGE}{issued.app_password.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == PAGE
    assert submission_authenticate(username="alice@alpha.test", password=issued.secret) is None

    assert client.post(f"{PAGE}{bob_password.app_password.pk}/revoke/").status_code == 404
    assert AppPassword.objects.get(pk=bob_password.app_password.pk).revoked_at is None


def test_page_requires_sign_in(client):
    response = client.get(PAGE)
    assert response.status_code == 302 and "login" in response["Location"]
