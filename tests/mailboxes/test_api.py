"""REST API for domains, mailboxes and aliases, through DRF's client with bearer tokens."""

import json

import pytest
from django.conf import settings
from django.contrib.auth.hashers import check_password

from apps.accounts.models import User
from apps.alerts.models import Alert
from apps.mailboxes.models import GIB, Alias, AliasDestination, Domain, Folder, Mailbox
from tests.factories import TEST_PASSWORD, AliasFactory, DomainAdminFactory, DomainFactory, MailboxFactory

pytestmark = pytest.mark.django_db

API = "/api/v1"
ERROR_KEYS = {"code", "detail", "fields"}
LIST_QUERY_CAP = 6


# --- Helpers ---------------------------------------------------------------------------


def assert_error(response, status: int, code: str, *, field: str | None = None) -> dict:
    """Every API error is JSON with exactly {code, detail, fields}."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["fields"], dict)
    assert all(isinstance(m, str) for messages in body["fields"].values() for m in messages)
    if field is not None:
        assert body["fields"].get(field), body
    return body


def results(response) -> list[str]:
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    key = "name" if "/domains/" in response.request["PATH_INFO"] else "address"
    return [row[key] for row in body["results"]]


def db_state() -> tuple:
    """Everything a refused write must leave untouched."""
    return (
        list(
            Domain.objects.order_by("pk").values_list(
                "name", "description", "is_active", "default_quota_bytes"
            )
        ),
        list(
            Mailbox.objects.order_by("pk").values_list(
                "address", "quota_bytes", "is_active", "display_name", "password"
            )
        ),
        list(Alias.objects.order_by("pk").values_list("address", "description", "is_active")),
        list(AliasDestination.objects.order_by("pk").values_list("alias__address", "address")),
        list(User.objects.order_by("pk").values_list("email", flat=True)),
    )


def send_raw(client, method: str, url: str, body: bytes | str, content_type: str = "application/json"):
    return client.generic(method.upper(), url, data=body, content_type=content_type)


@pytest.fixture
def world(domain_a, domain_b, admin_a, admin_b, mailbox_a, mailbox_b):
    team = AliasFactory(
        domain=domain_a, local_part="team", address="team@alpha.test", destinations=["alice@alpha.test"]
    )
    sales = AliasFactory(
        domain=domain_b, local_part="sales", address="sales@beta.test", destinations=["bob@beta.test"]
    )
    return {
        "domain_a": domain_a.pk,
        "domain_b": domain_b.pk,
        "mailbox_a": mailbox_a.pk,
        "mailbox_b": mailbox_b.pk,
        "alias_a": team.pk,
        "alias_b": sales.pk,
    }


@pytest.fixture
def su(superadmin, api_client_for):
    return api_client_for(superadmin)


@pytest.fixture
def as_admin_a(admin_a, api_client_for):
    return api_client_for(admin_a)


@pytest.fixture
def as_user_a(user_a, api_client_for):
    return api_client_for(user_a)


WRITE_ENDPOINTS = {
    "domain-create": ("post", "/domains/"),
    "domain-update": ("patch", "/domains/{domain_a}/"),
    "mailbox-create": ("post", "/mailboxes/"),
    "mailbox-update": ("patch", "/mailboxes/{mailbox_a}/"),
    "alias-create": ("post", "/aliases/"),
    "alias-update": ("patch", "/aliases/{alias_a}/"),
}


def endpoint(name: str, ids: dict) -> tuple[str, str]:
    method, path = WRITE_ENDPOINTS[name]
    return method, API + path.format(**ids)


# --- Bad input: generic bodies on every write endpoint -----------------------------------

OVERSIZED = json.dumps({"description": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})

GENERIC_BAD_BODIES = [
    pytest.param("[]", "application/json", 400, "invalid", "non_field_errors", id="json-list"),
    pytest.param(
        '[{"name": "x.test"}]', "application/json", 400, "invalid", "non_field_errors", id="list-of-objects"
    ),
    pytest.param('"just a string"', "application/json", 400, "invalid", "non_field_errors", id="json-string"),
    pytest.param("42", "application/json", 400, "invalid", "non_field_errors", id="json-number"),
    pytest.param('{"name": ', "application/json", 400, "parse_error", None, id="malformed"),
    pytest.param("{'single': 'quotes'}", "application/json", 400, "parse_error", None, id="not-json"),
    pytest.param('{"x": NaN}', "application/json", 400, "parse_error", None, id="nan"),
    pytest.param(b"\xff\xfe{}", "application/json", 400, "parse_error", None, id="not-utf8"),
    pytest.param('{"bogus": 1}', "application/json", 400, "invalid", "bogus", id="unknown-field"),
    pytest.param(OVERSIZED, "application/json", 413, "request_too_large", None, id="oversized"),
    pytest.param(
        "name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type", None, id="form"
    ),
    pytest.param("<x/>", "text/xml", 415, "unsupported_media_type", None, id="xml"),
    pytest.param("{}", "application/json; charset=bz2_codec", 400, "parse_error", None, id="bytes-codec"),
]


@pytest.mark.parametrize("name", list(WRITE_ENDPOINTS))
@pytest.mark.parametrize(("body", "content_type", "status", "code", "field"), GENERIC_BAD_BODIES)
def test_write_endpoint_rejects_bad_body(world, su, name, body, content_type, status, code, field):
    method, url = endpoint(name, world)
    before = db_state()
    response = send_raw(su, method, url, body, content_type)
    assert_error(response, status, code, field=field)
    assert db_state() == before


@pytest.mark.parametrize("name", list(WRITE_ENDPOINTS))
def test_write_endpoint_rejects_body_over_configured_limit_with_413(world, su, name, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    method, url = endpoint(name, world)
    before = db_state()
    body = assert_error(send_raw(su, method, url, json.dumps({"x": "y" * 4096})), 413, "request_too_large")
    assert "2048" in body["detail"]
    assert db_state() == before


def test_body_just_under_the_limit_is_parsed(world, su, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    payload = json.dumps({"description": "d" * 200})
    response = send_raw(su, "patch", f"{API}/domains/{world['domain_a']}/", payload)
    assert response.status_code == 200, response.content
    assert Domain.objects.get(pk=world["domain_a"]).description == "d" * 200


def test_json_body_honours_declared_charset(world, su):
    body = '{"description": "caf\u00e9"}'.encode("latin-1")
    response = send_raw(
        su, "patch", f"{API}/domains/{world['domain_a']}/", body, "application/json; charset=latin-1"
    )
    assert response.status_code == 200, response.content
    assert response.json()["description"] == "caf\u00e9"
    assert Domain.objects.get(pk=world["domain_a"]).description == "caf\u00e9"


# --- Bad input: per-endpoint field errors ---------------------------------------------

FIELD_ERRORS = [
    # domains
    ("domain-create", {"name": "-bad.com"}, 400, "invalid_address", "name"),
    ("domain-create", {"name": "a..b"}, 400, "invalid_address", "name"),
    ("domain-create", {"name": "1.2.3.4"}, 400, "invalid_address", "name"),
    ("domain-create", {"name": ""}, 400, "invalid", "name"),
    ("domain-create", {"name": None}, 400, "invalid", "name"),
    ("domain-create", {"name": ["x.test"]}, 400, "invalid", "name"),
    ("domain-create", {}, 400, "invalid", "name"),
    ("domain-create", {"name": "ALPHA.test"}, 409, "duplicate", "name"),
    ("domain-create", {"name": "x.test", "max_mailboxes": -1}, 400, "invalid", "max_mailboxes"),
    (
        "domain-create",
        {"name": "x.test", "default_quota_bytes": "abc"},
        400,
        "invalid",
        "default_quota_bytes",
    ),
    ("domain-create", {"name": "x.test", "default_quota_bytes": -1}, 400, "invalid", "default_quota_bytes"),
    ("domain-create", {"name": "x.test", "is_active": "maybe"}, 400, "invalid", "is_active"),
    ("domain-create", {"name": "x.test", "admins": "admin@alpha.test"}, 400, "invalid", "admins"),
    ("domain-create", {"name": "x.test", "admins": ["nobody@people.test"]}, 400, "invalid", "admins"),
    ("domain-update", {"name": "renamed.test"}, 400, "invalid", "name"),
    ("domain-update", {"is_active": "maybe"}, 400, "invalid", "is_active"),
    ("domain-update", {"max_aliases": "many"}, 400, "invalid", "max_aliases"),
    ("domain-update", {"default_quota_bytes": -5}, 400, "invalid", "default_quota_bytes"),
    ("domain-update", {"admins": 5}, 400, "invalid", "admins"),
    ("domain-update", {"description": "x" * 256}, 400, "invalid", "description"),
    # mailboxes
    (
        "mailbox-create",
        {"address": "not-an-address", "password": TEST_PASSWORD},
        400,
        "invalid_address",
        "address",
    ),
    (
        "mailbox-create",
        {"address": "a b@alpha.test", "password": TEST_PASSWORD},
        400,
        "invalid_address",
        "address",
    ),
    (
        "mailbox-create",
        {"address": "a" * 65 + "@alpha.test", "password": TEST_PASSWORD},
        400,
        "invalid_address",
        "address",
    ),
    (
        "mailbox-create",
        {"address": "x@nowhere.test", "password": TEST_PASSWORD},
        404,
        "unknown_domain",
        "address",
    ),
    (
        "mailbox-create",
        {"address": "ALICE@alpha.test", "password": TEST_PASSWORD},
        409,
        "duplicate",
        "address",
    ),
    (
        "mailbox-create",
        {"address": "team@alpha.test", "password": TEST_PASSWORD},
        409,
        "duplicate",
        "address",
    ),
    ("mailbox-create", {"address": ["x@alpha.test"], "password": TEST_PASSWORD}, 400, "invalid", "address"),
    ("mailbox-create", {"address": "x@alpha.test"}, 400, "invalid", "password"),
    ("mailbox-create", {"address": "x@alpha.test", "password": "short"}, 400, "weak_password", "password"),
    (
        "mailbox-create",
        {"address": "x@alpha.test", "password": TEST_PASSWORD, "quota_bytes": "abc"},
        400,
        "invalid",
        "quota_bytes",
    ),
    (
        "mailbox-create",
        {"address": "x@alpha.test", "password": TEST_PASSWORD, "quota_bytes": -1},
        400,
        "invalid",
        "quota_bytes",
    ),
    (
        "mailbox-create",
        {"address": "x@alpha.test", "password": TEST_PASSWORD, "quota_bytes": 1.5},
        400,
        "invalid",
        "quota_bytes",
    ),
    (
        "mailbox-create",
        {"address": "x@alpha.test", "password": TEST_PASSWORD, "quota_bytes": True},
        400,
        "invalid",
        "quota_bytes",
    ),
    (
        "mailbox-create",
        {"address": "x@alpha.test", "password": TEST_PASSWORD, "is_active": "maybe"},
        400,
        "invalid",
        "is_active",
    ),
    (
        "mailbox-create",
        {"address": "x@alpha.test", "password": TEST_PASSWORD, "owner": "ghost@people.test"},
        400,
        "unknown_owner",
        "owner",
    ),
    ("mailbox-update", {"quota_bytes": "abc"}, 400, "invalid", "quota_bytes"),
    ("mailbox-update", {"quota_bytes": -1}, 400, "invalid", "quota_bytes"),
    ("mailbox-update", {"is_active": "maybe"}, 400, "invalid", "is_active"),
    ("mailbox-update", {"password": "short"}, 400, "weak_password", "password"),
    ("mailbox-update", {"address": "new@alpha.test"}, 400, "invalid", "address"),
    ("mailbox-update", {"display_name": "x" * 151}, 400, "invalid", "display_name"),
    # aliases
    (
        "alias-create",
        {"address": "x@alpha.test", "destinations": "alice@alpha.test"},
        400,
        "invalid",
        "destinations",
    ),
    ("alias-create", {"address": "x@alpha.test", "destinations": 5}, 400, "invalid", "destinations"),
    ("alias-create", {"address": "x@alpha.test", "destinations": {"a": 1}}, 400, "invalid", "destinations"),
    ("alias-create", {"address": "x@alpha.test", "destinations": []}, 400, "invalid", "destinations"),
    ("alias-create", {"address": "x@alpha.test", "destinations": [5]}, 400, "invalid", "destinations"),
    ("alias-create", {"address": "x@alpha.test"}, 400, "invalid", "destinations"),
    (
        "alias-create",
        {"address": "x@alpha.test", "destinations": ["ghost@alpha.test"]},
        400,
        "invalid",
        "destinations",
    ),
    (
        "alias-create",
        {"address": "x@alpha.test", "destinations": ["x@alpha.test"]},
        400,
        "invalid",
        "destinations",
    ),
    (
        "alias-create",
        {"address": "bad address", "destinations": ["alice@alpha.test"]},
        400,
        "invalid_address",
        "address",
    ),
    (
        "alias-create",
        {"address": "a" * 65 + "@alpha.test", "destinations": ["alice@alpha.test"]},
        400,
        "invalid_address",
        "address",
    ),
    (
        "alias-create",
        {"address": "TEAM@alpha.test", "destinations": ["alice@alpha.test"]},
        409,
        "duplicate",
        "address",
    ),
    (
        "alias-create",
        {"address": "alice@alpha.test", "destinations": ["team@alpha.test"]},
        409,
        "duplicate",
        "address",
    ),
    (
        "alias-create",
        {"address": "x@alpha.test", "destinations": ["alice@alpha.test"], "is_active": "maybe"},
        400,
        "invalid",
        "is_active",
    ),
    ("alias-update", {"destinations": "alice@alpha.test"}, 400, "invalid", "destinations"),
    ("alias-update", {"destinations": 7}, 400, "invalid", "destinations"),
    ("alias-update", {"destinations": []}, 400, "invalid", "destinations"),
    ("alias-update", {"destinations": ["outer@alpha.test"]}, 400, "alias_loop", "destinations"),
    ("alias-update", {"destinations": ["team@alpha.test"]}, 400, "invalid", "destinations"),
    ("alias-update", {"address": "other@alpha.test"}, 400, "invalid", "address"),
    ("alias-update", {"is_active": "maybe"}, 400, "invalid", "is_active"),
]


@pytest.mark.parametrize(
    ("name", "payload", "status", "code", "field"),
    FIELD_ERRORS,
    ids=[f"{row[0]}-{i}" for i, row in enumerate(FIELD_ERRORS)],
)
def test_write_endpoint_reports_field_errors(world, su, domain_a, name, payload, status, code, field):
    AliasFactory(
        domain=domain_a, local_part="outer", address="outer@alpha.test", destinations=["team@alpha.test"]
    )
    method, url = endpoint(name, world)
    before = db_state()
    response = getattr(su, method)(url, payload, format="json")
    assert_error(response, status, code, field=field)
    assert db_state() == before


def test_alias_to_external_address_is_accepted_for_forwarding(world, su):
    response = su.post(
        f"{API}/aliases/",
        {"address": "fwd@alpha.test", "destinations": ["someone@example.com"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert Alias.objects.get(address="fwd@alpha.test").destinations.get().address == "someone@example.com"


def test_mailbox_create_over_domain_limit_is_409(world, su, domain_a):
    Domain.objects.filter(pk=domain_a.pk).update(max_mailboxes=1)
    response = su.post(
        f"{API}/mailboxes/", {"address": "x@alpha.test", "password": TEST_PASSWORD}, format="json"
    )
    assert_error(response, 409, "domain_limit_reached")
    assert domain_a.mailboxes.count() == 1


@pytest.mark.parametrize("resource", ["domains", "mailboxes", "aliases"])
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_unknown_or_malformed_id_is_404_json(world, su, resource, method):
    for bad in ("999999", "abc"):
        response = getattr(su, method)(f"{API}/{resource}/{bad}/", {}, format="json")
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize("resource", ["domains", "mailboxes", "aliases"])
def test_put_is_not_allowed(world, su, resource):
    key = {"domains": "domain_a", "mailboxes": "mailbox_a", "aliases": "alias_a"}[resource]
    before = db_state()
    assert_error(su.put(f"{API}/{resource}/{world[key]}/", {}, format="json"), 405, "method_not_allowed")
    assert db_state() == before


# --- Unauthenticated -------------------------------------------------------------------

ANONYMOUS_CALLS = [
    ("get", "/domains/"),
    ("post", "/domains/"),
    ("get", "/domains/{domain_a}/"),
    ("patch", "/domains/{domain_a}/"),
    ("delete", "/domains/{domain_a}/"),
    ("get", "/mailboxes/"),
    ("post", "/mailboxes/"),
    ("get", "/mailboxes/{mailbox_a}/"),
    ("patch", "/mailboxes/{mailbox_a}/"),
    ("delete", "/mailboxes/{mailbox_a}/"),
    ("get", "/aliases/"),
    ("post", "/aliases/"),
    ("get", "/aliases/{alias_a}/"),
    ("patch", "/aliases/{alias_a}/"),
    ("delete", "/aliases/{alias_a}/"),
]


@pytest.mark.parametrize(("method", "path"), ANONYMOUS_CALLS)
def test_unauthenticated_request_gets_401_json(world, api_client_for, method, path):
    before = db_state()
    response = getattr(api_client_for(None), method)(API + path.format(**world), {}, format="json")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert db_state() == before


@pytest.mark.parametrize("header", ["Bearer a3_nope_nope", "Bearer", "Bearer a b", "Bearer garbage"])
def test_bad_bearer_token_gets_401_json(world, api_client_for, header):
    client = api_client_for(None)
    client.credentials(HTTP_AUTHORIZATION=header)
    body = assert_error(client.get(f"{API}/mailboxes/"), 401, "authentication_failed")
    assert "results" not in body


def test_session_login_redirect_never_applies_to_api(world, client):
    response = client.get(f"{API}/mailboxes/")
    assert_error(response, 401, "not_authenticated")
    assert "Location" not in response


# --- Domains: happy paths --------------------------------------------------------------


def test_domain_create_returns_the_new_domain(world, su):
    DomainAdminFactory(email="boss@people.test")
    response = su.post(
        f"{API}/domains/",
        {
            "name": "Bücher.Example",
            "description": "Books",
            "admins": ["boss@people.test"],
            "max_mailboxes": 9,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "xn--bcher-kva.example"
    assert body["name_unicode"] == "bücher.example"
    assert body["admins"] == ["boss@people.test"]
    assert (body["description"], body["max_mailboxes"], body["mailbox_count"], body["alias_count"]) == (
        "Books",
        9,
        0,
        0,
    )
    assert body["default_quota_bytes"] == GIB
    assert Domain.objects.get(pk=body["id"]).admins.get().email == "boss@people.test"


def test_domain_list_and_retrieve(world, su, domain_a):
    assert results(su.get(f"{API}/domains/")) == ["alpha.test", "beta.test"]
    body = su.get(f"{API}/domains/{domain_a.pk}/").json()
    assert body["name"] == "alpha.test"
    assert (body["mailbox_count"], body["alias_count"]) == (1, 1)
    assert body["admins"] == ["admin@alpha.test"]


def test_domain_patch_disables_and_raises_alert(world, su, domain_a):
    response = su.patch(
        f"{API}/domains/{domain_a.pk}/", {"is_active": False, "description": "paused"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["is_active"], response.json()["description"]) == (False, "paused")
    assert Domain.objects.get(pk=domain_a.pk).is_active is False
    assert Alert.objects.filter(kind="mailboxes.domain_disabled", domain_id=domain_a.pk).count() == 1


def test_domain_patch_replaces_admins(world, su, domain_a):
    DomainAdminFactory(email="new@people.test")
    response = su.patch(f"{API}/domains/{domain_a.pk}/", {"admins": ["new@people.test"]}, format="json")
    assert response.json()["admins"] == ["new@people.test"]
    assert list(domain_a.admins.values_list("email", flat=True)) == ["new@people.test"]


def test_domain_delete_returns_deletion_report(world, su, domain_a):
    response = su.delete(f"{API}/domains/{domain_a.pk}/")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "mailboxes": ["alice@alpha.test"],
        "aliases": ["team@alpha.test"],
        "destinations_removed": [],
        "users": ["alice@alpha.test"],
    }
    assert not Domain.objects.filter(pk=domain_a.pk).exists()
    assert list(Alias.objects.values_list("address", flat=True)) == ["sales@beta.test"]


# --- Mailboxes: happy paths ------------------------------------------------------------


def test_mailbox_create_returns_the_new_mailbox(world, as_admin_a):
    response = as_admin_a.post(
        f"{API}/mailboxes/",
        {"address": "Carol@Alpha.test", "password": TEST_PASSWORD, "display_name": "Carol"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("address", "address_display", "domain", "owner", "display_name")} == {
        "address": "carol@alpha.test",
        "address_display": "carol@alpha.test",
        "domain": "alpha.test",
        "owner": "carol@alpha.test",
        "display_name": "Carol",
    }
    assert (body["quota_bytes"], body["used_bytes"], body["is_active"]) == (GIB, 0, True)
    assert "password" not in body
    mailbox = Mailbox.objects.get(pk=body["id"])
    assert check_password(TEST_PASSWORD, mailbox.password)
    assert Folder.objects.filter(mailbox=mailbox).count() == 5


def test_mailbox_create_with_owner_and_quota(world, su, plain_user):
    response = su.post(
        f"{API}/mailboxes/",
        {"address": "ünï@alpha.test", "password": TEST_PASSWORD, "owner": plain_user.email, "quota_bytes": 0},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert (response.json()["owner"], response.json()["quota_bytes"]) == (plain_user.email, 0)
    assert Mailbox.objects.get(address="ünï@alpha.test").owner == plain_user


def test_mailbox_list_and_retrieve(world, as_admin_a, mailbox_a):
    assert results(as_admin_a.get(f"{API}/mailboxes/")) == ["alice@alpha.test"]
    body = as_admin_a.get(f"{API}/mailboxes/{mailbox_a.pk}/").json()
    assert (body["id"], body["address"], body["owner"]) == (
        mailbox_a.pk,
        "alice@alpha.test",
        "alice@alpha.test",
    )


def test_mailbox_patch_by_domain_admin(world, as_admin_a, mailbox_a):
    response = as_admin_a.patch(
        f"{API}/mailboxes/{mailbox_a.pk}/", {"quota_bytes": 2 * GIB, "is_active": False}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["quota_bytes"], response.json()["is_active"]) == (2 * GIB, False)
    stored = Mailbox.objects.get(pk=mailbox_a.pk)
    assert (stored.quota_bytes, stored.is_active) == (2 * GIB, False)
    assert Alert.objects.filter(kind="mailboxes.mailbox_disabled").count() == 1


def test_mailbox_delete_returns_deletion_report(world, as_admin_a, mailbox_a):
    response = as_admin_a.delete(f"{API}/mailboxes/{mailbox_a.pk}/")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "mailboxes": ["alice@alpha.test"],
        "aliases": ["team@alpha.test"],
        "destinations_removed": ["team@alpha.test -> alice@alpha.test"],
        "users": ["alice@alpha.test"],
    }
    assert not Mailbox.objects.filter(pk=mailbox_a.pk).exists()
    assert not Alias.objects.filter(address="team@alpha.test").exists()


# --- Aliases: happy paths --------------------------------------------------------------


def test_alias_create_returns_the_new_alias(world, as_admin_a):
    response = as_admin_a.post(
        f"{API}/aliases/",
        {
            "address": "Info@alpha.test",
            "destinations": ["team@alpha.test", "ALICE@alpha.test"],
            "description": "x",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["address"], body["domain"], body["is_catch_all"], body["description"]) == (
        "info@alpha.test",
        "alpha.test",
        False,
        "x",
    )
    assert body["destinations"] == ["team@alpha.test", "alice@alpha.test"]
    assert Alias.objects.filter(pk=body["id"]).exists()


def test_alias_create_catch_all(world, as_admin_a):
    response = as_admin_a.post(
        f"{API}/aliases/", {"address": "@alpha.test", "destinations": ["alice@alpha.test"]}, format="json"
    )
    assert response.status_code == 201, response.content
    assert (response.json()["address"], response.json()["is_catch_all"]) == ("@alpha.test", True)
    second = as_admin_a.post(
        f"{API}/aliases/", {"address": "@alpha.test", "destinations": ["team@alpha.test"]}, format="json"
    )
    assert_error(second, 409, "duplicate", field="address")
    assert Alias.objects.filter(address="@alpha.test").count() == 1


def test_alias_list_and_retrieve(world, as_admin_a):
    assert results(as_admin_a.get(f"{API}/aliases/")) == ["team@alpha.test"]
    body = as_admin_a.get(f"{API}/aliases/{world['alias_a']}/").json()
    assert (body["address"], body["destinations"]) == ("team@alpha.test", ["alice@alpha.test"])


def test_alias_patch_replaces_destinations(world, as_admin_a, domain_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    response = as_admin_a.patch(
        f"{API}/aliases/{world['alias_a']}/",
        {"destinations": ["carol@alpha.test"], "is_active": False},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert (response.json()["destinations"], response.json()["is_active"]) == (["carol@alpha.test"], False)
    assert list(
        AliasDestination.objects.filter(alias_id=world["alias_a"]).values_list("address", flat=True)
    ) == ["carol@alpha.test"]


def test_alias_delete_returns_deletion_report(world, as_admin_a, domain_a):
    AliasFactory(
        domain=domain_a, local_part="outer", address="outer@alpha.test", destinations=["team@alpha.test"]
    )
    response = as_admin_a.delete(f"{API}/aliases/{world['alias_a']}/")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "mailboxes": [],
        "aliases": ["team@alpha.test", "outer@alpha.test"],
        "destinations_removed": ["outer@alpha.test -> team@alpha.test"],
        "users": [],
    }
    assert not Alias.objects.filter(address__in=["team@alpha.test", "outer@alpha.test"]).exists()


# --- Per-role scoping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "key"), [("mailboxes", "mailbox_b"), ("aliases", "alias_b"), ("domains", "domain_b")]
)
def test_domain_admin_cannot_retrieve_other_domains_objects(world, as_admin_a, resource, key):
    assert_error(as_admin_a.get(f"{API}/{resource}/{world[key]}/"), 404, "not_found")


@pytest.mark.parametrize(("resource", "key"), [("mailboxes", "mailbox_b"), ("aliases", "alias_b")])
@pytest.mark.parametrize("method", ["patch", "delete"])
def test_domain_admin_cannot_change_other_domains_objects(world, as_admin_a, resource, key, method):
    before = db_state()
    payload = {"description": "hijacked"} if resource == "aliases" else {"display_name": "hijacked"}
    response = getattr(as_admin_a, method)(f"{API}/{resource}/{world[key]}/", payload, format="json")
    body = assert_error(response, 404, "not_found")
    # Same answer as for an id that does not exist at all.
    missing = getattr(as_admin_a, method)(f"{API}/{resource}/999999/", payload, format="json")
    assert missing.json() == body
    assert db_state() == before


@pytest.mark.parametrize("target", ["domain_a", "domain_b", "missing"])
@pytest.mark.parametrize("method", ["patch", "delete"])
def test_domain_admin_cannot_change_any_domain(world, as_admin_a, target, method):
    before = db_state()
    domain_id = world.get(target, 999999)
    response = getattr(as_admin_a, method)(f"{API}/domains/{domain_id}/", {"description": "x"}, format="json")
    # A role refusal, identical for own, foreign and missing ids: it reveals nothing.
    assert assert_error(response, 403, "permission_denied")["detail"]
    assert db_state() == before


def test_domain_admin_cannot_create_domains(world, as_admin_a):
    assert_error(
        as_admin_a.post(f"{API}/domains/", {"name": "mine.test"}, format="json"), 403, "permission_denied"
    )
    assert not Domain.objects.filter(name="mine.test").exists()


def test_domain_admin_lists_only_own_domain(world, as_admin_a):
    assert results(as_admin_a.get(f"{API}/domains/")) == ["alpha.test"]


def test_domain_admin_creates_mailboxes_only_in_own_domain(world, as_admin_a):
    denied = as_admin_a.post(
        f"{API}/mailboxes/", {"address": "x@beta.test", "password": TEST_PASSWORD}, format="json"
    )
    body = assert_error(denied, 404, "unknown_domain", field="address")
    unknown = as_admin_a.post(
        f"{API}/mailboxes/", {"address": "x@nowhere.test", "password": TEST_PASSWORD}, format="json"
    )
    assert unknown.json()["code"] == body["code"]  # a foreign domain looks like a missing one
    assert not Mailbox.objects.filter(address="x@beta.test").exists()
    allowed = as_admin_a.post(
        f"{API}/mailboxes/", {"address": "x@alpha.test", "password": TEST_PASSWORD}, format="json"
    )
    assert allowed.status_code == 201
    assert Mailbox.objects.filter(address="x@alpha.test").exists()


def test_domain_admin_creates_aliases_only_in_own_domain(world, as_admin_a):
    response = as_admin_a.post(
        f"{API}/aliases/", {"address": "x@beta.test", "destinations": ["bob@beta.test"]}, format="json"
    )
    assert_error(response, 404, "unknown_domain", field="address")
    assert not Alias.objects.filter(address="x@beta.test").exists()


def test_mailbox_user_sees_only_own_objects(world, as_user_a):
    assert results(as_user_a.get(f"{API}/mailboxes/")) == ["alice@alpha.test"]
    assert results(as_user_a.get(f"{API}/domains/")) == ["alpha.test"]
    assert results(as_user_a.get(f"{API}/aliases/")) == ["team@alpha.test"]
    assert_error(as_user_a.get(f"{API}/mailboxes/{world['mailbox_b']}/"), 404, "not_found")
    assert_error(as_user_a.get(f"{API}/aliases/{world['alias_b']}/"), 404, "not_found")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/mailboxes/", {"address": "extra@alpha.test", "password": TEST_PASSWORD}),
        ("/aliases/", {"address": "extra@alpha.test", "destinations": ["alice@alpha.test"]}),
        ("/domains/", {"name": "extra.test"}),
    ],
)
def test_mailbox_user_cannot_create(world, as_user_a, path, payload):
    before = db_state()
    assert_error(as_user_a.post(API + path, payload, format="json"), 403, "permission_denied")
    assert db_state() == before


def test_mailbox_user_changes_own_display_name_and_password(world, as_user_a, mailbox_a):
    response = as_user_a.patch(
        f"{API}/mailboxes/{mailbox_a.pk}/",
        {"display_name": "Alice", "password": "a fresh long passphrase"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["display_name"] == "Alice"
    assert check_password("a fresh long passphrase", Mailbox.objects.get(pk=mailbox_a.pk).password)


@pytest.mark.parametrize("payload", [{"quota_bytes": 1}, {"is_active": False}])
def test_mailbox_user_cannot_change_own_quota_or_state(world, as_user_a, mailbox_a, payload):
    before = db_state()
    assert_error(
        as_user_a.patch(f"{API}/mailboxes/{mailbox_a.pk}/", payload, format="json"), 403, "permission_denied"
    )
    assert db_state() == before


def test_mailbox_user_cannot_delete_own_mailbox(world, as_user_a, mailbox_a):
    assert_error(as_user_a.delete(f"{API}/mailboxes/{mailbox_a.pk}/"), 403, "permission_denied")
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_mailbox_user_cannot_patch_other_mailbox(world, as_user_a, mailbox_b):
    assert_error(
        as_user_a.patch(f"{API}/mailboxes/{mailbox_b.pk}/", {"display_name": "x"}, format="json"),
        404,
        "not_found",
    )
    assert Mailbox.objects.get(pk=mailbox_b.pk).display_name == ""


# --- Pagination and filters -----------------------------------------------------------


def test_mailbox_list_is_paginated(world, su, domain_a):
    for i in range(23):
        MailboxFactory(domain=domain_a, local_part=f"m{i:02d}", address=f"m{i:02d}@alpha.test")
    first = su.get(f"{API}/mailboxes/?page_size=10").json()
    assert first["count"] == 25
    assert len(first["results"]) == 10
    assert first["previous"] is None
    assert "page=2" in first["next"] and "page_size=10" in first["next"]
    last = su.get(f"{API}/mailboxes/?page_size=10&page=3").json()
    assert len(last["results"]) == 5 and last["next"] is None and last["previous"]
    seen = {row["address"] for row in first["results"]} | {row["address"] for row in last["results"]}
    assert len(seen) == 15
    default = su.get(f"{API}/mailboxes/").json()
    assert (default["count"], len(default["results"]), default["next"]) == (25, 25, None)


def test_page_out_of_range_is_404_json(world, su):
    assert_error(su.get(f"{API}/mailboxes/?page=99"), 404, "not_found")


MAILBOX_FILTERS = [
    ("domain=beta.test", ["bob@beta.test", "off@beta.test"]),
    ("domain=BETA.TEST", ["bob@beta.test", "off@beta.test"]),
    ("is_active=false", ["off@beta.test"]),
    ("is_active=true", ["alice@alpha.test", "bob@beta.test", "carol@alpha.test"]),
    ("address=car", ["carol@alpha.test"]),
    ("owner=alice@alpha.test", ["alice@alpha.test"]),
    ("search=carol display", ["carol@alpha.test"]),  # terms AND across fields
    ("search=carol bob", []),
    ("search=Display", ["carol@alpha.test"]),
    ("domain=alpha.test&is_active=true&search=ali", ["alice@alpha.test"]),
    ("ordering=-address", ["off@beta.test", "carol@alpha.test", "bob@beta.test", "alice@alpha.test"]),
]


@pytest.mark.parametrize(("query", "expected"), MAILBOX_FILTERS)
def test_mailbox_list_filters(world, su, domain_a, domain_b, query, expected):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test", display_name="Display")
    MailboxFactory(domain=domain_b, local_part="off", address="off@beta.test", is_active=False)
    found = results(su.get(f"{API}/mailboxes/?{query}"))
    assert found == expected if query.startswith("ordering") else sorted(found) == expected


ALIAS_FILTERS = [
    ("is_catch_all=true", ["@alpha.test"]),
    ("is_catch_all=false", ["multi@alpha.test", "sales@beta.test", "team@alpha.test"]),
    ("destination=alice@alpha.test", ["@alpha.test", "multi@alpha.test", "team@alpha.test"]),
    ("destination=ALICE@alpha.test", ["@alpha.test", "multi@alpha.test", "team@alpha.test"]),
    ("destination=nobody@alpha.test", []),
    ("domain=beta.test", ["sales@beta.test"]),
    ("address=tea", ["team@alpha.test"]),
    ("is_active=false", ["multi@alpha.test"]),
    ("search=multi", ["multi@alpha.test"]),
    ("search=described", ["@alpha.test"]),
]


@pytest.mark.parametrize(("query", "expected"), ALIAS_FILTERS)
def test_alias_list_filters(world, su, domain_a, query, expected):
    AliasFactory(
        domain=domain_a,
        local_part="multi",
        address="multi@alpha.test",
        destinations=["alice@alpha.test", "team@alpha.test"],
        is_active=False,
    )
    AliasFactory(
        domain=domain_a,
        local_part="",
        address="@alpha.test",
        destinations=["alice@alpha.test"],
        description="described",
    )
    assert sorted(results(su.get(f"{API}/aliases/?{query}"))) == expected


DOMAIN_FILTERS = [
    ("name=alp", ["alpha.test"]),
    ("is_active=false", ["gamma.test"]),
    ("search=greek", ["gamma.test"]),
    ("ordering=-name", ["gamma.test", "beta.test", "alpha.test"]),
]


@pytest.mark.parametrize(("query", "expected"), DOMAIN_FILTERS)
def test_domain_list_filters(world, su, query, expected):
    DomainFactory(name="gamma.test", is_active=False, description="greek letters")
    found = results(su.get(f"{API}/domains/?{query}"))
    assert found == expected


# --- Query counts ---------------------------------------------------------------------


@pytest.fixture
def crowd(domain_a):
    """About twenty of everything in alpha.test, each with related rows to prefetch."""
    for i in range(20):
        DomainFactory(name=f"crowd{i:02d}.test", admins=[DomainAdminFactory()])
        mailbox = MailboxFactory(
            domain=domain_a, local_part=f"crowd{i:02d}", address=f"crowd{i:02d}@alpha.test"
        )
        AliasFactory(
            domain=domain_a,
            local_part=f"list{i:02d}",
            address=f"list{i:02d}@alpha.test",
            destinations=[mailbox.address, "alice@alpha.test"],
        )


@pytest.mark.parametrize(
    ("path", "superadmin_count"), [("/domains/", 22), ("/mailboxes/", 22), ("/aliases/", 22)]
)
def test_list_endpoint_query_count_is_capped(
    world, crowd, superadmin, admin_a, api_client_for, django_assert_max_num_queries, path, superadmin_count
):
    for actor, expected in ((superadmin, superadmin_count), (admin_a, None)):
        client = api_client_for(actor)
        with django_assert_max_num_queries(LIST_QUERY_CAP):
            response = client.get(API + path)
        body = response.json()
        if expected is not None:
            assert body["count"] == expected
        else:
            assert body["count"] == (1 if path == "/domains/" else 21)
        assert len(body["results"]) == body["count"]
