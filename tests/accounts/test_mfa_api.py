"""The MFA API and the token rules: /api/v1/auth/mfa/…, /api/v1/auth/token/ with `otp`,
enrolment-scope tokens, and the administrators' reset."""

from __future__ import annotations

from datetime import UTC, datetime

import pyotp
import pytest
import time_machine
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from apps.accounts import mfa
from apps.accounts.models import ApiToken, AuthEvent
from apps.mailboxes.models import AppPassword
from tests.factories import TEST_PASSWORD

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
TOKEN = "/api/v1/auth/token/"
ME = "/api/v1/auth/me/"
STATUS = "/api/v1/auth/mfa/"
TOTP = "/api/v1/auth/mfa/totp/"
CONFIRM = "/api/v1/auth/mfa/totp/confirm/"
BACKUP_CODES = "/api/v1/auth/mfa/backup-codes/"
POLICY_ON = ["superadmin", "domain_admin"]


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def policy_on(settings):
    settings.A3_MFA_REQUIRED_ROLES = POLICY_ON


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def obtain(email: str, **extra: str):
    return APIClient().post(TOKEN, {"email": email, "password": TEST_PASSWORD, **extra}, format="json")


def enrol_via_api(client: APIClient) -> tuple[pyotp.TOTP, list[str]]:
    begun = client.post(TOTP)
    assert begun.status_code == 201, begun.json()
    totp = pyotp.TOTP(begun.json()["secret"])
    confirmed = client.post(CONFIRM, {"otp": totp.now()}, format="json")
    assert confirmed.status_code == 200, confirmed.json()
    return totp, confirmed.json()["backup_codes"]


# --- The contract flow -------------------------------------------------------------------------


def test_enrolment_flow_from_password_to_full_token(policy_on, admin_a, domain_a, clock):
    # 1. Policy requires a second factor and there is none: an enrolment-scope token.
    first = obtain(admin_a.email)
    assert first.status_code == 201
    assert first.json()["scope"] == "mfa_enrolment"
    limited = bearer(first.json()["token"])

    # 2. It reaches the MFA endpoints and "me", and nothing else.
    assert limited.get(ME).json()["email"] == admin_a.email
    assert limited.get(STATUS).json() == {
        "required": True,
        "enabled": False,
        "totp": False,
        "backup_codes_remaining": 0,
        "passkeys": 0,
    }
    refused = limited.get("/api/v1/domains/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "mfa_enrolment_required"
    assert limited.post("/api/v1/auth/tokens/", {"name": "more"}, format="json").status_code == 403
    assert limited.patch(ME, {}, format="json").status_code == 403

    # 3. Begin and confirm with a real authenticator implementation.
    begun = limited.post(TOTP)
    assert begun.status_code == 201
    body = begun.json()
    assert set(body) == {"secret", "otpauth_url"}
    assert (
        body["otpauth_url"].startswith("otpauth://totp/")
        and f"secret={body['secret']}" in body["otpauth_url"]
    )
    totp = pyotp.TOTP(body["secret"])
    confirmed = limited.post(CONFIRM, {"otp": totp.now()}, format="json")
    assert confirmed.status_code == 200
    codes = confirmed.json()["backup_codes"]
    assert len(codes) == 10

    # 4. The enrolment token is spent; a password alone no longer gets a token.
    assert limited.get(ME).status_code == 401
    missing = obtain(admin_a.email)
    assert missing.status_code == 401
    assert missing.json()["code"] == "mfa_required"

    # 5. Password and a fresh code: a full token that reaches everything.
    clock.shift(30)
    full = obtain(admin_a.email, otp=totp.now())
    assert full.status_code == 201
    assert "scope" not in full.json()
    domains = bearer(full.json()["token"]).get("/api/v1/domains/")
    assert domains.status_code == 200
    assert [row["name"] for row in domains.json()["results"]] == [domain_a.name]


def test_token_with_wrong_or_replayed_otp_is_refused_and_recorded(plain_user, clock):
    client = bearer(obtain(plain_user.email).json()["token"])
    totp, _ = enrol_via_api(client)
    clock.shift(30)
    code = totp.now()

    assert obtain(plain_user.email, otp=code).status_code == 201
    replayed = obtain(plain_user.email, otp=code)
    clock.shift(5)
    wrong = obtain(plain_user.email, otp="000000")

    for response in (replayed, wrong):
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_otp"
    failures = AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_FAILED, user=plain_user)
    assert list(failures.values_list("channel", flat=True)) == ["api", "api"]


def test_token_with_backup_code_works_once(plain_user, clock):
    client = bearer(obtain(plain_user.email).json()["token"])
    _, codes = enrol_via_api(client)

    first = obtain(plain_user.email, otp=codes[0])
    clock.shift(5)
    again = obtain(plain_user.email, otp=codes[0])

    assert first.status_code == 201 and "scope" not in first.json()
    assert again.status_code == 401 and again.json()["code"] == "invalid_otp"


def test_token_answers_do_not_reveal_accounts_before_the_password(plain_user, clock):
    client = bearer(obtain(plain_user.email).json()["token"])
    enrol_via_api(client)

    unknown = APIClient().post(
        TOKEN, {"email": "nobody@people.test", "password": TEST_PASSWORD, "otp": "123456"}, format="json"
    )
    wrong_password = APIClient().post(
        TOKEN, {"email": plain_user.email, "password": "not it", "otp": "123456"}, format="json"
    )

    assert unknown.status_code == wrong_password.status_code == 401
    assert unknown.json() == wrong_password.json()
    assert unknown.json()["code"] == "authentication_failed"


