"""Single sign-on: the pipeline's trust rules (linking by verified email, provisioning,
roles, MFA trust), the OpenID Connect start and callback checks, the provider pages and
the /api/v1/sso-providers/ API. The round trip against a real OpenID provider is in
tests/e2e/test_oidc_roundtrip.py; SAML in test_saml.py."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.management import call_command
from django.test import Client, RequestFactory
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient
from social_django.models import UserSocialAuth

from apps.accounts.models import AuthEvent, SsoProvider, User, UserSession
from apps.accounts.sso import flow, services
from apps.accounts.sso.backends import OidcBackend
from apps.accounts.sso.exceptions import SsoRefused
from apps.alerts.models import Alert
from apps.core.secrets import secret_decrypt
from tests.factories import DomainAdminFactory, SuperadminFactory, UserFactory

pytestmark = pytest.mark.django_db

ISSUER = "https://idp.example.test"
API_URL = "/api/v1/sso-providers/"


def _provider(**overrides) -> SsoProvider:
    values = {
        "slug": "corp",
        "name": "Corp ID",
        "kind": "oidc",
        "issuer": ISSUER,
        "client_id": "a3mailer",
        "client_secret": "s3cret",
        **overrides,
    }
    return services.sso_provider_create(actor=None, values=values)


def _request(path: str = "/accounts/sso/complete/corp/"):
    request = RequestFactory(SERVER_NAME="localhost").get(path)
    SessionMiddleware(lambda r: None).process_request(request)
    request.user = AnonymousUser()
    return request


def _claims(**overrides) -> dict:
    """A validated ID token's claims, as social-core leaves them on the backend."""
    return {
        "iss": ISSUER,
        "sub": "sub-0001",
        "aud": "a3mailer",
        "email": "alice@example.test",
        "email_verified": True,
        "name": "Alice Example",
        **overrides,
    }


def continue_url(response) -> str:
    """The provider URL of the page the sign-in button leads to (a page, not a redirect:
    see accounts/sso_redirect.html); it also refreshes to it."""
    assert response.status_code == 200, response
    page = response.content.decode()
    url = html.unescape(re.search(r'id="sso-continue" href="([^"]+)"', page)[1])
    assert f'content="0; url={html.escape(url)}"' in page
    return url


def _sign_in(provider: SsoProvider, claims: dict, userinfo: dict | None = None, request=None):
    """Run the real pipeline (through Django's authenticate and our backend) as social-core
    does once the ID token verified; returns (backend, user)."""
    request = request or _request()
    backend = flow.backend_for(request=request, provider=provider)
    backend.id_token = claims
    response = {"access_token": "at", **(userinfo or {})}
    user = backend.strategy.authenticate(backend, response=response)
    return backend, user


# --- Linking by verified email -------------------------------------------------------------


def test_sso_links_the_account_with_the_verified_email():
    alice = UserFactory(email="alice@example.test")
    provider = _provider()

    backend, user = _sign_in(provider, _claims(email="Alice@Example.test"))

    assert user == alice
    link = UserSocialAuth.objects.get(user=alice)
    assert (link.provider, link.uid) == (f"sso-{provider.pk}", "sub-0001")
    assert (
        AuthEvent.objects.filter(user=alice, kind=AuthEvent.Kind.SSO_LINKED, detail__provider="corp").count()
        == 1
    )
    assert backend.outcome.account.linked is True


def test_sso_linked_identity_signs_in_to_its_account_whatever_the_email_says():
    alice = UserFactory(email="alice@example.test")
    UserFactory(email="bob@example.test")
    provider = _provider()
    _sign_in(provider, _claims())

    # Later the provider reports another address (renamed, or unverified): the link decides.
    _, user = _sign_in(provider, _claims(email="bob@example.test", email_verified=False))

    assert user == alice
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.SSO_LINKED).count() == 1


@pytest.mark.parametrize("verified", [False, None, "false", "yes"])
def test_sso_unverified_email_is_refused(verified):
    UserFactory(email="alice@example.test")
    claims = _claims(email_verified=verified)
    if verified is None:
        del claims["email_verified"]  # not sent at all

    with pytest.raises(SsoRefused) as refused:
        _sign_in(_provider(), claims)

    assert refused.value.code == "email_unverified"
    assert "does not vouch for your email address" in refused.value.message
    assert not UserSocialAuth.objects.exists()


