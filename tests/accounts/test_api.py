import pytest
from rest_framework.test import APIClient

from apps.accounts import services
from apps.accounts.exceptions import AuthenticationFailed
from apps.accounts.models import ApiToken, AuthEvent, User
from apps.alerts.models import Alert
from tests.factories import TEST_PASSWORD, DomainAdminFactory, MailboxFactory, UserFactory

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token/"
ME_URL = "/api/v1/auth/me/"
TOKENS_URL = "/api/v1/auth/tokens/"
USERS_URL = "/api/v1/users/"
EVENTS_URL = "/api/v1/auth/events/"


def assert_error(response, status, code, fields=None):
    """The API's one error shape: {"code", "detail", "fields"}."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "detail", "fields"}
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    if fields is not None:
        assert set(body["fields"]) == set(fields), body["fields"]
    return body


def list_ids(client, url, **params):
    response = client.get(url, params)
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def bearer_client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def obtain(client, **body):
    return client.post(TOKEN_URL, body, format="json")


# --- POST /auth/token/ -----------------------------------------------------------------------


def test_token_obtain_returns_token_that_works_as_bearer(user_a):
    response = obtain(APIClient(), email="Alice@Alpha.test", password=TEST_PASSWORD)

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"token", "id", "name", "expires_at"}
    assert body["name"] == "API token"
    assert body["expires_at"] is not None
    token = ApiToken.objects.get(pk=body["id"])
    assert token.user == user_a
    assert body["token"] not in token.key_hash
    me = bearer_client(body["token"]).get(ME_URL)
    assert me.status_code == 200
    assert me.json()["email"] == "alice@alpha.test"
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.TOKEN_CREATED, user=user_a, channel="api").exists()


def test_token_obtain_honours_name_and_expiry(user_a):
    response = obtain(
        APIClient(), email=user_a.email, password=TEST_PASSWORD, name="backup script", expires_in_days=0
    )

    assert response.status_code == 201
    assert response.json()["name"] == "backup script"
    assert response.json()["expires_at"] is None
    assert ApiToken.objects.get(pk=response.json()["id"]).expires_at is None


def test_token_obtain_failure_is_identical_for_unknown_email_and_wrong_password(user_a):
    client = APIClient()

    unknown = obtain(client, email="nobody@alpha.test", password=TEST_PASSWORD)
    wrong = obtain(client, email=user_a.email, password="not the password")
    User.objects.filter(pk=user_a.pk).update(is_active=False)
    inactive = obtain(client, email=user_a.email, password=TEST_PASSWORD)

    body = assert_error(unknown, 401, "authentication_failed", fields=[])
    assert body["detail"] == "Invalid email or password."
    assert wrong.status_code == inactive.status_code == 401
    assert unknown.json() == wrong.json() == inactive.json()
    assert not ApiToken.objects.exists()
    failures = AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED, channel="api")
    assert sorted(failures.values_list("email", flat=True)) == [
        "alice@alpha.test",
        "alice@alpha.test",
        "nobody@alpha.test",
    ]


def test_token_obtain_ignores_bearer_header_of_caller(user_a, superadmin):
    issued = services.api_token_create(user=superadmin, name="root")

    response = obtain(bearer_client(issued.secret), email=user_a.email, password=TEST_PASSWORD)

    assert response.status_code == 201
    assert ApiToken.objects.get(pk=response.json()["id"]).user == user_a


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["email", "password"]),
        ({"email": "alice@alpha.test"}, ["password"]),
        ({"email": "alice@alpha.test", "password": TEST_PASSWORD, "admin": True}, ["admin"]),
        ({"email": ["alice@alpha.test"], "password": {"x": 1}}, ["email", "password"]),
        ({"email": True, "password": TEST_PASSWORD}, ["email"]),
        ({"email": None, "password": None}, ["email", "password"]),
        (
            {"email": "alice@alpha.test", "password": TEST_PASSWORD, "expires_in_days": "soon"},
            ["expires_in_days"],
        ),
        (
            {"email": "alice@alpha.test", "password": TEST_PASSWORD, "expires_in_days": 99999},
            ["expires_in_days"],
        ),
        ({"email": "a\x00@alpha.test", "password": TEST_PASSWORD}, ["email"]),
        ({"email": "x" * 300 + "@alpha.test", "password": TEST_PASSWORD}, ["email"]),
        ([{"email": "alice@alpha.test", "password": TEST_PASSWORD}], ["non_field_errors"]),
        ("alice@alpha.test", ["non_field_errors"]),
        (42, ["non_field_errors"]),
    ],
    ids=[
        "empty",
        "missing-password",
        "unknown-field",
        "wrong-json-types",
        "bool-email",
        "nulls",
        "non-int-expiry",
        "expiry-out-of-range",
        "nul-byte",
        "too-long",
        "json-array",
        "json-string",
        "json-number",
    ],
)
def test_token_obtain_rejects_invalid_body_with_error_shape(user_a, body, fields):
    response = APIClient().post(TOKEN_URL, body, format="json")

    assert_error(response, 400, "invalid", fields=fields)
    assert not ApiToken.objects.exists()
    assert not AuthEvent.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [b'{"email": "alice@alpha.test", ', b"not json at all", b"\xff\xfe\x00", b"{'email': 1}", b"null"],
    ids=["truncated", "text", "bad-encoding", "single-quotes", "null"],
)
def test_token_obtain_rejects_malformed_json_without_500(user_a, raw):
    response = APIClient().generic("POST", TOKEN_URL, raw, content_type="application/json")

    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "detail", "fields"}
    assert body["code"] in {"parse_error", "invalid"}
    assert not ApiToken.objects.exists()


def test_token_obtain_rejects_form_encoded_body(user_a):
    response = APIClient().post(TOKEN_URL, {"email": user_a.email, "password": TEST_PASSWORD})

    assert_error(response, 415, "unsupported_media_type")
    assert not ApiToken.objects.exists()


def test_token_obtain_refuses_get(user_a):
    response = APIClient().get(TOKEN_URL)

    assert_error(response, 405, "method_not_allowed")


# --- GET /auth/me/ ---------------------------------------------------------------------------


def test_me_returns_own_profile_without_secrets(api_client_for, user_a):
    response = api_client_for(user_a).get(ME_URL)

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == user_a.pk
    assert body["email"] == "alice@alpha.test"
    assert body["role"] == "user"
    assert "password" not in body


def test_me_works_with_session(superadmin):
    client = APIClient()
    client.force_login(superadmin)

    response = client.get(ME_URL)

    assert response.status_code == 200
    assert response.json()["email"] == superadmin.email


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Bearer not-a-token", "authentication_failed"),
        ("Bearer a3_0123456789ab_nothing", "authentication_failed"),
        ("Bearer", "authentication_failed"),
        ("Bearer a b", "authentication_failed"),
    ],
)
def test_me_refuses_unauthenticated_with_401_json(user_a, header, code):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(ME_URL)

    assert_error(response, 401, code, fields=[])
    assert "Location" not in response.headers
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_me_refuses_token_of_disabled_user(superadmin, plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")
    services.user_update(actor=superadmin, user=plain_user, is_active=False)

    response = bearer_client(issued.secret).get(ME_URL)

    assert_error(response, 401, "authentication_failed")


# --- /auth/tokens/ ---------------------------------------------------------------------------


def test_tokens_list_shows_only_own_tokens_without_secrets(api_client_for, user_a, admin_a):
    client = api_client_for(user_a)
    mine = services.api_token_create(user=user_a, name="laptop")
    theirs = services.api_token_create(user=admin_a, name="admin laptop")

    response = client.get(TOKENS_URL)

    assert response.status_code == 200
    rows = response.json()["results"]
    ids = {row["id"] for row in rows}
    assert mine.token.pk in ids
    assert theirs.token.pk not in ids
    assert ids == set(ApiToken.objects.filter(user=user_a).values_list("pk", flat=True))
    for row in rows:
        assert set(row) == {"id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"}
    assert mine.secret not in response.content.decode()


def test_tokens_create_issues_working_token(api_client_for, user_a):
    response = api_client_for(user_a).post(TOKENS_URL, {"name": "ci", "expires_in_days": 30}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "ci"
    assert ApiToken.objects.get(pk=body["id"]).user == user_a
    assert bearer_client(body["token"]).get(ME_URL).json()["email"] == user_a.email


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["name"]),
        ({"name": "ci", "scope": "all"}, ["scope"]),
        ({"name": "ci", "expires_in_days": -1}, ["expires_in_days"]),
    ],
)
def test_tokens_create_rejects_invalid_body(api_client_for, user_a, body, fields):
    client = api_client_for(user_a)
    before = ApiToken.objects.count()

    response = client.post(TOKENS_URL, body, format="json")

    assert_error(response, 400, "invalid", fields=fields)
    assert ApiToken.objects.count() == before


def test_tokens_delete_revokes_and_token_then_gets_401(user_a):
    first = services.api_token_create(user=user_a, name="first")
    second = services.api_token_create(user=user_a, name="second")
    client = bearer_client(first.secret)

    response = client.delete(f"{TOKENS_URL}{second.token.pk}/")

    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert ApiToken.objects.get(pk=second.token.pk).revoked_at is not None
    assert_error(bearer_client(second.secret).get(ME_URL), 401, "authentication_failed")
    assert client.get(ME_URL).status_code == 200  # the other token still works
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.TOKEN_REVOKED)
    assert event.detail == {"token_id": second.token.pk}


def test_tokens_delete_of_current_token_ends_access(user_a):
    issued = services.api_token_create(user=user_a, name="only")
    client = bearer_client(issued.secret)

    assert client.delete(f"{TOKENS_URL}{issued.token.pk}/").status_code == 200

    assert_error(client.get(TOKENS_URL), 401, "authentication_failed")


@pytest.mark.parametrize("method", ["get", "delete"])
def test_tokens_of_another_user_are_404(api_client_for, user_a, admin_a, method):
    theirs = services.api_token_create(user=admin_a, name="admin laptop")

    response = getattr(api_client_for(user_a), method)(f"{TOKENS_URL}{theirs.token.pk}/")

    assert_error(response, 404, "not_found")
    assert ApiToken.objects.get(pk=theirs.token.pk).revoked_at is None
    assert services.api_token_authenticate(theirs.secret) is not None


def test_tokens_refuse_unauthenticated():
    assert_error(APIClient().get(TOKENS_URL), 401, "not_authenticated")
    assert_error(APIClient().post(TOKENS_URL, {"name": "x"}, format="json"), 401, "not_authenticated")
    assert not ApiToken.objects.exists()


# --- /users/ ---------------------------------------------------------------------------------


def test_users_list_shows_everyone_to_superadmin(
    api_client_for, superadmin, admin_a, admin_b, user_a, mailbox_b
):
    ids = list_ids(api_client_for(superadmin), USERS_URL)

    assert ids == set(User.objects.values_list("pk", flat=True))
    assert {superadmin.pk, admin_a.pk, admin_b.pk, user_a.pk, mailbox_b.owner_id} <= ids


def test_users_list_for_domain_admin_is_self_and_owners_in_own_domains(
    api_client_for, superadmin, admin_a, admin_b, user_a, mailbox_b, plain_user
):
    ids = list_ids(api_client_for(admin_a), USERS_URL)

    assert ids == {admin_a.pk, user_a.pk}


def test_users_list_for_mailbox_user_is_only_self(api_client_for, superadmin, admin_a, user_a, mailbox_b):
    ids = list_ids(api_client_for(user_a), USERS_URL)

    assert ids == {user_a.pk}


def test_users_list_filters_by_role(api_client_for, superadmin, admin_a, admin_b, user_a):
    ids = list_ids(api_client_for(superadmin), USERS_URL, role="domain_admin")

    assert ids == {admin_a.pk, admin_b.pk}


@pytest.mark.parametrize(
    ("actor", "target"),
    [("admin_a", "mailbox_b_owner"), ("admin_a", "superadmin"), ("user_a", "admin_a")],
)
def test_users_retrieve_outside_scope_is_404(api_client_for, request, mailbox_b, actor, target):
    actor = request.getfixturevalue(actor)
    target = mailbox_b.owner if target == "mailbox_b_owner" else request.getfixturevalue(target)

    response = api_client_for(actor).get(f"{USERS_URL}{target.pk}/")

    assert_error(response, 404, "not_found")


def test_users_create_by_superadmin(api_client_for, superadmin):
    response = api_client_for(superadmin).post(
        USERS_URL,
        {"email": " New@Gamma.TEST", "password": TEST_PASSWORD, "role": "domain_admin", "full_name": "New"},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "new@gamma.test"
    assert body["role"] == "domain_admin"
    assert "password" not in body
    user = User.objects.get(pk=body["id"])
    assert user.check_password(TEST_PASSWORD)
    assert Alert.objects.get(kind="accounts.admin_created").data["user_id"] == user.pk


def test_users_create_duplicate_is_409(api_client_for, superadmin, user_a):
    response = api_client_for(superadmin).post(
        USERS_URL, {"email": "ALICE@alpha.test", "password": TEST_PASSWORD}, format="json"
    )

    assert_error(response, 409, "duplicate", fields=["email"])
    assert User.objects.filter(email="alice@alpha.test").count() == 1


@pytest.mark.parametrize(
    ("body", "code", "fields"),
    [
        ({"email": "x@gamma.test", "password": "123"}, "weak_password", ["password"]),
        ({"email": "x@gamma.test", "role": "emperor"}, "invalid", ["role"]),
        ({"email": "x@gamma.test", "is_superuser": True}, "invalid", ["is_superuser"]),
        ({"password": TEST_PASSWORD}, "invalid", ["email"]),
        ({"email": "no-at-sign"}, "invalid_address", ["email"]),
    ],
)
def test_users_create_rejects_invalid_input(api_client_for, superadmin, body, code, fields):
    before = User.objects.count()

    response = api_client_for(superadmin).post(USERS_URL, body, format="json")

    assert_error(response, 400, code, fields=fields)
    assert User.objects.count() == before


@pytest.mark.parametrize("actor", ["admin_a", "user_a"])
def test_users_create_is_forbidden_for_non_superadmin(api_client_for, request, actor):
    client = api_client_for(request.getfixturevalue(actor))

    response = client.post(USERS_URL, {"email": "new@alpha.test", "password": TEST_PASSWORD}, format="json")

    assert_error(response, 403, "permission_denied")
    assert not User.objects.filter(email="new@alpha.test").exists()


def test_users_update_by_superadmin(api_client_for, superadmin, plain_user):
    response = api_client_for(superadmin).patch(
        f"{USERS_URL}{plain_user.pk}/", {"full_name": "Pat", "is_active": False}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["full_name"] == "Pat"
    assert response.json()["is_active"] is False
    plain_user.refresh_from_db()
    assert (plain_user.full_name, plain_user.is_active) == ("Pat", False)


def test_users_update_refuses_self_demotion(api_client_for, superadmin):
    response = api_client_for(superadmin).patch(
        f"{USERS_URL}{superadmin.pk}/", {"role": "user"}, format="json"
    )

    assert_error(response, 403, "permission_denied")
    superadmin.refresh_from_db()
    assert superadmin.role == User.Role.SUPERADMIN


def test_users_update_and_delete_are_forbidden_for_domain_admin(api_client_for, admin_a, user_a):
    client = api_client_for(admin_a)

    assert_error(
        client.patch(f"{USERS_URL}{user_a.pk}/", {"full_name": "X"}, format="json"), 403, "permission_denied"
    )
    assert_error(client.delete(f"{USERS_URL}{user_a.pk}/"), 403, "permission_denied")
    user_a.refresh_from_db()
    assert user_a.full_name == ""


def test_users_delete_by_superadmin(api_client_for, superadmin, plain_user):
    response = api_client_for(superadmin).delete(f"{USERS_URL}{plain_user.pk}/")

    assert response.status_code == 204
    assert not User.objects.filter(pk=plain_user.pk).exists()


def test_users_delete_of_mailbox_owner_is_409(api_client_for, superadmin, user_a):
    response = api_client_for(superadmin).delete(f"{USERS_URL}{user_a.pk}/")

    assert_error(response, 409, "user_owns_mailboxes")
    assert User.objects.filter(pk=user_a.pk).exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", USERS_URL), ("post", USERS_URL), ("get", f"{USERS_URL}1/"), ("delete", f"{USERS_URL}1/")],
)
def test_users_refuse_unauthenticated_with_401_not_redirect(superadmin, method, path):
    response = getattr(APIClient(), method)(path, format="json")

    assert_error(response, 401, "not_authenticated")
    assert "Location" not in response.headers
    assert User.objects.filter(pk=superadmin.pk).exists()


# --- /auth/events/ ---------------------------------------------------------------------------


def test_auth_events_superadmin_sees_all(api_client_for, superadmin, user_a):
    with pytest.raises(AuthenticationFailed):
        services.credentials_verify(request=None, email="ghost@alpha.test", password="x")
    services.api_token_create(user=user_a, name="ci")

    response = api_client_for(superadmin).get(EVENTS_URL)

    assert response.status_code == 200
    rows = response.json()["results"]
    assert {row["id"] for row in rows} == set(AuthEvent.objects.values_list("pk", flat=True))
    failure = next(row for row in rows if row["kind"] == "login_failed")
    assert failure["email"] == "ghost@alpha.test"
    assert failure["user"] is None


def test_auth_events_others_see_only_their_own(api_client_for, user_a, admin_a):
    services.api_token_create(user=admin_a, name="admin")
    client = api_client_for(user_a)

    response = client.get(EVENTS_URL)

    assert response.status_code == 200
    rows = response.json()["results"]
    assert rows
    assert {row["user"] for row in rows} == {user_a.pk}
    assert {row["id"] for row in rows} == set(
        AuthEvent.objects.filter(user=user_a).values_list("pk", flat=True)
    )


def test_auth_events_filter_by_kind(api_client_for, superadmin):
    with pytest.raises(AuthenticationFailed):
        services.credentials_verify(request=None, email="ghost@alpha.test", password="x")

    ids = list_ids(api_client_for(superadmin), EVENTS_URL, kind="login_failed")

    assert ids == set(AuthEvent.objects.filter(kind="login_failed").values_list("pk", flat=True))
    assert len(ids) == 1


def test_auth_events_refuse_unauthenticated():
    assert_error(APIClient().get(EVENTS_URL), 401, "not_authenticated")


# --- query-count caps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "url", "max_queries"),
    [
        ("superadmin", USERS_URL, 4),
        ("admin_a", USERS_URL, 4),
        ("user_a", TOKENS_URL, 4),
        ("superadmin", EVENTS_URL, 4),
    ],
)
def test_list_endpoints_query_count_does_not_grow_with_rows(
    api_client_for, django_assert_max_num_queries, request, domain_a, actor, url, max_queries
):
    user = request.getfixturevalue(actor)
    client = api_client_for(user)
    for _ in range(15):
        MailboxFactory(domain=domain_a)
        DomainAdminFactory()
        services.api_token_create(user=user, name="extra")
        UserFactory()
    client.get(url)  # warm up: last_used_at is written at most once a minute

    with django_assert_max_num_queries(max_queries):
        response = client.get(url)

    assert response.status_code == 200
    assert response.json()["count"] >= 15


@pytest.mark.django_db
def test_token_made_with_a_token_does_not_outlive_its_parent():
    user = UserFactory()
    parent = services.api_token_create(user=user, name="parent", expires_in_days=3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {parent.secret}")
    response = client.post("/api/v1/auth/tokens/", {"name": "child", "expires_in_days": 0}, format="json")
    assert response.status_code == 201
    child = ApiToken.objects.get(pk=response.json()["id"])
    assert child.expires_at == parent.token.expires_at
