"""Dashboard pages: full pages vs HTMX partials, form errors, redirects and scoping."""

import pytest
from django.contrib.auth.hashers import check_password

from apps.alerts.models import Alert
from apps.mailboxes.models import GIB, Alias, AliasDestination, Domain, Mailbox
from tests.factories import TEST_PASSWORD, AliasFactory, DomainAdminFactory, MailboxFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def world(domain_a, domain_b, admin_a, admin_b, mailbox_a, mailbox_b):
    AliasFactory(
        domain=domain_a, local_part="team", address="team@alpha.test", destinations=["alice@alpha.test"]
    )
    AliasFactory(
        domain=domain_b,
        local_part="fwd",
        address="fwd@beta.test",
        destinations=["alice@alpha.test", "bob@beta.test"],
    )
    AliasFactory(
        domain=domain_b, local_part="sales", address="sales@beta.test", destinations=["bob@beta.test"]
    )


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def text(response) -> str:
    return response.content.decode()


# --- Lists: full page vs partial -------------------------------------------------------

LISTS = [
    ("/mail/domains/", "domain-table", "alpha.test"),
    ("/mail/mailboxes/", "mailbox-table", "alice@alpha.test"),
    ("/mail/aliases/", "alias-table", "team@alpha.test"),
]


@pytest.mark.parametrize(("url", "table_id", "expected"), LISTS)
def test_list_view_renders_full_page(world, login, superadmin, url, table_id, expected):
    response = login(superadmin).get(url)
    assert response.status_code == 200
    body = text(response)
    assert "<html" in body and 'name="q"' in body
    assert f'id="{table_id}"' in body and expected in body


@pytest.mark.parametrize(("url", "table_id", "expected"), LISTS)
def test_list_view_returns_only_table_partial_for_htmx(world, login, superadmin, url, table_id, expected):
    response = login(superadmin).get(url, **HX)
    assert response.status_code == 200
    body = text(response)
    assert "<html" not in body and 'name="q"' not in body
    assert body.lstrip().startswith(f'<div id="{table_id}">')
    assert expected in body


@pytest.mark.parametrize(("url", "table_id", "expected"), LISTS)
def test_list_view_boosted_htmx_gets_full_page(world, login, superadmin, url, table_id, expected):
    body = text(login(superadmin).get(url, HTTP_HX_BOOSTED="true", **HX))
    assert "<html" in body and f'id="{table_id}"' in body and expected in body


