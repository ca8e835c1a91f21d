import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import RequestFactory, override_settings
from django.utils import timezone

from apps.accounts import services
from apps.accounts.exceptions import AuthenticationFailed
from apps.accounts.models import ApiToken, AuthEvent, User
from apps.alerts.models import Alert
from apps.core.exceptions import ApplicationError, ConflictError, PermissionDeniedError
from tests.factories import DomainAdminFactory, SuperadminFactory, UserFactory

pytestmark = pytest.mark.django_db

GENERIC_LOGIN_ERROR = "Invalid email or password."


def _failed_login(email, password="wrong password", *, ip=None, channel="web"):
    request = RequestFactory().post("/accounts/login/", REMOTE_ADDR=ip) if ip else None
    with pytest.raises(AuthenticationFailed) as excinfo:
        services.credentials_verify(request=request, email=email, password=password, channel=channel)
    return excinfo.value


def _login_alerts():
    return list(Alert.objects.filter(kind="accounts.login_failures").order_by("id"))


# --- user_create -------------------------------------------------------------------------


def test_user_create_normalises_email_and_hashes_password(superadmin):
    user = services.user_create(
        actor=superadmin, email="  Carol@Gamma.TEST ", password="a long unusual passphrase 42"
    )

    user.refresh_from_db()
    assert user.email == "carol@gamma.test"
    assert user.role == User.Role.USER
    assert user.is_superuser is False
    assert user.password != "a long unusual passphrase 42"
    assert user.check_password("a long unusual passphrase 42")


def test_user_create_refuses_duplicate_email_in_any_spelling(superadmin):
    services.user_create(actor=superadmin, email="carol@gamma.test", password=None)

    with pytest.raises(ConflictError) as excinfo:
        services.user_create(actor=superadmin, email=" CAROL@Gamma.Test", password=None)

    assert excinfo.value.code == "duplicate"
    assert excinfo.value.status_code == 409
    assert "email" in excinfo.value.fields
    assert User.objects.filter(email__iexact="carol@gamma.test").count() == 1


def test_user_create_rejects_malformed_email(superadmin):
    with pytest.raises(ApplicationError) as excinfo:
        services.user_create(actor=superadmin, email="not-an-address", password=None)

    assert "email" in excinfo.value.fields
    assert not User.objects.filter(email="not-an-address").exists()


@pytest.mark.parametrize("role", [User.Role.SUPERADMIN, User.Role.DOMAIN_ADMIN])
def test_user_create_refuses_admin_role_when_actor_is_domain_admin(admin_a, role):
    with pytest.raises(PermissionDeniedError):
        services.user_create(actor=admin_a, email="sneaky@alpha.test", password=None, role=role)

    assert not User.objects.filter(email="sneaky@alpha.test").exists()
    assert not Alert.objects.filter(kind="accounts.admin_created").exists()


def test_user_create_refuses_admin_role_when_actor_is_mailbox_user(user_a):
    with pytest.raises(PermissionDeniedError):
        services.user_create(
            actor=user_a, email="sneaky@alpha.test", password=None, role=User.Role.SUPERADMIN
        )

    assert not User.objects.filter(email="sneaky@alpha.test").exists()


def test_user_create_allows_plain_user_when_actor_is_domain_admin(admin_a):
    user = services.user_create(actor=admin_a, email="plain@alpha.test", password=None)

    assert User.objects.get(pk=user.pk).role == User.Role.USER


@pytest.mark.parametrize("role", [User.Role.SUPERADMIN, User.Role.DOMAIN_ADMIN])
def test_user_create_admin_by_superadmin_emits_alert(superadmin, role):
    user = services.user_create(actor=superadmin, email="ops@gamma.test", password=None, role=role)

    user.refresh_from_db()
    assert user.role == role
    assert user.is_superuser is (role == User.Role.SUPERADMIN)
    alert = Alert.objects.get(kind="accounts.admin_created")
    assert alert.level == "warning"
    assert alert.data == {
        "user_id": user.pk,
        "email": "ops@gamma.test",
        "role": role,
        "actor": superadmin.email,
    }
    assert "ops@gamma.test" in alert.message


