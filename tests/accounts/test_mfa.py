"""Second-factor services (apps/accounts/mfa.py): enrolment, verification, backup codes,
policy and the administrators' reset."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import time_machine
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_otp_webauthn.models import WebAuthnCredential

from apps.accounts import mfa, services
from apps.accounts.exceptions import LockedOut
from apps.accounts.models import ApiToken, AuthEvent, User
from apps.alerts.models import Alert
from apps.core.exceptions import ConflictError, PermissionDeniedError
from tests.factories import DomainAdminFactory, MailboxFactory, UserFactory

pytestmark = pytest.mark.django_db

# A TOTP step boundary (the epoch second is a multiple of 30), so steps are predictable.
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
CLIENT = services.ClientInfo(ip="198.51.100.7", user_agent="pytest")
POLICY_ON = ["superadmin", "domain_admin"]


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def enrol(user: User) -> tuple[pyotp.TOTP, list[str]]:
    """Set up an authenticator app for `user` as a client would; the confirming code's
    time step is then used up."""
    secret, _ = mfa.totp_begin(user=user)
    totp = pyotp.TOTP(secret)
    return totp, mfa.totp_confirm(user=user, otp=totp.now(), client=CLIENT)


def kinds(user: User) -> list[str]:
    return list(AuthEvent.objects.filter(user=user).order_by("pk").values_list("kind", flat=True))


# --- Enrolment -----------------------------------------------------------------------------


def test_totp_begin_creates_unconfirmed_device_and_restarting_replaces_it(plain_user):
    first_secret, _ = mfa.totp_begin(user=plain_user)
    secret, url = mfa.totp_begin(user=plain_user)

    devices = TOTPDevice.objects.filter(user=plain_user)
    assert devices.count() == 1
    assert devices.get().confirmed is False
    assert secret != first_secret
    assert mfa.mfa_enabled(plain_user) is False
    parsed = urlsplit(url)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    assert parse_qs(parsed.query)["secret"] == [secret]
    assert plain_user.email in parsed.path.replace("%40", "@")
    assert mfa.totp_pending(plain_user).secret == secret


def test_totp_confirm_enables_mfa_and_returns_ten_distinct_backup_codes(plain_user, clock):
    _, codes = enrol(plain_user)

    assert mfa.mfa_enabled(plain_user) is True
    assert TOTPDevice.objects.get(user=plain_user).confirmed is True
    assert len(codes) == 10 == len(set(codes))
    stored = set(StaticToken.objects.filter(device__user=plain_user).values_list("token", flat=True))
    assert stored == set(codes)
    assert kinds(plain_user) == [AuthEvent.Kind.MFA_ENROLLED, AuthEvent.Kind.BACKUP_CODES_GENERATED]
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.BACKUP_CODES_GENERATED).detail["count"] == 10
    # Nothing secret goes into the auth record.
    assert not any(code in str(AuthEvent.objects.values_list("detail", flat=True)) for code in codes)


def test_totp_confirm_with_wrong_code_raises_and_changes_nothing(plain_user, clock):
    secret, _ = mfa.totp_begin(user=plain_user)
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"

    with pytest.raises(mfa.InvalidOtp) as caught:
        mfa.totp_confirm(user=plain_user, otp=wrong)

    assert caught.value.code == "invalid_otp"
    assert mfa.mfa_enabled(plain_user) is False
    assert not StaticToken.objects.filter(device__user=plain_user).exists()
    assert kinds(plain_user) == []


def test_totp_confirm_without_begin_conflicts(plain_user):
    with pytest.raises(ConflictError) as caught:
        mfa.totp_confirm(user=plain_user, otp="123456")

    assert caught.value.code == "totp_not_started"


def test_totp_confirm_again_replaces_the_previous_app(plain_user, clock):
    old_totp, _ = enrol(plain_user)
    clock.shift(60)

    new_totp, _ = enrol(plain_user)
    clock.shift(60)

    assert TOTPDevice.objects.filter(user=plain_user).count() == 1
    assert mfa.mfa_verify(user=plain_user, otp=old_totp.now(), client=CLIENT) is None
    clock.shift(5)  # past django-otp's throttle after that failure
    assert mfa.mfa_verify(user=plain_user, otp=new_totp.now(), client=CLIENT) is not None


def test_totp_confirm_revokes_enrolment_scope_tokens(settings, admin_a, clock):
    settings.A3_MFA_REQUIRED_ROLES = POLICY_ON
    enrolment = mfa.api_token_obtain(
        user=admin_a, otp=None, name="cli", expires_in_days=None, client=CLIENT
    ).token
    full = services.api_token_create(user=admin_a, name="older full token").token

    enrol(admin_a)

    enrolment.refresh_from_db()
    full.refresh_from_db()
    assert enrolment.revoked_at is not None
    assert full.revoked_at is None


# --- Verification --------------------------------------------------------------------------


def test_mfa_verify_accepts_current_code_once_and_rejects_its_replay(plain_user, clock):
    totp, _ = enrol(plain_user)
    clock.shift(30)
    code = totp.now()

    device = mfa.mfa_verify(user=plain_user, otp=code, client=CLIENT)
    replayed = mfa.mfa_verify(user=plain_user, otp=code, client=CLIENT)

    assert isinstance(device, TOTPDevice)
    assert replayed is None
    assert kinds(plain_user)[-2:] == [AuthEvent.Kind.MFA_OK, AuthEvent.Kind.MFA_FAILED]


def test_mfa_verify_rejects_the_confirming_code(plain_user, clock):
    """The code that confirmed the app is used up; it cannot also sign in."""
    secret, _ = mfa.totp_begin(user=plain_user)
    code = pyotp.TOTP(secret).now()
    mfa.totp_confirm(user=plain_user, otp=code)

    assert mfa.mfa_verify(user=plain_user, otp=code, client=CLIENT) is None


def test_mfa_verify_rejects_an_expired_code(plain_user, clock):
    totp, _ = enrol(plain_user)
    clock.shift(30)
    code = totp.now()

    clock.shift(5 * 60)

    assert mfa.mfa_verify(user=plain_user, otp=code, client=CLIENT) is None
    event = AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_FAILED).get()
    assert (event.user, event.ip, event.channel) == (plain_user, CLIENT.ip, "web")


def test_mfa_verify_accepts_codes_typed_with_spaces(plain_user, clock):
    totp, codes = enrol(plain_user)
    clock.shift(30)
    code = totp.now()

    assert mfa.mfa_verify(user=plain_user, otp=f" {code[:3]} {code[3:]} ", client=CLIENT) is not None
    assert mfa.mfa_verify(user=plain_user, otp=codes[0].upper(), client=CLIENT) is not None


def test_mfa_verify_wrong_codes_lock_out_like_wrong_passwords(settings, plain_user, clock):
    settings.A3_LOCKOUT_FAILURES = settings.AXES_FAILURE_LIMIT = 3
    totp, _ = enrol(plain_user)
    clock.shift(30)

    for _ in range(3):
        assert mfa.mfa_verify(user=plain_user, otp="000000", client=CLIENT, channel="api") is None
        clock.shift(1)

    with pytest.raises(LockedOut):
        mfa.mfa_verify(user=plain_user, otp=totp.now(), client=CLIENT, channel="api")
    # The password step is locked too: the same policy for every door.
    with pytest.raises(LockedOut):
        services.credentials_verify(request=None, email=plain_user.email, password="whatever")
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_FAILED, channel="api").count() == 3
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT, email=plain_user.email).exists()


def test_backup_code_works_once(plain_user, clock):
    _, codes = enrol(plain_user)

    device = mfa.mfa_verify(user=plain_user, otp=codes[3], client=CLIENT)
    clock.shift(5)
    again = mfa.mfa_verify(user=plain_user, otp=codes[3], client=CLIENT)

    assert isinstance(device, StaticDevice)
    assert again is None
    assert mfa.backup_codes_remaining(plain_user) == 9
    used = AuthEvent.objects.get(kind=AuthEvent.Kind.BACKUP_CODE_USED)
    assert used.detail["remaining"] == 9
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.MFA_OK).detail["factor"] == "backup_code"


def test_backup_codes_regenerate_invalidates_the_old_ones(plain_user, clock):
    _, old = enrol(plain_user)

    new = mfa.backup_codes_regenerate(user=plain_user, client=CLIENT)

    assert set(new).isdisjoint(old) and len(new) == 10
    assert mfa.mfa_verify(user=plain_user, otp=old[0], client=CLIENT) is None
    clock.shift(5)
    assert mfa.mfa_verify(user=plain_user, otp=new[0], client=CLIENT) is not None
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.BACKUP_CODES_GENERATED).count() == 2


def test_backup_codes_regenerate_needs_a_factor(plain_user):
    with pytest.raises(ConflictError) as caught:
        mfa.backup_codes_regenerate(user=plain_user)

    assert caught.value.code == "mfa_not_enabled"
    assert not StaticDevice.objects.filter(user=plain_user).exists()


def test_totp_remove_takes_backup_codes_when_no_factor_is_left(plain_user, clock):
    enrol(plain_user)

    assert mfa.totp_remove(user=plain_user, actor=plain_user, client=CLIENT) is True

    assert mfa.mfa_enabled(plain_user) is False
    assert not StaticDevice.objects.filter(user=plain_user).exists()
    assert kinds(plain_user)[-1] == AuthEvent.Kind.MFA_REMOVED
    assert mfa.totp_remove(user=plain_user, actor=plain_user) is False


def test_totp_remove_is_for_the_owner_only(plain_user, superadmin, clock):
    enrol(plain_user)

    with pytest.raises(PermissionDeniedError):
        mfa.totp_remove(user=plain_user, actor=superadmin)

    assert mfa.mfa_enabled(plain_user) is True


def test_mfa_enabled_counts_passkeys_but_not_backup_codes_alone(plain_user):
    StaticDevice.objects.create(user=plain_user, name="orphan codes")
    assert mfa.mfa_enabled(plain_user) is False

    WebAuthnCredential.objects.create(
        user=plain_user, name="Laptop", credential_id=b"cred-1", public_key=b"key-1"
    )

    assert mfa.mfa_enabled(plain_user) is True
    status = mfa.mfa_status(plain_user)
    assert (status.enabled, status.totp, status.passkeys) == (True, False, 1)


# --- Policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (POLICY_ON, {"superadmin": True, "domain_admin": True, "user": False}),
        (["superadmin"], {"superadmin": True, "domain_admin": False, "user": False}),
        ([], {"superadmin": False, "domain_admin": False, "user": False}),
    ],
)
def test_mfa_required_follows_the_roles_setting(settings, roles, expected):
    settings.A3_MFA_REQUIRED_ROLES = roles
    users = {role: UserFactory(role=role) for role in expected}

    assert {role: mfa.mfa_required(user) for role, user in users.items()} == expected


def test_mfa_required_for_mailbox_users_of_a_domain_that_requires_it(settings, domain_a, domain_b):
    settings.A3_MFA_REQUIRED_ROLES = POLICY_ON
    domain_a.require_mfa = True
    domain_a.save(update_fields=["require_mfa"])
    in_strict = MailboxFactory(domain=domain_a).owner
    in_lax = MailboxFactory(domain=domain_b).owner
    without_mailbox = UserFactory()

    assert mfa.mfa_required(in_strict) is True
    assert mfa.mfa_required(in_lax) is False
    assert mfa.mfa_required(without_mailbox) is False


def test_mfa_required_never_for_a_disabled_user(settings):
    settings.A3_MFA_REQUIRED_ROLES = POLICY_ON
    assert mfa.mfa_required(DomainAdminFactory(is_active=False)) is False


def test_api_token_obtain_applies_the_policy(settings, admin_a, plain_user, clock):
    settings.A3_MFA_REQUIRED_ROLES = POLICY_ON

    enrolment = mfa.api_token_obtain(user=admin_a, otp=None, name="t", expires_in_days=0, client=CLIENT)
    ordinary = mfa.api_token_obtain(user=plain_user, otp=None, name="t", expires_in_days=None, client=CLIENT)

    assert enrolment.token.scope == ApiToken.objects.get(pk=enrolment.token.pk).scope == "mfa_enrolment"
    # An enrolment token lives an hour even when asked for one that never expires.
    assert (enrolment.token.expires_at - START).total_seconds() == 3600
    assert ordinary.token.scope == "full"


def test_api_token_obtain_needs_the_second_factor_once_enabled(plain_user, clock):
    totp, _ = enrol(plain_user)
    clock.shift(30)

    with pytest.raises(mfa.MfaRequired):
        mfa.api_token_obtain(user=plain_user, otp="", name="t", expires_in_days=None, client=CLIENT)
    with pytest.raises(mfa.MfaFailed):
        mfa.api_token_obtain(user=plain_user, otp="999999", name="t", expires_in_days=None, client=CLIENT)
    clock.shift(5)
    issued = mfa.api_token_obtain(
        user=plain_user, otp=totp.now(), name="t", expires_in_days=None, client=CLIENT
    )

    assert issued.token.scope == "full"
    assert ApiToken.objects.filter(user=plain_user).count() == 1


# --- Administrators' reset ---------------------------------------------------------------------


def test_superadmin_resets_every_factor_with_audit_and_alert(superadmin, plain_user, clock):
    enrol(plain_user)
    WebAuthnCredential.objects.create(user=plain_user, name="Key", credential_id=b"c", public_key=b"k")

    removed = mfa.mfa_reset(actor=superadmin, user=plain_user, client=CLIENT)

    assert removed == 3  # the app, the passkey and the backup-code device
    assert mfa.mfa_status(plain_user) == mfa.MfaStatus(
        required=False, enabled=False, totp=False, backup_codes_remaining=0, passkeys=0
    )
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.MFA_RESET)
    assert event.user == plain_user
    assert event.detail == {"actor_id": superadmin.pk, "actor": superadmin.email, "devices": 3}
    alert = Alert.objects.get(kind="accounts.mfa_reset")
    assert plain_user.email in alert.message and superadmin.email in alert.message


def test_domain_admin_resets_mailbox_users_of_own_domains_only(admin_a, user_a, mailbox_b, clock):
    enrol(user_a)
    other = mailbox_b.owner
    enrol(other)

    assert mfa.mfa_reset(actor=admin_a, user=user_a) == 2
    with pytest.raises(PermissionDeniedError):
        mfa.mfa_reset(actor=admin_a, user=other)

    assert mfa.mfa_enabled(other) is True
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.MFA_RESET)
    assert (event.user, event.detail["actor"]) == (user_a, admin_a.email)


def test_domain_admin_cannot_reset_admins(admin_a, admin_b, superadmin, domain_a):
    MailboxFactory(domain=domain_a, owner=admin_b)  # owns a mailbox there, but is an admin

    for target in (admin_b, superadmin):
        assert mfa.mfa_reset_allowed(actor=admin_a, user=target) is False
        with pytest.raises(PermissionDeniedError):
            mfa.mfa_reset(actor=admin_a, user=target)
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.MFA_RESET).exists()


def test_nobody_resets_their_own_factors_and_users_reset_nobody(superadmin, plain_user, user_a, clock):
    enrol(superadmin)

    with pytest.raises(PermissionDeniedError):
        mfa.mfa_reset(actor=superadmin, user=superadmin)
    with pytest.raises(PermissionDeniedError):
        mfa.mfa_reset(actor=plain_user, user=user_a)

    assert mfa.mfa_enabled(superadmin) is True