@pytest.mark.parametrize("url", [url for url, _, _ in LISTS])
def test_list_view_redirects_anonymous_to_login(world, client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/") and "next=" in response["Location"]


def test_mailbox_list_search_narrows_rows(world, login, superadmin, domain_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test", display_name="Carol C")
    body = text(login(superadmin).get("/mail/mailboxes/?q=carol", **HX))
    assert "carol@alpha.test" in body and "alice@alpha.test" not in body


def test_mailbox_list_search_without_match_says_so(world, login, superadmin):
    body = text(login(superadmin).get("/mail/mailboxes/?q=zzz", **HX))
    assert "No mailboxes match." in body and "alice@alpha.test" not in body


def test_alias_list_search_shows_each_alias_once(world, login, superadmin, domain_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    alias = AliasFactory(
        domain=domain_a,
        local_part="pair",
        address="pair@alpha.test",
        destinations=["alice@alpha.test", "carol@alpha.test"],
    )
    body = text(login(superadmin).get("/mail/aliases/?q=alpha.test", **HX))
    assert body.count(f'id="alias-{alias.pk}"') == 1


def test_mailbox_list_filters_by_domain(world, login, superadmin):
    response = login(superadmin).get("/mail/mailboxes/?domain=beta.test")
    body = text(response)
    assert "Mailboxes in beta.test" in body
    assert "bob@beta.test" in body and "alice@alpha.test" not in body


def test_mailbox_list_is_paginated(world, login, superadmin, domain_a):
    for i in range(30):
        MailboxFactory(domain=domain_a, local_part=f"m{i:02d}", address=f"m{i:02d}@alpha.test")
    first = text(login(superadmin).get("/mail/mailboxes/", **HX))
    second = text(login(superadmin).get("/mail/mailboxes/?page=2", **HX))
    assert first.count('<tr id="mailbox-') == 25 and "Page 1 of 2" in first and "32 total" in first
    assert second.count('<tr id="mailbox-') == 7 and "Page 2 of 2" in second


def test_domain_list_for_domain_admin_shows_only_own_domain(world, login, admin_a):
    body = text(login(admin_a).get("/mail/domains/"))
    assert "alpha.test" in body and "beta.test" not in body
    assert "Add domain" not in body and "/mail/domains/new/" not in body


def test_mailbox_list_for_domain_admin_is_scoped(world, login, admin_a):
    body = text(login(admin_a).get("/mail/mailboxes/"))
    assert "alice@alpha.test" in body and "bob@beta.test" not in body


def test_mailbox_list_for_mailbox_user_shows_own_without_actions(world, login, user_a, mailbox_a):
    body = text(login(user_a).get("/mail/mailboxes/"))
    assert "alice@alpha.test" in body and "bob@beta.test" not in body
    assert f"/mail/mailboxes/{mailbox_a.pk}/delete/" not in body and "Add mailbox" not in body


def test_alias_list_for_mailbox_user_shows_aliases_delivering_to_them(world, login, user_a):
    body = text(login(user_a).get("/mail/aliases/"))
    assert "team@alpha.test" in body and "fwd@beta.test" in body and "sales@beta.test" not in body


# --- Domain pages ---------------------------------------------------------------------


def test_domain_create_view_creates_and_redirects(world, login, superadmin):
    DomainAdminFactory(email="boss@people.test")
    response = login(superadmin).post(
        "/mail/domains/new/",
        {
            "name": "Bücher.Example",
            "is_active": "on",
            "max_mailboxes": 0,
            "max_aliases": 0,
            "default_quota_mib": 512,
            "admins": "boss@people.test",
        },
        follow=True,
    )
    assert response.redirect_chain == [("/mail/domains/", 302)]
    assert "Domain bücher.example added." in text(response)
    domain = Domain.objects.get(name="xn--bcher-kva.example")
    assert domain.default_quota_bytes == 512 * 1024 * 1024
    assert list(domain.admins.values_list("email", flat=True)) == ["boss@people.test"]


@pytest.mark.parametrize(
    ("name", "admins", "message"),
    [
        ("-bad.com", "", "is not a valid domain name"),
        ("a..b", "", "is not a valid domain name"),
        ("1.2.3.4", "", "is an IP address, not a domain name."),
        ("ALPHA.test", "", "This domain already exists."),
        ("", "", "This field is required."),
        ("ok.test", "nobody@people.test", "No user nobody@people.test."),
    ],
)
def test_domain_create_view_shows_field_errors(world, login, superadmin, name, admins, message):
    response = login(superadmin).post(
        "/mail/domains/new/",
        {"name": name, "max_mailboxes": 0, "max_aliases": 0, "default_quota_mib": 1024, "admins": admins},
    )
    assert response.status_code == 200
    body = text(response)
    assert 'class="error"' in body and message in body
    assert Domain.objects.count() == 2


@pytest.mark.parametrize("actor_fixture", ["admin_a", "user_a"])
@pytest.mark.parametrize(
    "url", ["/mail/domains/new/", "/mail/domains/{domain_a}/", "/mail/domains/{domain_a}/delete/"]
)
def test_domain_pages_are_404_for_non_superadmin(world, request, login, domain_a, actor_fixture, url):
    client = login(request.getfixturevalue(actor_fixture))
    path = url.format(domain_a=domain_a.pk)
    assert client.get(path).status_code == 404
    response = client.post(
        path, {"name": "x.test", "max_mailboxes": 0, "max_aliases": 0, "default_quota_mib": 1}
    )
    assert response.status_code == 404
    assert Domain.objects.filter(pk=domain_a.pk, description="").exists()
    assert not Domain.objects.filter(name="x.test").exists()


def test_domain_edit_view_disables_domain_and_raises_alert(world, login, superadmin, domain_a):
    response = login(superadmin).post(
        f"/mail/domains/{domain_a.pk}/",
        {
            "description": "paused",
            "max_mailboxes": 5,
            "max_aliases": 0,
            "default_quota_mib": 1024,
            "admins": "",
        },
    )
    assert response.status_code == 302
    domain_a.refresh_from_db()
    assert (domain_a.is_active, domain_a.description, domain_a.max_mailboxes) == (False, "paused", 5)
    assert not domain_a.admins.exists()
    assert Alert.objects.filter(kind="mailboxes.domain_disabled", domain_id=domain_a.pk).exists()


def test_domain_edit_view_prefills_current_values(world, login, superadmin, domain_a):
    body = text(login(superadmin).get(f"/mail/domains/{domain_a.pk}/"))
    assert "admin@alpha.test" in body and 'value="1024"' in body
    assert 'name="name"' not in body


def test_domain_delete_confirmation_lists_consequences_then_deletes(world, login, superadmin, domain_a):
    client = login(superadmin)
    body = text(client.get(f"/mail/domains/{domain_a.pk}/delete/"))
    assert "Delete domain alpha.test?" in body
    assert "1 mailboxes and their folders" in body and "1 aliases" in body
    assert Domain.objects.filter(pk=domain_a.pk).exists()
    response = client.post(f"/mail/domains/{domain_a.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/mail/domains/", 302)]
    assert "Domain alpha.test deleted." in text(response)
    assert not Domain.objects.filter(pk=domain_a.pk).exists()
    assert list(
        AliasDestination.objects.filter(alias__address="fwd@beta.test").values_list("address", flat=True)
    ) == ["bob@beta.test"]


# --- Mailbox create -------------------------------------------------------------------


def test_mailbox_create_view_creates_and_redirects(world, login, admin_a):
    response = login(admin_a).post(
        "/mail/mailboxes/new/",
        {"address": "Carol@alpha.test", "password": TEST_PASSWORD, "display_name": "Carol", "quota_mib": 10},
        follow=True,
    )
    assert response.redirect_chain == [("/mail/mailboxes/", 302)]
    assert "Mailbox carol@alpha.test created." in text(response)
    mailbox = Mailbox.objects.get(address="carol@alpha.test")
    assert (mailbox.display_name, mailbox.quota_bytes) == ("Carol", 10 * 1024 * 1024)


def test_mailbox_create_view_lists_manageable_domains(world, login, admin_a):
    body = text(login(admin_a).get("/mail/mailboxes/new/"))
    assert "Domains you manage: alpha.test" in body and "beta.test" not in body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"address": "not-an-address"}, "is not an email address: it has no @-sign."),
        ({"address": "two words@alpha.test"}, "is not a valid address"),
        ({"address": "ALICE@alpha.test"}, "Already used by a mailbox."),
        ({"address": "team@alpha.test"}, "Already used by an alias."),
        ({"address": "x@beta.test"}, "beta.test is not a domain hosted here."),
        ({"address": "x@alpha.test", "password": "short"}, "This password is too short."),
        ({"address": "x@alpha.test", "password": ""}, "This field is required."),
        ({"address": "x@alpha.test", "quota_mib": -1}, "Ensure this value is greater than or equal to 0."),
        ({"address": "x@alpha.test", "quota_mib": "abc"}, "Enter a whole number."),
        ({"address": "x@alpha.test", "owner": "ghost@people.test"}, "No such user that you may assign."),
    ],
)
def test_mailbox_create_view_shows_field_errors(world, login, admin_a, data, message):
    response = login(admin_a).post("/mail/mailboxes/new/", {"password": TEST_PASSWORD, **data})
    assert response.status_code == 200
    body = text(response)
    assert 'class="error"' in body and message in body
    assert Mailbox.objects.count() == 2