def test_user_create_plain_user_emits_no_alert(superadmin):
    services.user_create(actor=superadmin, email="plain@gamma.test", password=None)

    assert not Alert.objects.exists()


def test_user_create_without_password_sets_unusable_password(superadmin):
    user = services.user_create(actor=superadmin, email="nopass@gamma.test", password=None)

    user.refresh_from_db()
    assert not user.has_usable_password()


def test_user_create_rejects_weak_password(superadmin):
    with pytest.raises(ApplicationError) as excinfo:
        services.user_create(actor=superadmin, email="weak@gamma.test", password="12345678")

    assert excinfo.value.code == "weak_password"
    assert excinfo.value.fields["password"]
    assert not User.objects.filter(email="weak@gamma.test").exists()


def test_user_create_rejects_unknown_role(superadmin):
    with pytest.raises(ApplicationError) as excinfo:
        services.user_create(actor=superadmin, email="x@gamma.test", password=None, role="emperor")

    assert "role" in excinfo.value.fields
    assert not User.objects.filter(email="x@gamma.test").exists()


# --- user_update -------------------------------------------------------------------------


@pytest.mark.parametrize("role", [User.Role.DOMAIN_ADMIN, User.Role.USER])
def test_user_update_refuses_self_demotion(superadmin, role):
    with pytest.raises(PermissionDeniedError):
        services.user_update(actor=superadmin, user=superadmin, role=role)

    superadmin.refresh_from_db()
    assert superadmin.role == User.Role.SUPERADMIN
    assert superadmin.is_superuser is True


def test_user_update_refuses_self_disable(superadmin):
    with pytest.raises(PermissionDeniedError):
        services.user_update(actor=superadmin, user=superadmin, is_active=False)

    superadmin.refresh_from_db()
    assert superadmin.is_active is True


def test_user_update_allows_unchanged_role_and_state_for_self(superadmin):
    services.user_update(
        actor=superadmin, user=superadmin, role=User.Role.SUPERADMIN, is_active=True, full_name="Root"
    )

    superadmin.refresh_from_db()
    assert superadmin.full_name == "Root"
    assert superadmin.role == User.Role.SUPERADMIN


def test_user_update_allows_own_name_and_password_when_mailbox_user(user_a):
    services.user_update(
        actor=user_a, user=user_a, full_name="Alice A.", password="another long passphrase 7"
    )

    user_a.refresh_from_db()
    assert user_a.full_name == "Alice A."
    assert user_a.check_password("another long passphrase 7")


def test_user_update_refuses_own_promotion_when_mailbox_user(user_a):
    with pytest.raises(PermissionDeniedError):
        services.user_update(actor=user_a, user=user_a, role=User.Role.SUPERADMIN)

    user_a.refresh_from_db()
    assert user_a.role == User.Role.USER
    assert user_a.is_superuser is False


def test_user_update_refuses_other_user_when_actor_is_domain_admin(admin_a, user_a):
    with pytest.raises(PermissionDeniedError):
        services.user_update(actor=admin_a, user=user_a, full_name="Renamed")

    user_a.refresh_from_db()
    assert user_a.full_name == ""


def test_user_update_promotion_sets_superuser_flag_and_emits_alert(superadmin, plain_user):
    services.user_update(actor=superadmin, user=plain_user, role=User.Role.SUPERADMIN)

    plain_user.refresh_from_db()
    assert plain_user.role == User.Role.SUPERADMIN
    assert plain_user.is_superuser is True
    alert = Alert.objects.get(kind="accounts.admin_created")
    assert alert.data["user_id"] == plain_user.pk
    assert alert.data["actor"] == superadmin.email