def test_wrong_otps_lock_the_token_endpoint_out(settings, plain_user, clock):
    settings.A3_LOCKOUT_FAILURES = settings.AXES_FAILURE_LIMIT = 3
    client = bearer(obtain(plain_user.email).json()["token"])
    totp, _ = enrol_via_api(client)
    clock.shift(30)

    for _ in range(3):
        assert obtain(plain_user.email, otp="000000").status_code == 401
        clock.shift(1)
    locked = obtain(plain_user.email, otp=totp.now())

    assert locked.status_code == 429
    assert locked.json()["code"] == "locked_out"
    assert int(locked.headers["Retry-After"]) > 0


def test_confirm_with_invalid_otp_is_400(plain_user, clock):
    client = bearer(obtain(plain_user.email).json()["token"])
    secret = client.post(TOTP).json()["secret"]
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"

    response = client.post(CONFIRM, {"otp": wrong}, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_otp"
    assert not TOTPDevice.objects.filter(user=plain_user, confirmed=True).exists()


def test_confirm_without_begin_is_409_and_bad_input_is_400(plain_user):
    client = bearer(obtain(plain_user.email).json()["token"])

    assert client.post(CONFIRM, {"otp": "123456"}, format="json").json()["code"] == "totp_not_started"
    invalid = client.post(CONFIRM, {"code": "123456"}, format="json")
    assert invalid.status_code == 400
    assert invalid.json()["fields"] == {"code": ["Unknown field."]}


def test_mfa_endpoints_need_authentication():
    for method, path in [("get", STATUS), ("post", TOTP), ("post", CONFIRM), ("post", BACKUP_CODES)]:
        response = getattr(APIClient(), method)(path)
        assert response.status_code == 401, path


def test_backup_codes_regenerate_and_totp_delete_with_a_full_token(plain_user, clock):
    client = bearer(obtain(plain_user.email).json()["token"])
    _, old = enrol_via_api(client)  # made before the factor: a full token
    clock.shift(30)

    regenerated = client.post(BACKUP_CODES)
    assert regenerated.status_code == 200
    assert set(regenerated.json()["backup_codes"]).isdisjoint(old)
    assert client.get(STATUS).json()["backup_codes_remaining"] == 10

    assert client.delete(TOTP).status_code == 204
    assert client.get(STATUS).json() == {
        "required": False,
        "enabled": False,
        "totp": False,
        "backup_codes_remaining": 0,
        "passkeys": 0,
    }
    assert client.post(BACKUP_CODES).json()["code"] == "mfa_not_enabled"


def test_unverified_session_cannot_change_existing_factors_or_mint_credentials(plain_user, user_a, clock):
    enrol_via_api(bearer(obtain(user_a.email).json()["token"]))
    session = APIClient()
    session.force_login(user_a)  # a session that has not passed the second factor

    responses = [
        session.post(TOTP),
        session.delete(TOTP),
        session.post(BACKUP_CODES),
        session.post("/api/v1/auth/tokens/", {"name": "sneaky"}, format="json"),
        session.post("/api/v1/app-passwords/", {"mailbox": "alice@alpha.test", "name": "x"}, format="json"),
    ]

    for response in responses:
        assert response.status_code == 403
        assert response.json()["code"] == "mfa_verification_required"
    assert TOTPDevice.objects.filter(user=user_a).count() == 1
    assert not ApiToken.objects.filter(user=user_a, name="sneaky").exists()
    assert not AppPassword.objects.exists()
    # A user without a factor who needs none is not held up.
    plain = APIClient()
    plain.force_login(plain_user)
    assert plain.post("/api/v1/auth/tokens/", {"name": "fine"}, format="json").status_code == 201


def test_session_api_of_an_admin_who_owes_a_factor_is_limited_to_enrolment(policy_on, admin_a):
    session = APIClient()
    session.force_login(admin_a)

    refused = session.get("/api/v1/domains/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "mfa_enrolment_required"
    assert session.get(STATUS).json()["required"] is True
    assert session.post(TOTP).status_code == 201


# --- The administrators' reset -----------------------------------------------------------------


def reset_url(user) -> str:
    return f"/api/v1/users/{user.pk}/mfa-reset/"


def test_user_cannot_reset_anothers_factors(user_a, plain_user, api_client_for, clock):
    enrol_via_api(bearer(obtain(plain_user.email).json()["token"]))

    response = api_client_for(user_a).post(reset_url(plain_user))

    assert response.status_code == 403
    assert mfa.mfa_enabled(plain_user) is True
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_RESET).exists()


def test_domain_admin_resets_own_domain_users_and_gets_404_for_others(
    admin_a, user_a, mailbox_b, api_client_for, clock
):
    enrol_via_api(bearer(obtain(user_a.email).json()["token"]))
    enrol_via_api(bearer(obtain(mailbox_b.owner.email).json()["token"]))
    client = api_client_for(admin_a)

    own = client.post(reset_url(user_a))
    other = client.post(reset_url(mailbox_b.owner))

    assert own.status_code == 200 and own.json() == {"removed": 2}
    assert other.status_code == 404
    assert mfa.mfa_enabled(user_a) is False and mfa.mfa_enabled(mailbox_b.owner) is True
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.MFA_RESET)
    assert (event.user, event.channel, event.detail["actor"]) == (user_a, "api", admin_a.email)


def test_superadmin_reset_of_self_is_refused(superadmin, api_client_for):
    response = api_client_for(superadmin).post(reset_url(superadmin))

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