def test_mailbox_create_view_shows_domain_limit_as_form_error(world, login, admin_a, domain_a):
    Domain.objects.filter(pk=domain_a.pk).update(max_mailboxes=1)
    response = login(admin_a).post(
        "/mail/mailboxes/new/", {"address": "x@alpha.test", "password": TEST_PASSWORD}
    )
    body = text(response)
    assert 'class="form-errors"' in body and "already has its maximum of 1 mailboxes" in body
    assert domain_a.mailboxes.count() == 1


@pytest.mark.parametrize("url", ["/mail/mailboxes/new/", "/mail/aliases/new/"])
def test_create_pages_are_404_for_mailbox_user(world, login, user_a, url):
    client = login(user_a)
    assert client.get(url).status_code == 404
    client.post(
        url, {"address": "x@alpha.test", "password": TEST_PASSWORD, "destinations": "alice@alpha.test"}
    )
    assert not Mailbox.objects.filter(address="x@alpha.test").exists()
    assert not Alias.objects.filter(address="x@alpha.test").exists()


# --- Mailbox edit, toggle, delete -----------------------------------------------------


def test_mailbox_edit_view_full_page_without_htmx(world, login, admin_a, mailbox_a):
    body = text(login(admin_a).get(f"/mail/mailboxes/{mailbox_a.pk}/"))
    assert "<html" in body and "Edit alice@alpha.test" in body and 'value="1024"' in body