def test_sso_email_verified_in_userinfo_counts_and_string_true_is_accepted():
    alice = UserFactory(email="alice@example.test")
    claims = _claims()
    claims.pop("email_verified")

    _, user = _sign_in(_provider(), claims, userinfo={"sub": "sub-0001", "email_verified": "true"})

    assert user == alice


def test_sso_microsoft_domain_owner_verified_claim_counts_as_verified():
    alice = UserFactory(email="alice@example.test")
    provider = _provider(
        kind="microsoft", issuer="https://login.microsoftonline.com/0a1b2c3d-tenant/v2.0", slug="entra"
    )
    claims = _claims(iss=provider.issuer, xms_edov=True)
    claims.pop("email_verified")

    _, user = _sign_in(provider, claims)

    assert user == alice


def test_sso_disabled_account_is_refused_like_a_missing_one():
    alice = UserFactory(email="alice@example.test", is_active=False)
    provider = _provider()

    with pytest.raises(SsoRefused) as refused:
        _sign_in(provider, _claims())

    assert refused.value.message == services.NO_ACCOUNT_MESSAGE
    assert not UserSocialAuth.objects.filter(user=alice).exists()


# --- Just-in-time provisioning -----------------------------------------------------------


def test_sso_unknown_email_is_refused_when_provisioning_is_off():
    with pytest.raises(SsoRefused) as refused:
        _sign_in(_provider(), _claims(email="new@example.test"))

    assert refused.value.message == "No account for this identity."
    assert not User.objects.filter(email="new@example.test").exists()


def test_sso_provisioning_creates_a_mailbox_user_in_an_allowed_domain():
    provider = _provider(jit_provisioning=True, jit_domains=["example.test"])

    backend, user = _sign_in(provider, _claims(email="new@example.test"))

    assert user.email == "new@example.test" and user.role == User.Role.USER
    assert user.full_name == "Alice Example" and not user.has_usable_password()
    assert AuthEvent.objects.filter(user=user, kind=AuthEvent.Kind.SSO_PROVISIONED).exists()
    assert UserSocialAuth.objects.filter(user=user, uid="sub-0001").exists()
    assert backend.outcome.account.provisioned is True


@pytest.mark.parametrize("email", ["new@other.test", "new@sub.example.test"])
def test_sso_provisioning_is_limited_to_the_chosen_domains(email):
    provider = _provider(jit_provisioning=True, jit_domains=["example.test"])

    with pytest.raises(SsoRefused):
        _sign_in(provider, _claims(email=email))

    assert not User.objects.filter(email=email).exists()


def test_sso_provisioning_needs_a_verified_email_too():
    provider = _provider(jit_provisioning=True, jit_domains=["example.test"])

    with pytest.raises(SsoRefused):
        _sign_in(provider, _claims(email="new@example.test", email_verified=False))

    assert not User.objects.filter(email="new@example.test").exists()


# --- Role mapping ------------------------------------------------------------------------


MAPPING = {"mail-admins": "domain_admin", "platform": "superadmin", "*": "user"}


def test_sso_role_mapping_takes_the_highest_mapped_role():
    alice = UserFactory(email="alice@example.test")
    provider = _provider(groups_claim="groups", role_mapping=MAPPING, jit_domains=["example.test"])

    _sign_in(provider, _claims(groups=["staff", "mail-admins", "platform"]))

    alice.refresh_from_db()
    assert alice.role == User.Role.SUPERADMIN and alice.is_superuser
    assert Alert.objects.filter(kind="accounts.sso_role_changed", level="warning").exists()


def test_sso_role_mapping_fallback_demotes_a_domain_admin():
    admin = DomainAdminFactory(email="alice@example.test")
    provider = _provider(groups_claim="groups", role_mapping=MAPPING, jit_domains=["example.test"])

    _sign_in(provider, _claims(groups=["staff"]))

    admin.refresh_from_db()
    assert admin.role == User.Role.USER


def test_sso_role_mapping_fallback_never_demotes_a_superadmin():
    SuperadminFactory(email="other-root@example.test")
    root = SuperadminFactory(email="alice@example.test")
    provider = _provider(groups_claim="groups", role_mapping=MAPPING, jit_domains=["example.test"])

    _sign_in(provider, _claims(groups=["staff"]))

    root.refresh_from_db()
    assert root.role == User.Role.SUPERADMIN


