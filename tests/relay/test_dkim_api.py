"""REST API for DKIM keys (/api/v1/dkim-keys/), through DRF's client with bearer tokens."""

from __future__ import annotations

import pytest

from apps.alerts.models import Alert
from apps.core.secrets import secret_decrypt
from apps.relay import services
from apps.relay.models import DkimKey
from tests.factories import DomainFactory

pytestmark = pytest.mark.django_db

API = "/api/v1/dkim-keys"
ERROR_KEYS = {"code", "detail", "fields"}
KEY_FIELDS = {
    "id",
    "domain",
    "selector",
    "algorithm",
    "is_active",
    "state",
    "created_at",
    "retired_at",
    "dns_name",
    "dns_value",
}
LIST_QUERY_CAP = 5


def assert_error(response, status: int, code: str, *, field: str | None = None) -> dict:
    """Every API error is JSON with exactly {code, detail, fields}."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert body["fields"].get(field), body
    return body


def assert_no_private_key(response) -> None:
    text = response.content.decode()
    assert "PRIVATE" not in text and "enc:" not in text
    for stored in DkimKey.objects.values_list("private_key", flat=True):
        pem_body = "".join(secret_decrypt(stored).splitlines()[1:-1])
        assert pem_body[:40] not in text


@pytest.fixture
def as_super(api_client_for, superadmin):
    return api_client_for(superadmin)


@pytest.fixture
def as_admin_a(api_client_for, admin_a):
    return api_client_for(admin_a)


@pytest.fixture
def as_admin_b(api_client_for, admin_b):
    return api_client_for(admin_b)


@pytest.fixture
def alpha_key(domain_a, admin_a):
    return services.dkim_key_create(actor=admin_a, domain=domain_a, selector="s1")


# --- Happy paths -----------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "k_tag"), [("rsa-sha256", "rsa"), ("ed25519-sha256", "ed25519")])
def test_create_returns_key_with_dns_record_and_never_the_private_key(as_admin_a, domain_a, algorithm, k_tag):
    response = as_admin_a.post(API + "/", {"domain": "alpha.test", "algorithm": algorithm}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == KEY_FIELDS
    key = DkimKey.objects.get(pk=body["id"])
    assert body["domain"] == "alpha.test" and body["selector"] == key.selector
    assert body["algorithm"] == algorithm and body["is_active"] is True and body["state"] == "active"
    assert body["retired_at"] is None
    assert body["dns_name"] == f"{key.selector}._domainkey.alpha.test"
    assert body["dns_value"] == f"v=DKIM1; k={k_tag}; p={key.public_key}"
    assert key.private_key.startswith("enc:")
    assert_no_private_key(response)
    assert Alert.objects.filter(kind="relay.dkim_activated", domain_id=domain_a.pk).count() == 1


def test_create_with_selector_makes_pending_key_when_domain_has_a_signer(as_admin_a, alpha_key):
    response = as_admin_a.post(
        API + "/", {"domain": "alpha.test", "algorithm": "ed25519-sha256", "selector": "next"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["state"] == "pending" and response.json()["selector"] == "next"
    assert DkimKey.objects.get(is_active=True).pk == alpha_key.pk


def test_list_retrieve_and_filter_by_domain(as_super, superadmin, alpha_key, domain_b):
    services.dkim_key_create(actor=superadmin, domain=domain_b, selector="b1")

    everything = as_super.get(API + "/")
    assert everything.status_code == 200
    body = everything.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert sorted(row["dns_name"] for row in body["results"]) == [
        "b1._domainkey.beta.test",
        "s1._domainkey.alpha.test",
    ]
    assert_no_private_key(everything)

    filtered = as_super.get(API + "/", {"domain": "beta.test"}).json()
    assert [row["selector"] for row in filtered["results"]] == ["b1"]

    one = as_super.get(f"{API}/{alpha_key.pk}/")
    assert one.status_code == 200 and one.json()["selector"] == "s1" and set(one.json()) == KEY_FIELDS
    assert_no_private_key(one)


def test_list_query_count_is_capped(as_super, superadmin, django_assert_max_num_queries):
    for n in range(6):
        domain = DomainFactory()
        services.dkim_key_create(
            actor=superadmin, domain=domain, algorithm="ed25519-sha256", selector=f"s{n}"
        )
    with django_assert_max_num_queries(LIST_QUERY_CAP):
        response = as_super.get(API + "/")
    assert response.json()["count"] == 6


def test_activate_retires_previous_key_and_raises_alert(as_admin_a, admin_a, domain_a, alpha_key):
    pending = services.dkim_key_create(actor=admin_a, domain=domain_a, selector="s2")

    response = as_admin_a.post(f"{API}/{pending.pk}/activate/")

    assert response.status_code == 200
    assert response.json()["is_active"] is True and response.json()["state"] == "active"
    alpha_key.refresh_from_db()
    assert not alpha_key.is_active and alpha_key.retired_at is not None
    listed = {row["selector"]: row["state"] for row in as_admin_a.get(API + "/").json()["results"]}
    assert listed == {"s1": "retired", "s2": "active"}
    alert = Alert.objects.filter(kind="relay.dkim_activated").latest("id")
    assert alert.domain_id == domain_a.pk and alert.data["selector"] == "s2"


def test_check_reports_publication_status(as_admin_a, alpha_key, dns_zone):
    missing = as_admin_a.post(f"{API}/{alpha_key.pk}/check/")
    assert missing.status_code == 200
    assert missing.json()["state"] == "missing" and missing.json()["found"] == []

    name, value = services.dkim_dns_record(alpha_key)
    dns_zone.txt(name, value)
    published = as_admin_a.post(f"{API}/{alpha_key.pk}/check/").json()
    assert published == {
        "state": "published",
        "detail": f"{name} publishes this key.",
        "dns_name": name,
        "expected": value,
        "found": [value],
    }


def test_rotate_adds_pending_key_or_switches_at_once(as_admin_a, alpha_key):
    pending = as_admin_a.post(API + "/rotate/", {"domain": "alpha.test"}, format="json")
    assert pending.status_code == 201
    assert pending.json()["state"] == "pending" and pending.json()["algorithm"] == "rsa-sha256"
    assert pending.json()["selector"] != "s1"

    switched = as_admin_a.post(
        API + "/rotate/",
        {"domain": "alpha.test", "algorithm": "ed25519-sha256", "activate": True},
        format="json",
    )
    assert switched.status_code == 201
    assert switched.json()["is_active"] is True and switched.json()["algorithm"] == "ed25519-sha256"
    assert DkimKey.objects.get(is_active=True).pk == switched.json()["id"]
    assert DkimKey.objects.filter(domain__name="alpha.test").count() == 3  # old keys stay listed


def test_destroy_deletes_pending_key_and_refuses_active_one(as_admin_a, admin_a, domain_a, alpha_key):
    pending = services.dkim_key_create(actor=admin_a, domain=domain_a, selector="s2")

    assert_error(as_admin_a.delete(f"{API}/{alpha_key.pk}/"), 409, "dkim_key_active")
    assert DkimKey.objects.filter(pk=alpha_key.pk).exists()

    response = as_admin_a.delete(f"{API}/{pending.pk}/")
    assert response.status_code == 204
    assert not DkimKey.objects.filter(pk=pending.pk).exists()

    assert as_admin_a.delete(f"{API}/{alpha_key.pk}/").status_code == 204  # now the only key
    assert not DkimKey.objects.exists()


# --- Scope and roles -------------------------------------------------------------------


def test_domain_admin_of_beta_cannot_see_or_change_alpha_keys(as_admin_b, alpha_key):
    assert as_admin_b.get(API + "/").json()["count"] == 0
    assert as_admin_b.get(API + "/", {"domain": "alpha.test"}).json()["count"] == 0
    assert_error(as_admin_b.get(f"{API}/{alpha_key.pk}/"), 404, "not_found")
    assert_error(as_admin_b.post(f"{API}/{alpha_key.pk}/activate/"), 404, "not_found")
    assert_error(as_admin_b.post(f"{API}/{alpha_key.pk}/check/"), 404, "not_found")
    assert_error(as_admin_b.delete(f"{API}/{alpha_key.pk}/"), 404, "not_found")
    foreign = assert_error(
        as_admin_b.post(API + "/", {"domain": "alpha.test"}, format="json"),
        404,
        "unknown_domain",
        field="domain",
    )
    missing = assert_error(
        as_admin_b.post(API + "/", {"domain": "nowhere.test"}, format="json"), 404, "unknown_domain"
    )
    assert foreign["code"] == missing["code"]  # a foreign domain looks like a missing one
    assert_error(
        as_admin_b.post(API + "/rotate/", {"domain": "alpha.test"}, format="json"), 404, "unknown_domain"
    )
    assert list(DkimKey.objects.values_list("selector", "is_active")) == [("s1", True)]


def test_mailbox_user_is_refused(api_client_for, user_a, alpha_key):
    client = api_client_for(user_a)
    assert_error(client.get(API + "/"), 403, "permission_denied")
    assert_error(client.get(f"{API}/{alpha_key.pk}/"), 403, "permission_denied")
    assert_error(client.post(API + "/", {"domain": "alpha.test"}, format="json"), 403, "permission_denied")
    assert_error(client.post(f"{API}/{alpha_key.pk}/activate/"), 403, "permission_denied")
    assert DkimKey.objects.count() == 1


def test_unauthenticated_request_gets_401(api_client_for, alpha_key):
    client = api_client_for()
    assert_error(client.get(API + "/"), 401, "not_authenticated")
    assert_error(
        client.post(API + "/rotate/", {"domain": "alpha.test"}, format="json"), 401, "not_authenticated"
    )
    assert DkimKey.objects.count() == 1


# --- Input errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        ({}, 400, "invalid", "domain"),
        ({"domain": "alpha.test", "algorithm": "rsa-sha1"}, 400, "invalid", "algorithm"),
        ({"domain": "alpha.test", "private_key": "x"}, 400, "invalid", "private_key"),
        ({"domain": "alpha.test", "selector": "bad_selector"}, 400, "invalid_selector", "selector"),
        ({"domain": "alpha.test", "selector": "s1"}, 409, "selector_taken", "selector"),
        ({"domain": "not a domain"}, 400, "invalid_address", "domain"),
    ],
)
def test_create_input_errors_use_error_shape(as_admin_a, alpha_key, payload, status, code, field):
    assert_error(as_admin_a.post(API + "/", payload, format="json"), status, code, field=field)
    assert DkimKey.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"domain": "alpha.test", "activate": "soon"}, "activate"),
        ({"domain": "alpha.test", "selector": "x"}, "selector"),
        ({"activate": True}, "domain"),
    ],
)
def test_rotate_input_errors_use_error_shape(as_admin_a, alpha_key, payload, field):
    assert_error(as_admin_a.post(API + "/rotate/", payload, format="json"), 400, "invalid", field=field)
    assert DkimKey.objects.count() == 1


def test_unknown_or_malformed_id_is_404_json(as_super, alpha_key):
    assert_error(as_super.get(f"{API}/999999/"), 404, "not_found")
    assert_error(as_super.post(f"{API}/abc/activate/"), 404, "not_found")