def test_mailbox_edit_view_inline_get_returns_row_editor(world, login, admin_a, mailbox_a):
    response = login(admin_a).get(f"/mail/mailboxes/{mailbox_a.pk}/", **HX)
    body = text(response)
    assert response.status_code == 200
    assert "<html" not in body
    assert body.lstrip().startswith(f'<tr id="mailbox-{mailbox_a.pk}" class="editing">')
    assert 'name="quota_mib"' in body


def test_mailbox_edit_view_inline_save_returns_row(world, login, admin_a, mailbox_a):
    response = login(admin_a).post(
        f"/mail/mailboxes/{mailbox_a.pk}/",
        {"display_name": "Alice Inline", "quota_mib": 2048, "is_active": "on", "password": ""},
        **HX,
    )
    body = text(response)
    assert response.status_code == 200
    assert "<html" not in body and "editing" not in body
    assert body.lstrip().startswith(f'<tr id="mailbox-{mailbox_a.pk}"')
    assert "Alice Inline" in body
    stored = Mailbox.objects.get(pk=mailbox_a.pk)
    assert (stored.display_name, stored.quota_bytes, stored.is_active) == ("Alice Inline", 2 * GIB, True)
    assert check_password(TEST_PASSWORD, stored.password)  # empty password field keeps it


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"quota_mib": "abc"}, "Enter a whole number."),
        ({"quota_mib": 1, "password": "short"}, "This password is too short."),
    ],
)
def test_mailbox_edit_view_inline_errors_return_editor_with_422(
    world, login, admin_a, mailbox_a, data, message
):
    response = login(admin_a).post(f"/mail/mailboxes/{mailbox_a.pk}/", {"is_active": "on", **data}, **HX)
    assert response.status_code == 422
    body = text(response)
    assert "<html" not in body and 'class="editing"' in body and message in body
    stored = Mailbox.objects.get(pk=mailbox_a.pk)
    assert stored.quota_bytes == GIB and check_password(TEST_PASSWORD, stored.password)


def test_mailbox_edit_view_full_post_redirects(world, login, admin_a, mailbox_a):
    response = login(admin_a).post(
        f"/mail/mailboxes/{mailbox_a.pk}/", {"display_name": "A", "quota_mib": 0, "is_active": "on"}
    )
    assert response.status_code == 302 and response["Location"] == "/mail/mailboxes/"
    assert Mailbox.objects.get(pk=mailbox_a.pk).quota_bytes == 0