def test_sso_role_mapping_demotes_a_superadmin_only_when_mapped_explicitly():
    SuperadminFactory(email="other-root@example.test")
    root = SuperadminFactory(email="alice@example.test")
    provider = _provider(groups_claim="groups", role_mapping=MAPPING, jit_domains=["example.test"])

    _sign_in(provider, _claims(groups=["mail-admins"]))

    root.refresh_from_db()
    assert root.role == User.Role.DOMAIN_ADMIN and not root.is_superuser


def test_sso_role_mapping_never_demotes_the_last_superadmin():
    root = SuperadminFactory(email="alice@example.test")
    provider = _provider(groups_claim="groups", role_mapping=MAPPING, jit_domains=["example.test"])

    _sign_in(provider, _claims(groups=["mail-admins"]))

    root.refresh_from_db()
    assert root.role == User.Role.SUPERADMIN


def test_sso_role_mapping_leaves_roles_alone_without_a_groups_claim():
    admin = DomainAdminFactory(email="alice@example.test")
    provider = _provider(groups_claim="groups", role_mapping=MAPPING, jit_domains=["example.test"])

    _sign_in(provider, _claims())  # no "groups" claim at all

    admin.refresh_from_db()
    assert admin.role == User.Role.DOMAIN_ADMIN


def test_sso_role_mapping_applies_to_provisioned_accounts():
    provider = _provider(
        jit_provisioning=True, jit_domains=["example.test"], groups_claim="roles", role_mapping=MAPPING
    )

    _, user = _sign_in(provider, _claims(email="new@example.test", roles="mail-admins"))

    user.refresh_from_db()
    assert user.role == User.Role.DOMAIN_ADMIN


# --- MFA trust ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trust, token_claims, expected",
    [
        (True, {"amr": ["pwd", "mfa"]}, True),
        (True, {"amr": ["pwd", "otp"]}, True),
        (True, {"amr": ["hwk"]}, True),
        (True, {"amr": ["swk", "pin"]}, True),
        (True, {"amr": ["pwd"]}, False),
        (True, {"acr": "https://refeds.org/profile/mfa"}, True),
        (True, {"acr": "urn:mace:incommon:iap:silver"}, False),
        (True, {}, False),
        (False, {"amr": ["pwd", "mfa"]}, False),
        (False, {"acr": "https://refeds.org/profile/mfa"}, False),
    ],
)
def test_sso_mfa_counts_only_when_trusted_and_asserted(trust, token_claims, expected):
    UserFactory(email="alice@example.test")
    provider = _provider(trust_idp_mfa=trust)

    backend, _ = _sign_in(provider, _claims(**token_claims))

    assert backend.outcome.mfa_verified is expected


def test_sso_mfa_values_are_configurable(settings):
    settings.A3_SSO_MFA_AMR = ["face"]
    settings.A3_SSO_MFA_ACR = ["gold"]
    provider = _provider(trust_idp_mfa=True)
    identity = services.SsoIdentity(
        uid="x", email="a@b.test", email_verified=True, amr=("mfa",), acr=("gold",)
    )

    assert services.sso_mfa_asserted(provider=provider, identity=identity) is True
    assert services.sso_mfa_asserted(provider=provider, identity=replace(identity, acr=())) is False


def test_sso_mfa_comes_only_from_the_id_token_not_userinfo():
    UserFactory(email="alice@example.test")
    provider = _provider(trust_idp_mfa=True)

    backend, _ = _sign_in(provider, _claims(), userinfo={"sub": "sub-0001", "amr": ["mfa"]})

    assert backend.outcome.mfa_verified is False


# --- Starting the session ----------------------------------------------------------------


def test_sso_login_finish_starts_a_session_marked_with_the_asserted_mfa():
    alice = UserFactory(email="alice@example.test")
    provider = _provider(trust_idp_mfa=True)
    request = _request()

    result = services.sso_login_finish(
        request=request, provider=provider, user=alice, mfa_verified=True, next_url="/"
    )

    assert result.second_factor_pending is False
    assert request.session[SESSION_KEY] == str(alice.pk)
    row = UserSession.objects.get(user=alice)
    assert (row.method, row.mfa_verified) == ("sso", True)
    assert AuthEvent.objects.filter(user=alice, kind=AuthEvent.Kind.SSO_LOGIN, detail__mfa=True).exists()


