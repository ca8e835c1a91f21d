"""Transport rules through the API (/api/v1/transport-rules/) and the dashboard pages:
superadmins only, the relay password write-only and encrypted at rest."""

from __future__ import annotations

import pytest

from apps.core.secrets import secret_decrypt
from apps.relay import services
from apps.relay.models import TransportRule

pytestmark = pytest.mark.django_db

API = "/api/v1/transport-rules"
PAGE = "/relay/transports/"
ERROR_KEYS = {"code", "detail", "fields"}
FIELDS = {
    "id",
    "domain",
    "host",
    "port",
    "tls",
    "verify_certificate",
    "username",
    "has_password",
    "description",
    "is_active",
    "created_at",
    "updated_at",
}
SECRET = "relay-pass-1234"


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
def as_super(api_client_for, superadmin):
    return api_client_for(superadmin)


@pytest.fixture
def rule(db):
    return services.transport_rule_create(
        domain="partner.test",
        host="relay.partner.test",
        port=587,
        tls="required",
        username="u",
        password=SECRET,
    )


def test_create_stores_the_password_encrypted_and_never_returns_it(as_super):
    payload = {
        "domain": "Bücher.test",
        "host": "smtp.provider.test",
        "port": 587,
        "tls": "required",
        "verify_certificate": True,
        "username": "account",
        "password": SECRET,
        "description": "Partner relay",
    }
    response = as_super.post(API + "/", payload, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == FIELDS and body["has_password"] is True
    assert body["domain"] == "xn--bcher-kva.test" and body["tls"] == "required" and body["is_active"] is True
    assert SECRET not in response.content.decode()
    stored = TransportRule.objects.get(pk=body["id"])
    assert stored.password != SECRET and secret_decrypt(stored.password) == SECRET
    route = services.route_for_domain("xn--bcher-kva.test")
    assert (route.host, route.port, route.password) == ("smtp.provider.test", 587, SECRET)


def test_smarthost_rule_and_defaults(as_super):
    body = as_super.post(API + "/", {"domain": "*", "host": "smarthost.test"}, format="json").json()
    assert (body["domain"], body["port"], body["tls"], body["has_password"]) == (
        "*",
        25,
        "opportunistic",
        False,
    )
    assert services.route_for_domain("anything.test").host == "smarthost.test"


def test_list_retrieve_and_update_keep_or_clear_the_password(as_super, rule):
    (row,) = as_super.get(API + "/").json()["results"]
    assert row["id"] == rule.pk and row["has_password"] is True and SECRET not in str(row)
    assert as_super.get(f"{API}/{rule.pk}/").json()["host"] == "relay.partner.test"

    body = as_super.patch(f"{API}/{rule.pk}/", {"port": 2525, "is_active": False}, format="json").json()
    assert body["port"] == 2525 and body["is_active"] is False and body["has_password"] is True
    rule.refresh_from_db()
    assert secret_decrypt(rule.password) == SECRET
    assert services.route_for_domain("partner.test") is None  # inactive: back to MX

    body = as_super.patch(f"{API}/{rule.pk}/", {"password": ""}, format="json").json()
    assert body["has_password"] is False
    assert TransportRule.objects.get(pk=rule.pk).password == ""


def test_delete(as_super, rule):
    assert as_super.delete(f"{API}/{rule.pk}/").status_code == 204
    assert not TransportRule.objects.exists()
    assert_error(as_super.delete(f"{API}/{rule.pk}/"), 404, "not_found")


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"domain": "partner.test", "host": "other.test"}, 409, "domain"),
        ({"domain": "new.test", "host": "h.test", "port": 0}, 400, "port"),
        ({"domain": "new.test", "host": "h.test", "tls": "sometimes"}, 400, "tls"),
        ({"domain": "new.test"}, 400, "host"),
        ({"domain": "not a domain", "host": "h.test"}, 400, "domain"),
        ({"domain": "new.test", "host": "two words"}, 400, "host"),
        ({"domain": "new.test", "host": "h.test", "priority": 1}, 400, "priority"),
    ],
)
def test_create_rejects_bad_payloads(as_super, rule, payload, status, field):
    assert_error(as_super.post(API + "/", payload, format="json"), status, field=field)
    assert list(TransportRule.objects.values_list("domain", flat=True)) == ["partner.test"]


def test_update_rejects_the_domain_and_bad_values(as_super, rule):
    assert_error(
        as_super.patch(f"{API}/{rule.pk}/", {"domain": "x.test"}, format="json"), 400, field="domain"
    )
    assert_error(as_super.patch(f"{API}/{rule.pk}/", {"port": 70000}, format="json"), 400, field="port")
    assert TransportRule.objects.get(pk=rule.pk).port == 587


def test_only_superadmins_may_use_the_api(api_client_for, admin_a, user_a, rule):
    for user in (admin_a, user_a):
        client = api_client_for(user)
        assert_error(client.get(API + "/"), 403, "permission_denied")
        assert_error(client.get(f"{API}/{rule.pk}/"), 403)
        assert_error(client.post(API + "/", {"domain": "x.test", "host": "h.test"}, format="json"), 403)
        assert_error(client.delete(f"{API}/{rule.pk}/"), 403)
    anonymous = api_client_for().get(API + "/")
    assert anonymous.status_code in (401, 403)
    assert TransportRule.objects.count() == 1


# --- Pages ------------------------------------------------------------------------------


def test_pages_create_edit_and_delete(client, superadmin, rule):
    client.force_login(superadmin)
    body = client.get(PAGE).content.decode()
    assert "relay.partner.test:587" in body and SECRET not in body

    response = client.post(
        PAGE + "new/",
        {"domain": "*", "host": "smarthost.test", "port": "25", "tls": "opportunistic", "is_active": "on"},
    )
    assert response.status_code == 302
    assert TransportRule.objects.filter(domain="*", host="smarthost.test").exists()

    edit = client.get(f"{PAGE}{rule.pk}/").content.decode()
    assert SECRET not in edit and "A password is stored" in edit
    client.post(f"{PAGE}{rule.pk}/", {"host": "relay2.partner.test", "port": "587", "tls": "required"})
    rule.refresh_from_db()
    assert rule.host == "relay2.partner.test" and rule.is_active is False
    assert secret_decrypt(rule.password) == SECRET  # empty password field keeps it
    client.post(
        f"{PAGE}{rule.pk}/",
        {"host": "relay2.partner.test", "port": "587", "tls": "required", "clear_password": "on"},
    )
    assert TransportRule.objects.get(pk=rule.pk).password == ""

    assert "Delete the transport rule" in client.get(f"{PAGE}{rule.pk}/delete/").content.decode()
    assert client.post(f"{PAGE}{rule.pk}/delete/").status_code == 302
    assert not TransportRule.objects.filter(pk=rule.pk).exists()


def test_page_form_shows_service_errors(client, superadmin, rule):
    client.force_login(superadmin)
    body = client.post(
        PAGE + "new/", {"domain": "partner.test", "host": "h.test", "port": "25", "tls": "none"}
    )
    assert (
        body.status_code == 200
        and "field-error" in body.content.decode()
        and "Exists." in body.content.decode()
    )
    assert TransportRule.objects.count() == 1


def test_pages_are_not_found_for_everyone_else(client, admin_a, user_a, rule):
    for user in (admin_a, user_a):
        client.force_login(user)
        assert client.get(PAGE).status_code == 404
        assert client.post(f"{PAGE}{rule.pk}/delete/").status_code == 404
    assert TransportRule.objects.filter(pk=rule.pk).exists()