def test_user_update_demotion_clears_superuser_flag_without_alert(superadmin):
    other = SuperadminFactory()

    services.user_update(actor=superadmin, user=other, role=User.Role.USER)

    other.refresh_from_db()
    assert other.role == User.Role.USER
    assert other.is_superuser is False
    assert not Alert.objects.exists()


def test_user_update_disabled_user_can_no_longer_sign_in(superadmin, plain_user):
    services.user_update(actor=superadmin, user=plain_user, is_active=False)

    plain_user.refresh_from_db()
    assert plain_user.is_active is False
    error = _failed_login(plain_user.email, "correct horse battery staple")
    assert error.message == GENERIC_LOGIN_ERROR


def test_user_update_rejects_weak_password_and_keeps_old_one(superadmin, plain_user):
    with pytest.raises(ApplicationError) as excinfo:
        services.user_update(actor=superadmin, user=plain_user, password="password")

    assert excinfo.value.code == "weak_password"
    assert User.objects.get(pk=plain_user.pk).check_password("correct horse battery staple")


def test_user_update_rejects_unknown_role(superadmin, plain_user):
    with pytest.raises(ApplicationError) as excinfo:
        services.user_update(actor=superadmin, user=plain_user, role="emperor")

    assert "role" in excinfo.value.fields
    assert User.objects.get(pk=plain_user.pk).role == User.Role.USER


# --- user_delete -------------------------------------------------------------------------


def test_user_delete_removes_user_when_actor_is_superadmin(superadmin, plain_user):
    services.user_delete(actor=superadmin, user=plain_user)

    assert not User.objects.filter(pk=plain_user.pk).exists()


def test_user_delete_refuses_self(superadmin):
    with pytest.raises(PermissionDeniedError):
        services.user_delete(actor=superadmin, user=superadmin)

    assert User.objects.filter(pk=superadmin.pk).exists()


def test_user_delete_refuses_non_superadmin(admin_a, plain_user):
    with pytest.raises(PermissionDeniedError):
        services.user_delete(actor=admin_a, user=plain_user)

    assert User.objects.filter(pk=plain_user.pk).exists()


def test_user_delete_refuses_owner_of_mailboxes(superadmin, user_a):
    with pytest.raises(ConflictError) as excinfo:
        services.user_delete(actor=superadmin, user=user_a)

    assert excinfo.value.code == "user_owns_mailboxes"
    assert User.objects.filter(pk=user_a.pk).exists()


# --- superuser_ensure_initial --------------------------------------------------------------


@override_settings(A3_HOSTNAME="mail.example.test", DJANGO_SUPERUSER_EMAIL="", DJANGO_SUPERUSER_PASSWORD="")
def test_superuser_ensure_initial_creates_hostname_admin_with_generated_password():
    result = services.superuser_ensure_initial()

    assert result is not None
    user = User.objects.get()
    assert user == result.user
    assert user.email == "admin@mail.example.test"
    assert user.role == User.Role.SUPERADMIN
    assert user.is_superuser is True
    assert result.generated_password
    assert len(result.generated_password) >= 20
    assert user.check_password(result.generated_password)
    alert = Alert.objects.get(kind="accounts.admin_created")
    assert alert.data["actor"] == "the system"
    assert result.generated_password not in str(alert.data) + alert.message


@override_settings(A3_HOSTNAME="mail.example.test", DJANGO_SUPERUSER_EMAIL="", DJANGO_SUPERUSER_PASSWORD="")
def test_superuser_ensure_initial_runs_only_once():
    first = services.superuser_ensure_initial()
    second = services.superuser_ensure_initial()

    assert first is not None
    assert second is None
    assert User.objects.count() == 1
    assert User.objects.get().check_password(first.generated_password)


@override_settings(DJANGO_SUPERUSER_EMAIL="Ops@Example.TEST", DJANGO_SUPERUSER_PASSWORD="short")
def test_superuser_ensure_initial_uses_environment_email_and_password():
    result = services.superuser_ensure_initial()

    assert result.generated_password is None
    user = User.objects.get()
    assert user.email == "ops@example.test"
    assert user.is_superadmin
    # The operator chose the password; the strength validators do not apply to it.
    assert user.check_password("short")