def test_sso_login_without_asserted_mfa_waits_for_the_accounts_own_factor():
    alice = UserFactory(email="alice@example.test")
    TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)
    request = _request()

    result = services.sso_login_finish(
        request=request, provider=_provider(), user=alice, mfa_verified=False, next_url="/"
    )

    assert result.second_factor_pending is True
    assert SESSION_KEY not in request.session
    assert not UserSession.objects.filter(user=alice).exists()


# --- The OpenID Connect flow: start, state, PKCE, nonce -----------------------------------


DISCOVERY = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "userinfo_endpoint": f"{ISSUER}/userinfo",
    "jwks_uri": f"{ISSUER}/jwks",
}


@pytest.fixture
def discovery(monkeypatch):
    """The provider's discovery document (the network boundary)."""
    monkeypatch.setattr(OidcBackend, "oidc_config", lambda self: dict(DISCOVERY))


def test_sso_begin_redirects_with_state_nonce_and_pkce(discovery):
    _provider()
    client = Client(SERVER_NAME="localhost")

    response = client.post("/accounts/sso/login/corp/", {"next": "/mail/domains/"})

    location = urlsplit(continue_url(response))
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{ISSUER}/authorize"
    query = {key: values[0] for key, values in parse_qs(location.query).items()}
    assert query["client_id"] == "a3mailer" and query["response_type"] == "code"
    assert query["redirect_uri"] == "http://localhost/accounts/sso/complete/corp/"
    assert query["scope"].split() == ["openid", "email", "profile"]
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32
    # The state is bound to this browser's session.
    assert any(query["state"] in key for key, _ in client.session.items())


def test_sso_begin_needs_a_post():
    _provider()

    assert Client().get("/accounts/sso/login/corp/").status_code == 405


def test_sso_begin_of_a_disabled_provider_is_not_found():
    _provider(enabled=False)

    assert Client().post("/accounts/sso/login/corp/").status_code == 404


def test_sso_callback_with_forged_state_is_rejected(discovery):
    alice = UserFactory(email="alice@example.test")
    _provider()
    client = Client(SERVER_NAME="localhost")
    client.post("/accounts/sso/login/corp/")  # a real pending sign-in in this session

    response = client.get("/accounts/sso/complete/corp/", {"code": "stolen-code", "state": "forged" * 6})

    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    page = client.get("/accounts/login/").content.decode()
    assert "Sign-in with Corp ID failed" in page and "Please start again." in page
    assert SESSION_KEY not in client.session
    failure = AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_FAILED)
    assert failure.detail == {"method": "sso", "provider": "corp", "reason": "session_context_missing"}
    assert not AuthEvent.objects.filter(user=alice).exists()


def test_sso_callback_without_a_pending_sign_in_is_rejected(discovery):
    _provider()
    client = Client(SERVER_NAME="localhost")

    response = client.get("/accounts/sso/complete/corp/", {"code": "x", "state": "y" * 32})

    assert response["Location"] == "/accounts/login/"
    assert SESSION_KEY not in client.session


def test_login_page_offers_enabled_providers_only():
    _provider(name="Corp ID")
    _provider(slug="old", name="Old IdP", enabled=False)

    page = Client().get("/accounts/login/").content.decode()

    assert "Sign in with Corp ID" in page and 'action="/accounts/sso/login/corp/"' in page
    assert "Old IdP" not in page


def test_login_page_without_providers_has_no_sso_block():
    assert 'id="sso-signin"' not in Client().get("/accounts/login/").content.decode()


# --- Provider settings (service) ----------------------------------------------------------


def test_sso_provider_secret_is_stored_encrypted():
    provider = _provider(client_secret="top-secret")

    assert "top-secret" not in provider.client_secret
    assert secret_decrypt(provider.client_secret) == "top-secret"


@pytest.mark.parametrize(
    "values, field",
    [
        ({"kind": "microsoft", "issuer": "https://login.microsoftonline.com/common/v2.0"}, "issuer"),
        ({"kind": "google", "issuer": "https://evil.test"}, "issuer"),
        ({"issuer": "http://idp.example.test"}, "issuer"),
        ({"client_id": ""}, "client_id"),
        ({"jit_provisioning": True, "jit_domains": []}, "jit_domains"),
        ({"groups_claim": "groups", "role_mapping": {"x": "emperor"}}, "role_mapping"),
        ({"role_mapping": {"x": "user"}}, "groups_claim"),
        ({"kind": "saml", "idp_x509_cert": "not a certificate"}, "idp_x509_cert"),
    ],
)
def test_sso_provider_settings_that_cannot_work_are_refused(values, field):
    with pytest.raises(Exception) as error:
        _provider(**values)

    assert field in error.value.fields


