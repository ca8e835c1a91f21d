"""Dashboard pages for second factors: the sign-in's second step, forced enrolment, the
security page, step-up verification and the admin reset."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyotp
import pytest
import time_machine
from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import mfa
from apps.accounts.models import ApiToken, AuthEvent, UserSession
from apps.alerts.models import Alert
from apps.mailboxes.models import AppPassword
from tests.factories import TEST_PASSWORD

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
LOGIN = "/accounts/login/"
LOGIN_MFA = "/accounts/login/mfa/"
SETUP = "/accounts/mfa/setup/"
VERIFY = "/accounts/mfa/verify/"
SECURITY = "/accounts/security/"
POLICY_ON = ["superadmin", "domain_admin"]


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def policy_on(settings):
    settings.A3_MFA_REQUIRED_ROLES = POLICY_ON


def shown_codes(response) -> list[str]:
    block = re.search(r'<pre[^>]*id="backup-codes">(.*?)</pre>', response.content.decode(), re.S)
    return block.group(1).split()


def enrol(user) -> tuple[pyotp.TOTP, list[str]]:
    secret, _ = mfa.totp_begin(user=user)
    totp = pyotp.TOTP(secret)
    return totp, mfa.totp_confirm(user=user, otp=totp.now())


def password_step(client: Client, user, **extra: str):
    return client.post(LOGIN, {"email": user.email, "password": TEST_PASSWORD, **extra})


# --- Sign-in with a second factor -------------------------------------------------------------


def test_login_with_totp_goes_through_the_second_step(user_a, clock):
    totp, _ = enrol(user_a)
    clock.shift(30)
    client = Client()

    first = password_step(client, user_a, next="/alerts/")
    assert first.status_code == 302 and first.headers["Location"] == LOGIN_MFA
    assert SESSION_KEY not in client.session  # not signed in yet
    assert client.get("/").status_code == 302

    page = client.get(LOGIN_MFA)
    assert page.status_code == 200
    assert 'name="otp"' in page.content.decode()
    done = client.post(LOGIN_MFA, {"otp": totp.now()})

    assert done.status_code == 302 and done.headers["Location"] == "/alerts/"
    assert client.session[SESSION_KEY] == str(user_a.pk)
    assert client.session[DEVICE_ID_SESSION_KEY] == TOTPDevice.objects.get(user=user_a).persistent_id
    assert mfa.PENDING_SESSION_KEY not in client.session
    row = UserSession.objects.get(session_key=client.session.session_key)
    assert row.mfa_verified is True and row.method == "password"
    login = AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_OK)
    assert login.detail == {"method": "password", "mfa": True}
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_OK, user=user_a).count() == 1


def test_second_step_with_wrong_code_stays_pending(user_a, clock):
    enrol(user_a)
    client = Client()
    password_step(client, user_a)

    response = client.post(LOGIN_MFA, {"otp": "000000"})

    assert response.status_code == 400
    assert "Invalid code." in response.content.decode()
    assert SESSION_KEY not in client.session
    assert mfa.PENDING_SESSION_KEY in client.session
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_FAILED, user=user_a).count() == 1


def test_second_step_with_backup_code_warns_about_what_is_left(user_a, clock):
    _, codes = enrol(user_a)
    client = Client()
    password_step(client, user_a)

    response = client.post(LOGIN_MFA, {"otp": codes[0]}, follow=True)

    assert client.session[SESSION_KEY] == str(user_a.pk)
    assert "You signed in with a backup code; 9 left." in response.content.decode()


def test_pending_second_step_expires(user_a, clock):
    totp, _ = enrol(user_a)
    client = Client()
    password_step(client, user_a)

    clock.shift(mfa.PENDING_SECONDS + 1)
    response = client.post(LOGIN_MFA, {"otp": totp.now()})

    assert response.status_code == 302 and response.headers["Location"] == LOGIN
    assert SESSION_KEY not in client.session
    assert mfa.PENDING_SESSION_KEY not in client.session
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_OK).exists()


def test_second_step_without_password_step_sends_to_login(db):
    response = Client().get(LOGIN_MFA)

    assert response.status_code == 302 and response.headers["Location"] == LOGIN


def test_second_step_ignores_an_offsite_next(user_a, clock):
    totp, _ = enrol(user_a)
    clock.shift(30)
    client = Client()
    password_step(client, user_a, next="https://evil.example/steal")

    response = client.post(LOGIN_MFA, {"otp": totp.now(), "next": "https://evil.example/steal"})

    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_second_step_rejects_a_post_without_csrf_token(user_a, clock):
    totp, _ = enrol(user_a)
    clock.shift(30)
    client = Client(enforce_csrf_checks=True)
    client.get(LOGIN)
    csrf = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    first = client.post(
        LOGIN, {"email": user_a.email, "password": TEST_PASSWORD, "csrfmiddlewaretoken": csrf}
    )
    assert first.headers["Location"] == LOGIN_MFA

    response = client.post(LOGIN_MFA, {"otp": totp.now()})

    assert response.status_code == 403
    assert SESSION_KEY not in client.session
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_OK).exists()


def test_wrong_codes_at_the_second_step_lock_out(settings, user_a, clock):
    settings.A3_LOCKOUT_FAILURES = settings.AXES_FAILURE_LIMIT = 2
    totp, _ = enrol(user_a)
    clock.shift(30)
    client = Client()

    for _ in range(2):
        password_step(client, user_a)
        client.post(LOGIN_MFA, {"otp": "000000"})
        clock.shift(2)
    refused = password_step(client, user_a)  # the password step is locked as well
    response = client.post(LOGIN_MFA, {"otp": totp.now()})

    assert refused.status_code == 429

    assert response.status_code == 302 and response.headers["Location"] == LOGIN
    assert SESSION_KEY not in client.session
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT, email=user_a.email).exists()


def test_login_without_a_factor_is_unchanged(user_a):
    client = Client()

    response = password_step(client, user_a)

    assert response.headers["Location"] == "/"
    assert client.session[SESSION_KEY] == str(user_a.pk)


# --- Forced enrolment ------------------------------------------------------------------------


def test_admin_without_factor_is_sent_to_enrolment_for_everything(policy_on, admin_a, clock):
    client = Client()
    password_step(client, admin_a)

    for path in ["/", "/mail/domains/", SECURITY, "/accounts/tokens/", "/django-admin/"]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith(f"{SETUP}?next="), path
    htmx = client.get("/mail/domains/", HTTP_HX_REQUEST="true")
    assert htmx.status_code == 204 and htmx.headers["HX-Redirect"].startswith(SETUP)
    api = client.get("/api/v1/domains/")
    assert api.status_code == 403 and api.json()["code"] == "mfa_enrolment_required"
    assert client.get("/static/css/app.css").status_code == 200
    assert client.get("/healthz").status_code == 200

    page = client.get(f"{SETUP}?next=/mail/domains/")
    content = page.content.decode()
    assert page.status_code == 200
    assert 'src="data:image/svg+xml' in content
    secret = re.search(r'data-secret="([A-Z2-7]+)"', content).group(1)
    assert secret == mfa.totp_pending(admin_a).secret
    done = client.post(SETUP, {"otp": pyotp.TOTP(secret).now(), "next": "/mail/domains/"})

    assert done.status_code == 200
    codes = shown_codes(done)
    assert len(codes) == 10
    assert set(codes) == set(StaticToken.objects.filter(device__user=admin_a).values_list("token", flat=True))
    assert 'download="a3mailer-backup-codes.txt"' in done.content.decode()
    assert 'href="/mail/domains/"' in done.content.decode()
    assert client.get("/mail/domains/").status_code == 200
    assert UserSession.objects.get(session_key=client.session.session_key).mfa_verified is True


def test_logout_stays_reachable_during_forced_enrolment(policy_on, admin_a):
    client = Client()
    client.force_login(admin_a)

    response = client.post("/accounts/logout/")

    assert response.headers["Location"] == LOGIN
    assert SESSION_KEY not in client.session


def test_enrolment_page_rejects_a_wrong_first_code(policy_on, admin_a, clock):
    client = Client()
    client.force_login(admin_a)
    secret = re.search(r'data-secret="([A-Z2-7]+)"', client.get(SETUP).content.decode()).group(1)
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"

    response = client.post(SETUP, {"otp": wrong})

    assert response.status_code == 400
    assert secret in response.content.decode().replace(" ", "")  # the same secret, again
    assert mfa.mfa_enabled(admin_a) is False


def test_no_enrolment_forced_when_the_policy_is_off(admin_a):
    client = Client()
    client.force_login(admin_a)

    assert client.get("/mail/domains/").status_code == 200


def test_mailbox_user_of_a_strict_domain_is_sent_to_enrolment(policy_on, user_a, domain_a):
    domain_a.require_mfa = True
    domain_a.save(update_fields=["require_mfa"])
    client = Client()
    client.force_login(user_a)

    assert client.get("/mail/mailboxes/").headers["Location"].startswith(SETUP)


def test_enrolled_admin_with_unverified_session_is_sent_to_verify_first(policy_on, admin_a, clock):
    totp, _ = enrol(admin_a)
    clock.shift(30)
    client = Client()
    client.force_login(admin_a)  # e.g. a session from before the factor was added

    to_setup = client.get("/mail/domains/")
    to_verify = client.get(to_setup.headers["Location"])
    assert to_verify.headers["Location"].startswith(VERIFY)
    verified = client.post(VERIFY, {"otp": totp.now(), "next": "/mail/domains/"})

    assert verified.headers["Location"] == "/mail/domains/"
    assert client.get("/mail/domains/").status_code == 200
    assert TOTPDevice.objects.filter(user=admin_a).count() == 1  # nothing was replaced


# --- Security page ---------------------------------------------------------------------------


def test_security_page_lists_factors(user_a, clock):
    enrol(user_a)
    client = Client()
    client.force_login(user_a)

    content = client.get(SECURITY).content.decode()

    assert "Authenticator app" in content and '<span class="pill">on</span>' in content
    assert 'id="backup-codes-remaining">10 left<' in content
    assert "Verify it" in content  # a forced login is not a verified session


def test_security_actions_need_a_verified_session(user_a, clock):
    totp, _ = enrol(user_a)
    clock.shift(30)
    client = Client()
    client.force_login(user_a)

    refused = client.post("/accounts/mfa/backup-codes/")
    assert refused.headers["Location"].startswith(VERIFY)
    assert mfa.backup_codes_remaining(user_a) == 10
    client.post(VERIFY, {"otp": totp.now()})

    page = client.post("/accounts/mfa/backup-codes/")
    new_codes = shown_codes(page)
    assert page.status_code == 200 and len(new_codes) == 10
    assert set(new_codes) == set(
        StaticToken.objects.filter(device__user=user_a).values_list("token", flat=True)
    )
    removed = client.post("/accounts/mfa/totp/remove/")
    assert removed.headers["Location"] == SECURITY
    assert mfa.mfa_enabled(user_a) is False
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_REMOVED, user=user_a).exists()


def test_credentials_are_minted_only_after_verification(user_a, clock):
    totp, _ = enrol(user_a)
    clock.shift(30)
    client = Client()
    client.force_login(user_a)

    token_page = client.post("/accounts/tokens/", {"name": "cli", "expires_in_days": 30})
    app_page = client.post("/relay/app-passwords/", {"mailbox": "alice@alpha.test", "name": "Phone"})

    for response in (token_page, app_page):
        assert "Verify your second factor in this session first." in response.content.decode()
    assert not ApiToken.objects.filter(user=user_a).exists()
    assert not AppPassword.objects.exists()

    client.post(VERIFY, {"otp": totp.now()})
    client.post("/accounts/tokens/", {"name": "cli", "expires_in_days": 30})
    assert ApiToken.objects.filter(user=user_a, name="cli").exists()


# --- Administrators' reset ---------------------------------------------------------------------


def test_superadmin_resets_a_users_factors_from_the_user_page(superadmin, user_a, clock):
    enrol(user_a)
    client = Client()
    client.force_login(superadmin)
    page = client.get(f"/accounts/users/{user_a.pk}/").content.decode()
    assert "Reset second factors" in page

    response = client.post(f"/accounts/users/{user_a.pk}/mfa-reset/")

    assert response.headers["Location"] == f"/accounts/users/{user_a.pk}/"
    assert mfa.mfa_enabled(user_a) is False
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.MFA_RESET)
    assert (event.user, event.detail["actor"]) == (user_a, superadmin.email)
    assert Alert.objects.filter(kind="accounts.mfa_reset").count() == 1


def test_reset_button_absent_on_own_page_and_post_refused_for_others(superadmin, admin_b, user_a, clock):
    enrol(user_a)
    own = Client()
    own.force_login(superadmin)
    assert "Reset second factors" not in own.get(f"/accounts/users/{superadmin.pk}/").content.decode()

    outsider = Client()
    outsider.force_login(admin_b)  # administers beta.test, user_a's mailbox is in alpha.test

    assert outsider.post(f"/accounts/users/{user_a.pk}/mfa-reset/").status_code == 404
    assert mfa.mfa_enabled(user_a) is True