@override_settings(DJANGO_SUPERUSER_EMAIL="ops@example.test", DJANGO_SUPERUSER_PASSWORD="chosen by ops")
def test_superuser_ensure_initial_promotes_existing_user_with_that_email():
    existing = UserFactory(email="ops@example.test")

    result = services.superuser_ensure_initial()

    assert result.user.pk == existing.pk
    existing.refresh_from_db()
    assert existing.role == User.Role.SUPERADMIN
    assert existing.is_superuser is True
    assert existing.check_password("chosen by ops")
    assert User.objects.count() == 1


@override_settings(A3_HOSTNAME="mail.example.test", DJANGO_SUPERUSER_EMAIL="", DJANGO_SUPERUSER_PASSWORD="")
def test_superuser_ensure_initial_is_noop_when_superadmin_exists(superadmin):
    assert services.superuser_ensure_initial() is None

    assert list(User.objects.values_list("email", flat=True)) == [superadmin.email]
    assert not Alert.objects.exists()


# --- credentials_verify --------------------------------------------------------------------


def test_credentials_verify_returns_user_for_correct_password(plain_user):
    user = services.credentials_verify(
        request=None, email=f"  {plain_user.email.upper()} ", password="correct horse battery staple"
    )

    assert user == plain_user
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED).exists()


@pytest.mark.parametrize(
    "typed", ["jörg@bücher.example", " JÖRG@BÜCHER.EXAMPLE ", "jörg@xn--bcher-kva.example"]
)
def test_credentials_verify_accepts_any_spelling_of_internationalised_address(superadmin, typed):
    user = services.user_create(
        actor=superadmin, email="Jörg@Bücher.example", password="a long unusual passphrase 42"
    )

    assert user.email == "jörg@xn--bcher-kva.example"
    assert (
        services.credentials_verify(request=None, email=typed, password="a long unusual passphrase 42")
        == user
    )


@override_settings(A3_LOGIN_FAILURE_ALERT_THRESHOLD=2)
def test_credentials_verify_counts_failures_per_account_across_spellings():
    _failed_login("jörg@bücher.example")
    _failed_login("JÖRG@xn--bcher-kva.example")

    alert = Alert.objects.get(kind="accounts.login_failures")
    assert alert.data["email"] == "jörg@xn--bcher-kva.example"
    assert set(AuthEvent.objects.values_list("email", flat=True)) == {"jörg@xn--bcher-kva.example"}


@pytest.mark.parametrize("cause", ["unknown_user", "wrong_password", "inactive_user", "empty_password"])
def test_credentials_verify_fails_with_one_generic_message(cause):
    user = UserFactory(email="victim@people.test", is_active=cause != "inactive_user")
    email = "nobody@people.test" if cause == "unknown_user" else user.email
    password = {
        "wrong_password": "not the password",
        "empty_password": "",
    }.get(cause, "correct horse battery staple")

    error = _failed_login(email, password, ip="198.51.100.7", channel="api")

    assert str(error) == error.message == GENERIC_LOGIN_ERROR
    assert error.code == "authentication_failed"
    assert error.status_code == 401
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_FAILED)
    assert event.email == email
    # Linked to the account when one exists (its owner sees attempts on it); the client
    # got the same answer either way.
    assert event.user == (None if cause == "unknown_user" else user)
    assert event.ip == "198.51.100.7"

    assert event.channel == "api"


@pytest.mark.parametrize("typed", ["admin", "@", "a@b@c", "x@-bad-.test", ""])
def test_credentials_verify_fails_generically_for_non_address_login_name(typed):
    error = _failed_login(typed, "correct horse battery staple")

    assert error.message == GENERIC_LOGIN_ERROR
    assert AuthEvent.objects.get().email == typed.strip().lower()