def test_sso_google_preset_fills_in_the_issuer():
    provider = _provider(kind="google", issuer="", slug="google")

    assert provider.issuer == "https://accounts.google.com"


def test_sso_provider_sync_from_settings_creates_then_updates(settings):
    settings.A3_OIDC_ISSUER = "https://accounts.google.com"
    settings.A3_OIDC_CLIENT_ID = "id-1"
    settings.A3_OIDC_CLIENT_SECRET = "secret-1"
    settings.A3_OIDC_NAME = "Google"

    call_command("sso_provider_sync")
    provider = SsoProvider.objects.get(slug="oidc")
    provider.trust_idp_mfa = True  # set on the dashboard: the sync keeps it
    provider.save()
    settings.A3_OIDC_CLIENT_ID = "id-2"
    call_command("sso_provider_sync")

    provider.refresh_from_db()
    assert (provider.kind, provider.name, provider.client_id) == ("google", "Google", "id-2")
    assert secret_decrypt(provider.client_secret) == "secret-1" and provider.trust_idp_mfa
    assert SsoProvider.objects.count() == 1


def test_sso_provider_sync_without_an_issuer_does_nothing(settings):
    settings.A3_OIDC_ISSUER = ""

    assert services.sso_provider_sync_from_settings() is None
    assert not SsoProvider.objects.exists()


# --- Dashboard pages ----------------------------------------------------------------------


def test_sso_pages_are_for_superadmins_only(domain_admin_client):
    assert domain_admin_client.get("/accounts/sso/").status_code == 404
    assert Client().get("/accounts/sso/").status_code == 302


@pytest.fixture
def domain_admin_client():
    client = Client()
    client.force_login(DomainAdminFactory())
    return client


@pytest.fixture
def root_client(superadmin):
    client = Client(SERVER_NAME="localhost")
    client.force_login(superadmin)
    return client


def test_sso_page_adds_a_provider_and_keeps_the_secret_write_only(root_client):
    response = root_client.post(
        "/accounts/sso/new/",
        {
            "name": "Corp ID",
            "slug": "corp",
            "kind": "oidc",
            "enabled": "on",
            "issuer": ISSUER,
            "client_id": "a3mailer",
            "client_secret": "typed-secret",
            "scopes": "openid email",
            "role_mapping": "mail-admins = domain_admin",
            "groups_claim": "groups",
        },
    )
    assert response.status_code == 302, response.content.decode()
    provider = SsoProvider.objects.get(slug="corp")
    assert provider.role_mapping == {"mail-admins": "domain_admin"}

    edit = root_client.get(f"/accounts/sso/{provider.pk}/").content.decode()
    assert "typed-secret" not in edit and provider.client_secret not in edit
    assert "http://localhost/accounts/sso/complete/corp/" in edit

    # Saving with the secret field empty keeps the stored secret.
    root_client.post(
        f"/accounts/sso/{provider.pk}/",
        {
            "name": "Corp",
            "slug": "corp",
            "kind": "oidc",
            "issuer": ISSUER,
            "client_id": "a3",
            "scopes": "openid",
        },
    )
    provider.refresh_from_db()
    assert provider.name == "Corp" and provider.enabled is False
    assert secret_decrypt(provider.client_secret) == "typed-secret"


def test_sso_page_shows_service_errors_on_the_form(root_client):
    response = root_client.post(
        "/accounts/sso/new/",
        {
            "name": "Entra",
            "slug": "entra",
            "kind": "microsoft",
            "issuer": "https://login.microsoftonline.com/common/v2.0",
            "client_id": "x",
            "client_secret": "y",
            "scopes": "openid",
        },
    )

    assert response.status_code == 200
    assert "tenant ID" in response.content.decode()
    assert not SsoProvider.objects.exists()


def test_sso_page_deletes_a_provider_and_its_links(root_client):
    provider = _provider()
    UserSocialAuth.objects.create(user=UserFactory(), provider=f"sso-{provider.pk}", uid="sub-1")

    root_client.post(f"/accounts/sso/{provider.pk}/delete/")

    assert not SsoProvider.objects.exists() and not UserSocialAuth.objects.exists()


