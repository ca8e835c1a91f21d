import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.test import Client

from apps.accounts import services
from apps.accounts.models import ApiToken, AuthEvent, User
from tests.factories import TEST_PASSWORD

pytestmark = pytest.mark.django_db

LOGIN_URL = "/accounts/login/"
LOGOUT_URL = "/accounts/logout/"
TOKENS_URL = "/accounts/tokens/"
GENERIC_LOGIN_ERROR = "Invalid email or password."


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- login -----------------------------------------------------------------------------------


def test_login_page_renders_form(db):
    response = Client().get(LOGIN_URL)

    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="email"' in content
    assert 'name="password"' in content
    assert 'name="csrfmiddlewaretoken"' in content
    assert GENERIC_LOGIN_ERROR not in content
    assert "no-cache" in response.headers["Cache-Control"] or "no-store" in response.headers["Cache-Control"]


def test_login_with_good_credentials_redirects_and_starts_session(user_a):
    client = Client()

    response = client.post(LOGIN_URL, {"email": "Alice@Alpha.test", "password": TEST_PASSWORD})

    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert settings.SESSION_COOKIE_NAME in response.cookies
    assert client.session[SESSION_KEY] == str(user_a.pk)
    user_a.refresh_from_db()
    assert user_a.last_login is not None
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_OK)
    assert (event.user, event.channel) == (user_a, "web")


def test_login_follows_safe_next(user_a):
    response = Client().post(
        LOGIN_URL, {"email": user_a.email, "password": TEST_PASSWORD, "next": "/alerts/"}
    )

    assert response.status_code == 302
    assert response.headers["Location"] == "/alerts/"


@pytest.mark.parametrize(
    "email",
    ["alice@alpha.test", "nobody@alpha.test"],
    ids=["wrong-password", "unknown-email"],
)
def test_login_with_bad_credentials_shows_generic_error_with_400(user_a, email):
    client = Client()

    response = client.post(LOGIN_URL, {"email": email, "password": "not the password"})

    assert response.status_code == 400
    assert GENERIC_LOGIN_ERROR in response.content.decode()
    assert SESSION_KEY not in client.session
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_FAILED)
    assert (event.email, event.channel) == (email, "web")


def test_login_bad_credentials_page_is_the_same_for_unknown_and_known_email(user_a):
    wrong = Client().post(LOGIN_URL, {"email": "alice@alpha.test", "password": "nope"})
    unknown = Client().post(LOGIN_URL, {"email": "nobody@alpha.test", "password": "nope"})

    def error_block(response):
        content = response.content.decode()
        start = content.index('<div class="form-errors"')
        return content[start : content.index("</div>", start)]

    assert error_block(wrong) == error_block(unknown)


def test_login_of_disabled_user_shows_generic_error(user_a):
    User.objects.filter(pk=user_a.pk).update(is_active=False)
    client = Client()

    response = client.post(LOGIN_URL, {"email": user_a.email, "password": TEST_PASSWORD})

    assert response.status_code == 400
    assert GENERIC_LOGIN_ERROR in response.content.decode()
    assert SESSION_KEY not in client.session


def test_login_with_missing_password_shows_field_error(user_a):
    response = Client().post(LOGIN_URL, {"email": user_a.email})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not AuthEvent.objects.exists()


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "https:///evil.example/", "javascript:alert(1)"]
)
def test_login_ignores_open_redirect_next(user_a, target):
    client = Client()

    page = client.get(LOGIN_URL, {"next": target})
    response = client.post(LOGIN_URL, {"email": user_a.email, "password": TEST_PASSWORD, "next": target})

    assert "evil.example" not in page.content.decode()
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert client.session[SESSION_KEY] == str(user_a.pk)


def test_login_page_redirects_signed_in_user(user_a):
    response = signed_in(user_a).get(LOGIN_URL, {"next": "https://evil.example/"})

    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_login_requires_csrf_token(user_a):
    client = Client(enforce_csrf_checks=True)

    response = client.post(LOGIN_URL, {"email": user_a.email, "password": TEST_PASSWORD})

    assert response.status_code == 403
    assert SESSION_KEY not in client.session
    assert not AuthEvent.objects.exists()


# --- logout ----------------------------------------------------------------------------------


def test_logout_refuses_get_and_keeps_session(user_a):
    client = signed_in(user_a)

    response = client.get(LOGOUT_URL)

    assert response.status_code == 405
    assert client.session[SESSION_KEY] == str(user_a.pk)
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGOUT).exists()