def test_credentials_verify_records_client_of_failure():
    request = RequestFactory().post("/", REMOTE_ADDR="203.0.113.5", HTTP_USER_AGENT="curl/8.0")

    with pytest.raises(AuthenticationFailed):
        services.credentials_verify(request=request, email="Someone@People.Test", password="x")

    event = AuthEvent.objects.get()
    assert (event.kind, event.email, event.ip, event.user_agent, event.channel) == (
        AuthEvent.Kind.LOGIN_FAILED,
        "someone@people.test",
        "203.0.113.5",
        "curl/8.0",
        "web",
    )


@override_settings(A3_LOGIN_FAILURE_ALERT_THRESHOLD=3)
def test_credentials_verify_alerts_exactly_when_account_failures_reach_threshold(plain_user):
    _failed_login(plain_user.email)
    _failed_login(plain_user.email)
    assert _login_alerts() == []

    _failed_login(plain_user.email)
    alerts = _login_alerts()
    assert len(alerts) == 1
    assert alerts[0].level == "warning"
    assert alerts[0].data["count"] == 3
    assert alerts[0].data["email"] == plain_user.email
    assert f"account {plain_user.email}" in alerts[0].message

    _failed_login(plain_user.email)
    _failed_login(plain_user.email)
    assert len(_login_alerts()) == 1

    _failed_login(plain_user.email)  # the next multiple of the threshold
    alerts = _login_alerts()
    assert len(alerts) == 2
    assert alerts[1].data["count"] == 6
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED).count() == 6


@override_settings(A3_LOGIN_FAILURE_ALERT_THRESHOLD=3)
def test_credentials_verify_alerts_when_failures_from_one_address_reach_threshold():
    _failed_login("one@people.test", ip="192.0.2.44")
    _failed_login("two@people.test", ip="192.0.2.44")
    assert _login_alerts() == []

    _failed_login("three@people.test", ip="192.0.2.44")

    alert = Alert.objects.get(kind="accounts.login_failures")
    assert alert.data["ip"] == "192.0.2.44"
    assert alert.data["count"] == 3
    assert "address 192.0.2.44" in alert.message


@override_settings(A3_LOGIN_FAILURE_ALERT_THRESHOLD=2)
def test_credentials_verify_alerts_once_when_account_and_address_reach_threshold_together():
    _failed_login("target@people.test", ip="192.0.2.9")
    _failed_login("target@people.test", ip="192.0.2.9")

    assert len(_login_alerts()) == 1


@override_settings(A3_LOGIN_FAILURE_ALERT_THRESHOLD=1)
def test_credentials_verify_alert_escalates_to_error_at_four_times_threshold():
    for _ in range(4):
        _failed_login("target@people.test")

    assert [alert.level for alert in _login_alerts()] == ["warning", "warning", "warning", "error"]


@override_settings(A3_LOGIN_FAILURE_ALERT_THRESHOLD=3, A3_LOGIN_FAILURE_WINDOW_SECONDS=600)
def test_credentials_verify_ignores_failures_outside_window():
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        _failed_login("target@people.test")
        _failed_login("target@people.test")
        traveller.shift(timedelta(seconds=601))
        _failed_login("target@people.test")

    assert _login_alerts() == []
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED).count() == 3


# --- API tokens ----------------------------------------------------------------------------