# --- API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("who, status", [("anonymous", 401), ("user", 403), ("domain_admin", 403)])
def test_sso_provider_api_is_for_superadmins_only(api_client_for, who, status):
    user = {"anonymous": None, "user": UserFactory(), "domain_admin": DomainAdminFactory()}[who]
    client = api_client_for(user)
    provider = _provider()

    assert client.get(API_URL).status_code == status
    assert (
        client.post(API_URL, {"slug": "x", "name": "X", "kind": "google"}, format="json").status_code
        == status
    )
    assert client.patch(f"{API_URL}{provider.pk}/", {"name": "Y"}, format="json").status_code == status
    assert client.delete(f"{API_URL}{provider.pk}/").status_code == status
    provider.refresh_from_db()
    assert provider.name == "Corp ID"


def test_sso_provider_api_create_returns_the_provider_without_its_secret(api_client_for, superadmin):
    client = api_client_for(superadmin)

    response = client.post(
        API_URL,
        {
            "slug": "google",
            "name": "Google",
            "kind": "google",
            "client_id": "gid",
            "client_secret": "gsecret",
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert "client_secret" not in body and "gsecret" not in response.content.decode()
    assert body["has_secret"] is True and body["issuer"] == "https://accounts.google.com"
    assert body["callback_url"] == "http://testserver/accounts/sso/complete/google/"
    assert secret_decrypt(SsoProvider.objects.get(slug="google").client_secret) == "gsecret"


def test_sso_provider_api_patch_and_clear_secret(api_client_for, superadmin):
    provider = _provider()
    client = api_client_for(superadmin)

    response = client.patch(
        f"{API_URL}{provider.pk}/",
        {
            "client_secret": "",
            "trust_idp_mfa": True,
            "jit_provisioning": True,
            "jit_domains": ["Example.TEST"],
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["has_secret"] is False and body["trust_idp_mfa"] is True
    assert body["jit_domains"] == ["example.test"]


def test_sso_provider_api_validation_error_shape(api_client_for, superadmin):
    client = api_client_for(superadmin)

    response = client.post(
        API_URL,
        {
            "slug": "entra",
            "name": "Entra",
            "kind": "microsoft",
            "issuer": "https://login.microsoftonline.com/common/v2.0",
            "client_id": "x",
            "client_secret": "y",
        },
        format="json",
    )

    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "detail", "fields"} and body["code"] == "invalid_provider"
    assert set(body["fields"]) == {"issuer"}
    assert client.post(API_URL, {"slug": "x", "name": "X", "kind": "oidc", "bogus": 1}, format="json").json()[
        "fields"
    ] == {"bogus": ["Unknown field."]}


def test_sso_provider_api_duplicate_slug_conflicts(api_client_for, superadmin):
    _provider()

    response = api_client_for(superadmin).post(
        API_URL,
        {"slug": "corp", "name": "Again", "kind": "google", "client_id": "a", "client_secret": "b"},
        format="json",
    )

    assert response.status_code == 409 and response.json()["code"] == "duplicate"


def test_sso_provider_api_list_and_delete(api_client_for, superadmin, django_assert_max_num_queries):
    for number in range(5):
        _provider(slug=f"corp{number}")
    client = api_client_for(superadmin)

    with django_assert_max_num_queries(8):
        response = client.get(API_URL)

    assert response.status_code == 200 and response.json()["count"] == 5
    provider = SsoProvider.objects.get(slug="corp0")
    assert client.delete(f"{API_URL}{provider.pk}/").status_code == 204
    assert not SsoProvider.objects.filter(pk=provider.pk).exists()
    assert APIClient().get(f"{API_URL}{provider.pk}/").status_code == 401


def _resolve(provider, email):
    from apps.accounts.services import ClientInfo

    identity = services.SsoIdentity(uid="u-1", email=email, email_verified=True)
    return services.sso_account_resolve(provider=provider, identity=identity, client=ClientInfo())


def test_sso_never_links_an_admin_through_a_provider_that_does_not_name_their_domain():
    DomainAdminFactory(email="alice@example.test")
    provider = _provider()  # e.g. a consumer Google provider: it can verify any address
    with pytest.raises(services.SsoRefused):
        _resolve(provider, "alice@example.test")


def test_sso_links_only_addresses_of_the_providers_domains_when_it_has_some():
    UserFactory(email="carol@example.test")
    with pytest.raises(services.SsoRefused):
        _resolve(_provider(jit_domains=["elsewhere.test"]), "carol@example.test")
    assert _resolve(_provider(slug="corp2", jit_domains=["example.test"]), "carol@example.test").linked