def test_mailbox_toggle_disables_with_alert_and_redirects(world, login, admin_a, mailbox_a):
    response = login(admin_a).post(f"/mail/mailboxes/{mailbox_a.pk}/toggle/", follow=True)
    assert response.redirect_chain == [("/mail/mailboxes/", 302)]
    assert "Mailbox alice@alpha.test disabled." in text(response)
    assert Mailbox.objects.get(pk=mailbox_a.pk).is_active is False
    alert = Alert.objects.get(kind="mailboxes.mailbox_disabled")
    assert alert.domain_id == mailbox_a.domain_id and "admin@alpha.test" in alert.message


def test_mailbox_toggle_htmx_returns_row_and_toggles_back(world, login, admin_a, mailbox_a):
    client = login(admin_a)
    disabled = text(client.post(f"/mail/mailboxes/{mailbox_a.pk}/toggle/", **HX))
    assert "<html" not in disabled and disabled.lstrip().startswith(f'<tr id="mailbox-{mailbox_a.pk}"')
    assert 'class="pill off">disabled' in disabled and ">Enable<" in disabled
    enabled = text(client.post(f"/mail/mailboxes/{mailbox_a.pk}/toggle/", **HX))
    assert ">Disable<" in enabled
    assert Mailbox.objects.get(pk=mailbox_a.pk).is_active is True
    assert Alert.objects.filter(kind="mailboxes.mailbox_disabled").count() == 1


def test_mailbox_toggle_refuses_get(world, login, admin_a, mailbox_a):
    assert login(admin_a).get(f"/mail/mailboxes/{mailbox_a.pk}/toggle/").status_code == 405
    assert Mailbox.objects.get(pk=mailbox_a.pk).is_active is True


def test_mailbox_delete_confirmation_lists_affected_aliases(world, login, admin_a, mailbox_a):
    body = text(login(admin_a).get(f"/mail/mailboxes/{mailbox_a.pk}/delete/"))
    assert "Delete mailbox alice@alpha.test?" in body
    assert "its place in alias team@alpha.test" in body and "its place in alias fwd@beta.test" in body
    assert "sales@beta.test" not in body
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_mailbox_delete_post_deletes_and_reports(world, login, admin_a, mailbox_a):
    response = login(admin_a).post(f"/mail/mailboxes/{mailbox_a.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/mail/mailboxes/", 302)]
    assert (
        "Mailbox alice@alpha.test deleted. Removed 1 mailboxes, 1 aliases, 2 alias destinations, 1 users."
        in text(response)
    )
    assert not Mailbox.objects.filter(pk=mailbox_a.pk).exists()
    assert sorted(Alias.objects.values_list("address", flat=True)) == ["fwd@beta.test", "sales@beta.test"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/mail/mailboxes/{id}/"),
        ("post", "/mail/mailboxes/{id}/"),
        ("post", "/mail/mailboxes/{id}/toggle/"),
        ("get", "/mail/mailboxes/{id}/delete/"),
        ("post", "/mail/mailboxes/{id}/delete/"),
    ],
)
def test_mailbox_pages_of_other_domain_are_404_for_domain_admin(
    world, login, admin_a, mailbox_b, method, url
):
    client = login(admin_a)
    data = {"display_name": "hijacked", "quota_mib": 1} if method == "post" else None
    response = getattr(client, method)(url.format(id=mailbox_b.pk), data, **HX)
    assert response.status_code == 404
    stored = Mailbox.objects.get(pk=mailbox_b.pk)
    assert (stored.display_name, stored.is_active, stored.quota_bytes) == ("", True, GIB)


@pytest.mark.parametrize("url", ["/mail/mailboxes/{id}/", "/mail/mailboxes/{id}/delete/"])
def test_mailbox_admin_pages_are_404_for_the_owner(world, login, user_a, mailbox_a, url):
    assert login(user_a).get(url.format(id=mailbox_a.pk)).status_code == 404
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