def test_api_token_create_stores_only_sha256_of_secret(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")

    row = ApiToken.objects.filter(pk=issued.token.pk).values().get()
    assert row["key_hash"] == hashlib.sha256(issued.secret.encode()).hexdigest()
    assert issued.secret.startswith(f"a3_{row['prefix']}_")
    random_part = issued.secret.split("_", 2)[2]
    assert len(random_part) >= 40
    assert all(random_part not in str(value) for value in row.values())
    events = list(AuthEvent.objects.values())
    assert events
    assert all(random_part not in str(event) for event in events)


def test_api_token_create_records_event(plain_user):
    issued = services.api_token_create(
        user=plain_user, name="ci", client=services.ClientInfo(ip="192.0.2.1", user_agent="bot")
    )

    event = AuthEvent.objects.get(kind=AuthEvent.Kind.TOKEN_CREATED)
    assert event.user == plain_user
    assert event.ip == "192.0.2.1"
    assert event.channel == "api"
    assert event.detail == {"token_id": issued.token.pk, "name": "ci"}


@override_settings(A3_API_TOKEN_DEFAULT_DAYS=7)
def test_api_token_create_uses_default_expiry(plain_user):
    with time_machine.travel("2030-01-01 12:00:00+00:00", tick=False):
        issued = services.api_token_create(user=plain_user, name="ci")

    assert ApiToken.objects.get(pk=issued.token.pk).expires_at == datetime(2030, 1, 8, 12, 0, tzinfo=UTC)


def test_api_token_create_never_expires_when_days_is_zero(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci", expires_in_days=0)

    assert ApiToken.objects.get(pk=issued.token.pk).expires_at is None


def test_api_token_create_defaults_blank_name(plain_user):
    issued = services.api_token_create(user=plain_user, name="   ")

    assert ApiToken.objects.get(pk=issued.token.pk).name == "API token"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"expires_in_days": -1}, "expires_in_days"),
        ({"expires_in_days": 3651}, "expires_in_days"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_api_token_create_rejects_invalid_input(plain_user, kwargs, field):
    with pytest.raises(ApplicationError) as excinfo:
        services.api_token_create(user=plain_user, **{"name": "ci", **kwargs})

    assert field in excinfo.value.fields
    assert not ApiToken.objects.exists()
    assert not AuthEvent.objects.exists()


def test_api_token_authenticate_resolves_owner_and_marks_use(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")

    user, token = services.api_token_authenticate(issued.secret)

    assert user == plain_user
    assert token.pk == issued.token.pk
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None


def test_api_token_authenticate_accepts_secrets_containing_underscores(plain_user):
    # The random part is URL-safe base64, which includes "_"; about half of all secrets have one.
    issued = [services.api_token_create(user=plain_user, name=f"t{i}") for i in range(60)]
    with_underscore = [i for i in issued if "_" in i.secret.split("_", 2)[2]]
    assert with_underscore

    for item in with_underscore:
        assert services.api_token_authenticate(item.secret) == (plain_user, item.token)


def test_api_token_authenticate_throttles_last_used_writes(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci", expires_in_days=0)
    with time_machine.travel("2030-01-01 12:00:00+00:00", tick=False) as traveller:
        services.api_token_authenticate(issued.secret)
        first = ApiToken.objects.get(pk=issued.token.pk).last_used_at
        assert first == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
        traveller.shift(timedelta(seconds=30))
        services.api_token_authenticate(issued.secret)
        assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first
        traveller.shift(timedelta(minutes=2))
        services.api_token_authenticate(issued.secret)

    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first + timedelta(seconds=150)


def test_api_token_revoke_stops_authentication_and_records_event(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")

    services.api_token_revoke(actor=plain_user, token=issued.token)

    assert services.api_token_authenticate(issued.secret) is None
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at is not None
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.TOKEN_REVOKED)
    assert event.user == plain_user
    assert event.detail == {"token_id": issued.token.pk}


def test_api_token_revoke_twice_keeps_first_time_and_one_event(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")
    services.api_token_revoke(actor=plain_user, token=issued.token)
    first = ApiToken.objects.get(pk=issued.token.pk).revoked_at

    services.api_token_revoke(actor=plain_user, token=ApiToken.objects.get(pk=issued.token.pk))

    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at == first
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.TOKEN_REVOKED).count() == 1


def test_api_token_authenticate_rejects_expired_token(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci", expires_in_days=1)

    with time_machine.travel(timezone.now() + timedelta(days=1, seconds=1)):
        assert services.api_token_authenticate(issued.secret) is None
    assert services.api_token_authenticate(issued.secret) is not None


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "garbage",
        "a3_",
        "a3__",
        "Bearer a3_x_y",
        "xx_0123456789ab_abcdef",
        "a3_0123456789ab_abcdef",
        "a3_%_%",
        "a3_" + "_" * 100,
    ],
)
def test_api_token_authenticate_rejects_garbage(plain_user, secret):
    services.api_token_create(user=plain_user, name="ci")

    assert services.api_token_authenticate(secret) is None


def test_api_token_authenticate_rejects_tampered_secret(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")
    other = services.api_token_create(user=plain_user, name="other")
    last = issued.secret[-1]
    flipped = issued.secret[:-1] + ("A" if last != "A" else "B")
    prefix = issued.secret.split("_", 2)[1]
    spliced = f"a3_{prefix}_{other.secret.split('_', 2)[2]}"

    assert services.api_token_authenticate(flipped) is None
    assert services.api_token_authenticate(spliced) is None
    assert services.api_token_authenticate(issued.secret.upper()) is None
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at is None


def test_api_token_authenticate_rejects_inactive_user(plain_user):
    issued = services.api_token_create(user=plain_user, name="ci")
    User.objects.filter(pk=plain_user.pk).update(is_active=False)

    assert services.api_token_authenticate(issued.secret) is None
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at is None


def test_api_tokens_purge_expired_deletes_only_long_dead_tokens(plain_user):
    now = timezone.now()

    def make(name, **fields):
        token = services.api_token_create(user=plain_user, name=name).token
        ApiToken.objects.filter(pk=token.pk).update(**fields)
        return token

    make("expired long ago", expires_at=now - timedelta(days=31))
    make("revoked long ago", revoked_at=now - timedelta(days=31))
    make("expired recently", expires_at=now - timedelta(days=10))
    make("revoked recently", revoked_at=now - timedelta(days=10))
    make("valid", expires_at=now + timedelta(days=10))
    make("never expires", expires_at=None)

    assert services.api_tokens_purge_expired() == 2
    assert set(ApiToken.objects.values_list("name", flat=True)) == {
        "expired recently",
        "revoked recently",
        "valid",
        "never expires",
    }

    assert services.api_tokens_purge_expired(older_than_days=5) == 2
    assert set(ApiToken.objects.values_list("name", flat=True)) == {"valid", "never expires"}


def test_api_tokens_purge_expired_leaves_other_users_usable_tokens():
    admin = DomainAdminFactory()
    issued = services.api_token_create(user=admin, name="keep", expires_in_days=0)

    assert services.api_tokens_purge_expired(older_than_days=0) == 0
    assert services.api_token_authenticate(issued.secret) is not None


def test_credentials_verify_records_nul_in_login_name_without_error():
    error = _failed_login("evil\x00@people.test")
    assert error.code == "authentication_failed"
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_FAILED).email == "evil@people.test"


@override_settings(DJANGO_SUPERUSER_EMAIL="", DJANGO_SUPERUSER_PASSWORD="")
def test_superuser_ensure_initial_replaces_an_inactive_superadmin():
    SuperadminFactory(email="gone@admin.test", is_active=False)
    created = services.superuser_ensure_initial()
    assert created is not None and created.user.is_superadmin
    assert Alert.objects.filter(kind="accounts.admin_created", data__email=created.user.email).exists()


def test_user_update_password_change_revokes_api_tokens():
    user = UserFactory()
    issued = services.api_token_create(user=user, name="script")
    assert services.api_token_authenticate(issued.secret) is not None
    services.user_update(actor=user, user=user, password="a-brand-new-long-password")
    assert services.api_token_authenticate(issued.secret) is None
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is not None


def test_api_token_create_never_outlives_not_after():
    user = UserFactory()
    limit = timezone.now() + timedelta(days=2)
    forever = services.api_token_create(user=user, name="child", expires_in_days=0, not_after=limit)
    longer = services.api_token_create(user=user, name="child2", expires_in_days=30, not_after=limit)
    assert forever.token.expires_at == limit and longer.token.expires_at == limit