def test_logout_by_post_ends_session(user_a):
    client = signed_in(user_a)

    response = client.post(LOGOUT_URL)

    assert response.status_code == 302
    assert response.headers["Location"] == LOGIN_URL
    assert SESSION_KEY not in client.session
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.LOGOUT).user == user_a
    assert client.get(TOKENS_URL).status_code == 302  # signed out: back to the login page


# --- tokens page -----------------------------------------------------------------------------


def test_tokens_page_shows_new_secret_once(user_a):
    client = signed_in(user_a)

    created = client.post(TOKENS_URL, {"name": "laptop", "expires_in_days": 30})

    assert created.status_code == 200
    secret = created.context["issued_secret"]
    assert secret
    assert secret in created.content.decode()
    token = ApiToken.objects.get(user=user_a, name="laptop")
    assert services.api_token_authenticate(secret) == (user_a, token)
    again = client.get(TOKENS_URL)
    assert secret not in again.content.decode()
    assert "laptop" in again.content.decode()
    assert token.prefix in again.content.decode()


def test_tokens_page_rejects_invalid_form(user_a):
    response = signed_in(user_a).post(TOKENS_URL, {"name": "laptop", "expires_in_days": 99999})

    assert response.status_code == 200
    assert response.context["issued_secret"] is None
    assert "expires_in_days" in response.context["form"].errors
    assert not ApiToken.objects.exists()


def test_tokens_page_lists_only_own_tokens(user_a, admin_a):
    services.api_token_create(user=admin_a, name="admins-secret-laptop")
    services.api_token_create(user=user_a, name="alices-laptop")

    content = signed_in(user_a).get(TOKENS_URL).content.decode()

    assert "alices-laptop" in content
    assert "admins-secret-laptop" not in content


def test_tokens_page_requires_login(db):
    response = Client().get(TOKENS_URL)

    assert response.status_code == 302
    assert response.headers["Location"].startswith(f"{LOGIN_URL}?next=")


def test_token_revoke_view_revokes_own_token(user_a):
    issued = services.api_token_create(user=user_a, name="laptop")

    response = signed_in(user_a).post(f"{TOKENS_URL}{issued.token.pk}/revoke/")

    assert response.status_code == 302
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at is not None
    assert services.api_token_authenticate(issued.secret) is None


def test_token_revoke_view_of_another_users_token_is_404(user_a, admin_a):
    issued = services.api_token_create(user=admin_a, name="admin laptop")

    response = signed_in(user_a).post(f"{TOKENS_URL}{issued.token.pk}/revoke/")

    assert response.status_code == 404
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at is None


# --- users pages -----------------------------------------------------------------------------


def _user_pages(target):
    return [
        "/accounts/users/",
        "/accounts/users/new/",
        f"/accounts/users/{target.pk}/",
        f"/accounts/users/{target.pk}/delete/",
    ]


@pytest.mark.parametrize("actor", ["admin_a", "user_a"])
def test_user_pages_are_404_for_non_superadmins(request, superadmin, plain_user, actor):
    client = signed_in(request.getfixturevalue(actor))

    for url in _user_pages(plain_user):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/accounts/users/{plain_user.pk}/delete/").status_code == 404
    assert (
        client.post("/accounts/users/new/", {"email": "x@gamma.test", "role": "superadmin"}).status_code
        == 404
    )
    assert User.objects.filter(pk=plain_user.pk).exists()
    assert not User.objects.filter(email="x@gamma.test").exists()


def test_user_pages_redirect_anonymous_to_login(plain_user):
    for url in _user_pages(plain_user):
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith(f"{LOGIN_URL}?next=")


def test_user_pages_render_for_superadmin(superadmin, plain_user, user_a):
    client = signed_in(superadmin)

    listing = client.get("/accounts/users/")

    assert listing.status_code == 200
    assert plain_user.email in listing.content.decode()
    assert user_a.email in listing.content.decode()
    for url in _user_pages(plain_user)[1:]:
        assert client.get(url).status_code == 200, url


def test_user_create_page_creates_user_for_superadmin(superadmin):
    response = signed_in(superadmin).post(
        "/accounts/users/new/",
        {"email": "New@Gamma.test", "role": "user", "password": TEST_PASSWORD, "full_name": ""},
    )

    assert response.status_code == 302
    assert User.objects.get(email="new@gamma.test").check_password(TEST_PASSWORD)


def test_user_delete_page_deletes_user_for_superadmin(superadmin, plain_user):
    response = signed_in(superadmin).post(f"/accounts/users/{plain_user.pk}/delete/")

    assert response.status_code == 302
    assert not User.objects.filter(pk=plain_user.pk).exists()