# --- Aliases --------------------------------------------------------------------------


def test_alias_create_view_creates_and_redirects(world, login, admin_a):
    response = login(admin_a).post(
        "/mail/aliases/new/",
        {"address": "@alpha.test", "destinations": "alice@alpha.test, team@alpha.test", "is_active": "on"},
        follow=True,
    )
    assert response.redirect_chain == [("/mail/aliases/", 302)]
    assert "Alias @alpha.test created." in text(response)
    assert list(
        AliasDestination.objects.filter(alias__address="@alpha.test").values_list("address", flat=True)
    ) == [
        "alice@alpha.test",
        "team@alpha.test",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"address": "x@alpha.test", "destinations": "ghost@alpha.test"},
            "does not exist here: create it first.",
        ),
        ({"address": "x@alpha.test", "destinations": "x@alpha.test"}, "is the alias itself."),
        ({"address": "x@alpha.test", "destinations": ""}, "This field is required."),
        ({"address": "team@alpha.test", "destinations": "alice@alpha.test"}, "Already used by an alias."),
        (
            {"address": "x@beta.test", "destinations": "bob@beta.test"},
            "beta.test is not a domain hosted here.",
        ),
        ({"address": "no at sign", "destinations": "alice@alpha.test"}, "it has no @-sign."),
    ],
)
def test_alias_create_view_shows_field_errors(world, login, admin_a, data, message):
    response = login(admin_a).post("/mail/aliases/new/", data)
    assert response.status_code == 200
    body = text(response)
    assert 'class="error"' in body and message in body
    assert Alias.objects.count() == 3


def test_alias_edit_view_refuses_loop_with_field_error(world, login, admin_a, domain_a):
    AliasFactory(
        domain=domain_a, local_part="outer", address="outer@alpha.test", destinations=["team@alpha.test"]
    )
    team = Alias.objects.get(address="team@alpha.test")
    response = login(admin_a).post(
        f"/mail/aliases/{team.pk}/", {"destinations": "outer@alpha.test", "is_active": "on"}
    )
    assert response.status_code == 200
    assert "Creates a loop." in text(response)
    assert list(team.destinations.values_list("address", flat=True)) == ["alice@alpha.test"]


def test_alias_edit_view_saves_destinations(world, login, admin_a, domain_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    team = Alias.objects.get(address="team@alpha.test")
    client = login(admin_a)
    assert "alice@alpha.test" in text(client.get(f"/mail/aliases/{team.pk}/"))
    response = client.post(
        f"/mail/aliases/{team.pk}/", {"destinations": "carol@alpha.test\nalice@alpha.test"}
    )
    assert response.status_code == 302
    team.refresh_from_db()
    assert list(team.destinations.values_list("address", flat=True)) == [
        "carol@alpha.test",
        "alice@alpha.test",
    ]
    assert team.is_active is False  # the unchecked checkbox


def test_alias_pages_of_other_domain_are_404_for_domain_admin(world, login, admin_a):
    sales = Alias.objects.get(address="sales@beta.test")
    client = login(admin_a)
    assert client.get(f"/mail/aliases/{sales.pk}/").status_code == 404
    assert client.post(f"/mail/aliases/{sales.pk}/delete/").status_code == 404
    assert Alias.objects.filter(pk=sales.pk).exists()


def test_alias_delete_confirms_then_deletes(world, login, admin_a):
    team = Alias.objects.get(address="team@alpha.test")
    client = login(admin_a)
    body = text(client.get(f"/mail/aliases/{team.pk}/delete/"))
    assert "Delete alias team@alpha.test?" in body and "its place in other aliases" in body
    response = client.post(f"/mail/aliases/{team.pk}/delete/", follow=True)
    assert "Alias team@alpha.test deleted. Removed 1 aliases." in text(response)
    assert not Alias.objects.filter(pk=team.pk).exists()
