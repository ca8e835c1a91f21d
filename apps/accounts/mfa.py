"""Second factors: TOTP authenticator apps and single-use backup codes (django-otp), the
policy of who must have one, the second step of a web sign-in, and the token rules.

django-otp owns the factor tables (TOTPDevice; StaticDevice with its StaticToken rows for
backup codes); passkeys are django-otp-webauthn's WebAuthnCredential devices, registered
elsewhere but counted here as a factor. Only this module writes TOTP and backup-code rows.

A web session is "verified" when django-otp's login() put the device that verified it in
the session (request.user.is_verified()), or when its UserSession row says a second factor
was part of the sign-in (an identity provider trusted to assert one).
"""

from __future__ import annotations

import time
from base64 import b32encode
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import django_otp
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp import device_classes
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import lockout, services
from apps.accounts.exceptions import LockedOut
from apps.accounts.models import ApiToken, AuthEvent, User, UserSession
from apps.accounts.web_sessions import web_session_mark_verified
from apps.alerts.services import emit
from apps.core.exceptions import ApplicationError, ConflictError, PermissionDeniedError

FULL_SCOPE = "full"
ENROLMENT_SCOPE = "mfa_enrolment"
BACKUP_CODE_COUNT = 10
TOTP_DEVICE_NAME = "Authenticator app"
BACKUP_DEVICE_NAME = "Backup codes"
# The password step of a web sign-in is good for this long while the second step waits.
PENDING_SESSION_KEY = "a3_pending_mfa"
PENDING_SECONDS = 300
# A token that can only set up a second factor has no business living long.
ENROLMENT_TOKEN_LIFETIME = timedelta(hours=1)
# API views (URL names in the "api" namespace) an enrolment-scope token may call.
ENROLMENT_SCOPE_VIEWS = frozenset({"mfa-status", "mfa-totp", "mfa-totp-confirm", "mfa-backup-codes"})
ENROLMENT_SCOPE_READ_VIEWS = frozenset({"me"})


# --- Errors ----------------------------------------------------------------------------


class MfaRequired(ApplicationError):
    """The password was right; this account also needs a second factor (`otp`)."""

    code = "mfa_required"
    status_code = 401

    def __init__(self) -> None:
        super().__init__("A one-time code from your authenticator app or a backup code is required.")


class MfaFailed(ApplicationError):
    """The second factor given at sign-in was wrong, already used or expired."""

    code = "invalid_otp"
    status_code = 401

    def __init__(self) -> None:
        super().__init__("Invalid one-time code.")


class InvalidOtp(ApplicationError):
    """The code that should confirm a new authenticator app does not match it."""

    code = "invalid_otp"
    status_code = 400

    def __init__(self) -> None:
        super().__init__("That code does not match; check the app's clock and try the current code.")


class MfaVerificationRequired(PermissionDeniedError):
    """The request's session has not passed the second factor its account needs."""

    code = "mfa_verification_required"

    def __init__(self) -> None:
        super().__init__("Verify your second factor in this session first.")


# --- Policy and state ------------------------------------------------------------------


def mfa_required(user: User) -> bool:
    """Whether policy demands a second factor of this user: their role is listed in
    A3_MFA_REQUIRED_ROLES, or they own a mailbox in a domain with require_mfa."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.role in settings.A3_MFA_REQUIRED_ROLES:
        return True
    return user.mailboxes.filter(domain__require_mfa=True).exists()


def _factor_models() -> list[type[Device]]:
    # Backup codes only stand in for a factor; alone they are not one.
    return [model for model in device_classes() if not issubclass(model, StaticDevice)]


def mfa_enabled(user: User) -> bool:
    """Whether the user has a second factor: a confirmed TOTP device or a passkey (any
    confirmed django-otp device but backup codes)."""
    if not user.is_authenticated:
        return False
    return any(model.objects.devices_for_user(user, confirmed=True).exists() for model in _factor_models())


def totp_device(user: User) -> TOTPDevice | None:
    """The user's confirmed authenticator app, if any."""
    return TOTPDevice.objects.devices_for_user(user, confirmed=True).order_by("-pk").first()


def backup_codes_remaining(user: User) -> int:
    return StaticToken.objects.filter(device__user=user).count()


@dataclass(frozen=True)
class MfaStatus:
    required: bool
    enabled: bool
    totp: bool
    backup_codes_remaining: int
    passkeys: int


def mfa_status(user: User) -> MfaStatus:
    """What the user has set up, for the security page and GET /api/v1/auth/mfa/."""
    passkeys = sum(
        model.objects.devices_for_user(user, confirmed=True).count()
        for model in _factor_models()
        if not issubclass(model, TOTPDevice)
    )
    has_totp = totp_device(user) is not None
    return MfaStatus(
        required=mfa_required(user),
        enabled=has_totp or passkeys > 0,
        totp=has_totp,
        backup_codes_remaining=backup_codes_remaining(user),
        passkeys=passkeys,
    )


# --- Enrolment -------------------------------------------------------------------------


class TotpEnrolment(NamedTuple):
    secret: str  # base32, what authenticator apps take when typed in
    otpauth_url: str  # the same, as the otpauth:// URI a QR code carries


def _enrolment(device: TOTPDevice) -> TotpEnrolment:
    return TotpEnrolment(secret=b32encode(device.bin_key).decode("ascii"), otpauth_url=device.config_url)


@transaction.atomic
def totp_begin(*, user: User) -> TotpEnrolment:
    """Start adding an authenticator app: a new unconfirmed TOTP device, replacing any
    earlier unconfirmed one. Nothing changes for sign-in until totp_confirm."""
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    device = TOTPDevice.objects.create(user=user, name=TOTP_DEVICE_NAME, confirmed=False)
    return _enrolment(device)


def totp_pending(user: User) -> TotpEnrolment | None:
    """The enrolment started by totp_begin and not yet confirmed, if any."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()
    return _enrolment(device) if device is not None else None


@transaction.atomic
def totp_confirm(*, user: User, otp: str, client: services.ClientInfo | None = None) -> list[str]:
    """Confirm the pending authenticator app with its current code and return a fresh set
    of backup codes (shown once; only django-otp's StaticToken rows keep them).

    The confirmed device replaces an earlier authenticator app. Enrolment-scope tokens are
    revoked: they came from a password alone, and from now on that is not enough.
    Raises ConflictError (totp_not_started) without a pending device, InvalidOtp for a
    wrong code (which changes nothing).
    """
    client = client or services.ClientInfo()
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("-pk").first()
    if device is None:
        raise ConflictError("Start setting up an authenticator app first.", code="totp_not_started")
    # verify_token records the time step it matched (last_t), so this very code cannot
    # then be replayed to sign in.
    if not device.verify_token(_otp_normalize(otp)):
        raise InvalidOtp()
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    replaced = TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()[0]
    codes = _backup_codes_replace(user)
    revoked = (
        ApiToken.objects.usable()
        .filter(user=user)
        .exclude(scope=FULL_SCOPE)
        .update(revoked_at=timezone.now())
    )
    services.auth_event_record(
        kind=AuthEvent.Kind.MFA_ENROLLED,
        client=client,
        user=user,
        factor="totp",
        replaced=bool(replaced),
        enrolment_tokens_revoked=revoked,
    )
    services.auth_event_record(
        kind=AuthEvent.Kind.BACKUP_CODES_GENERATED, client=client, user=user, count=len(codes)
    )
    return codes


@transaction.atomic
def backup_codes_regenerate(*, user: User, client: services.ClientInfo | None = None) -> list[str]:
    """Replace the user's backup codes with BACKUP_CODE_COUNT new ones; the old ones stop
    working. Raises ConflictError (mfa_not_enabled) when there is no factor to back up."""
    if not mfa_enabled(user):
        raise ConflictError("Set up a second factor before backup codes.", code="mfa_not_enabled")
    codes = _backup_codes_replace(user)
    services.auth_event_record(
        kind=AuthEvent.Kind.BACKUP_CODES_GENERATED,
        client=client or services.ClientInfo(),
        user=user,
        count=len(codes),
    )
    return codes


def _backup_codes_replace(user: User) -> list[str]:
    device = StaticDevice.objects.filter(user=user).order_by("pk").first()
    if device is None:
        device = StaticDevice.objects.create(user=user, name=BACKUP_DEVICE_NAME, confirmed=True)
    StaticDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
    device.token_set.all().delete()
    device.throttle_reset()
    codes: list[str] = []
    while len(codes) < BACKUP_CODE_COUNT:
        code = StaticToken.random_token()  # 8 base32 characters: 40 random bits
        if code not in codes:
            codes.append(code)
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return codes


@transaction.atomic
def totp_remove(*, user: User, actor: User, client: services.ClientInfo | None = None) -> bool:
    """Remove the user's own authenticator app (others' go through mfa_reset). Backup codes
    go too when no other factor is left. Returns whether there was one to remove."""
    if actor.pk != user.pk:
        raise PermissionDeniedError("Only the account's owner can remove its authenticator app.")
    removed = TOTPDevice.objects.filter(user=user).delete()[0]
    if not removed:
        return False
    if not mfa_enabled(user):
        StaticDevice.objects.filter(user=user).delete()
        mfa_sessions_unverify(user)
    services.auth_event_record(
        kind=AuthEvent.Kind.MFA_REMOVED, client=client or services.ClientInfo(), user=user, factor="totp"
    )
    return True


# --- Verification ----------------------------------------------------------------------


def _otp_normalize(otp: str | None) -> str:
    # People copy codes with spaces ("123 456") or type backup codes in capitals.
    return "".join((otp or "").split()).replace("-", "").lower()[:16]


def mfa_verify(*, user: User, otp: str, client: services.ClientInfo, channel: str = "web") -> Device | None:
    """Check a second factor: a current TOTP code (each time step is accepted once; django-otp
    keeps the last one used in last_t) or an unused backup code, which is consumed.

    Returns the device that accepted it, or None. Every failure is recorded (MFA_FAILED, with
    the address) and counted towards the lockout of the account, so guessing codes locks out
    like guessing passwords; a locked-out account or address gets LockedOut and nothing is
    checked.
    django-otp's own per-device throttle (1, 2, 4 … seconds after each failure, until a
    success) also holds when a correct password clears the lockout counters in between.
    """
    remaining = lockout.lockout_remaining(username=user.email, ip=client.ip)
    if remaining:
        raise LockedOut(retry_after=remaining)
    code = _otp_normalize(otp)
    device: Device | None = None
    if code:
        # A code of digits only is a TOTP code; backup codes always contain letters. Trying
        # one kind only keeps a typo from throttling the other device as well.
        model: type[Device] = TOTPDevice if code.isdigit() else StaticDevice
        with transaction.atomic():
            # Locked rows: two requests with the same code cannot both pass.
            for candidate in model.objects.devices_for_user(user, confirmed=True).select_for_update():
                if candidate.verify_token(code):
                    device = candidate
                    break
    if device is None:
        services.auth_event_record(kind=AuthEvent.Kind.MFA_FAILED, client=client, user=user, channel=channel)
        # Counted against the account alone. The password step before every attempt clears
        # this name's failures from this address (its owner's typos), which would wipe a
        # counter kept per name and address and let password + code guesses go on for ever.
        lockout.lockout_record_failure(
            username=user.email, ip=None, channel=channel, user_agent=client.user_agent
        )
        return None
    lockout.lockout_record_success(username=user.email, ip=client.ip, channel=channel)
    if isinstance(device, StaticDevice):
        services.auth_event_record(
            kind=AuthEvent.Kind.BACKUP_CODE_USED,
            client=client,
            user=user,
            channel=channel,
            remaining=device.token_set.count(),
        )
    services.auth_event_record(
        kind=AuthEvent.Kind.MFA_OK,
        client=client,
        user=user,
        channel=channel,
        factor="backup_code" if isinstance(device, StaticDevice) else "totp",
    )
    return device


# --- Administrators ----------------------------------------------------------------------


def mfa_sessions_unverify(user: User) -> None:
    """The user's sessions verified with factors that are gone no longer count as verified
    (a stolen phone must not leave a verified session behind)."""
    from apps.accounts.models import UserSession

    UserSession.objects.filter(user=user).update(mfa_verified=False)


def mfa_reset_allowed(*, actor: User, user: User) -> bool:
    """Superadmins may reset anyone else's factors; domain admins those of mailbox users
    who own a mailbox in a domain they administer."""
    if not actor.is_authenticated or actor.pk == user.pk:
        return False
    if actor.is_superadmin:
        return True
    # Every mailbox of the user must be in the admin's domains: an admin of one domain must
    # not weaken an account that also holds mail elsewhere.
    return (
        actor.is_domain_admin
        and user.role == User.Role.USER
        and user.mailboxes.exists()
        and not user.mailboxes.exclude(domain__admins=actor).exists()
    )


@transaction.atomic
def mfa_reset(
    *, actor: User, user: User, client: services.ClientInfo | None = None, channel: str = "web"
) -> int:
    """Remove every second factor of another user (TOTP, backup codes, passkeys), e.g. after
    a lost phone. Their sessions verified with a removed device stop counting as verified.
    Records MFA_RESET naming the actor and raises an alert. Returns how many devices went.
    Raises PermissionDeniedError outside mfa_reset_allowed."""
    if not mfa_reset_allowed(actor=actor, user=user):
        if actor.pk == user.pk:
            raise PermissionDeniedError("Manage your own second factors on your security page.")
        raise PermissionDeniedError("You may not reset this user's second factors.")
    removed = 0
    for model in device_classes():
        devices = model.objects.devices_for_user(user, confirmed=None)
        removed += devices.count()
        devices.delete()
    mfa_sessions_unverify(user)
    services.auth_event_record(
        kind=AuthEvent.Kind.MFA_RESET,
        client=client or services.ClientInfo(),
        user=user,
        channel=channel,
        actor_id=actor.pk,
        actor=actor.email,
        devices=removed,
    )
    emit(
        "accounts.mfa_reset",
        "warning",
        f"Second factors of {user.email} were reset by {actor.email}.",
        user_id=user.pk,
        email=user.email,
        actor=actor.email,
        devices=removed,
    )
    return removed


# --- API tokens --------------------------------------------------------------------------


def api_token_obtain(
    *,
    user: User,
    otp: str | None,
    name: str,
    expires_in_days: int | None,
    client: services.ClientInfo,
) -> services.IssuedToken:
    """Issue a token to a user whose password was just verified (credentials_verify).

    With a second factor, `otp` must verify (MfaRequired when missing, MfaFailed when wrong,
    LockedOut after too many). Without one where policy requires one, the token has the
    enrolment scope: it reaches only the MFA endpoints and GET /api/v1/auth/me/, for an
    hour, so that an API-only user can enrol.
    """
    if mfa_enabled(user):
        if not (otp or "").strip():
            raise MfaRequired()
        if mfa_verify(user=user, otp=otp or "", client=client, channel="api") is None:
            raise MfaFailed()
        return services.api_token_create(user=user, name=name, expires_in_days=expires_in_days, client=client)
    if mfa_required(user):
        return _enrolment_token_create(user=user, name=name, client=client)
    return services.api_token_create(user=user, name=name, expires_in_days=expires_in_days, client=client)


@transaction.atomic
def _enrolment_token_create(*, user: User, name: str, client: services.ClientInfo) -> services.IssuedToken:
    issued = services.api_token_create(
        user=user, name=name, client=client, not_after=timezone.now() + ENROLMENT_TOKEN_LIFETIME
    )
    # Same transaction as the insert, and the secret is not out yet: never usable as full.
    ApiToken.objects.filter(pk=issued.token.pk).update(scope=ENROLMENT_SCOPE)
    issued.token.scope = ENROLMENT_SCOPE
    return issued


def enrolment_scope_allows(*, url_name: str | None, namespaces: list[str], method: str) -> bool:
    """Whether an enrolment-scope token may call this API view."""
    if "api" not in namespaces or not url_name:
        return False
    if url_name in ENROLMENT_SCOPE_VIEWS:
        return True
    return url_name in ENROLMENT_SCOPE_READ_VIEWS and method in ("GET", "HEAD", "OPTIONS")


# --- Requests: what a session or token has proved --------------------------------------


def session_mfa_verified(request: HttpRequest) -> bool:
    """Whether this web session passed a second factor (see the module docstring)."""
    user = request.user
    if not user.is_authenticated:
        return False
    is_verified = getattr(user, "is_verified", None)  # installed by django-otp's middleware
    if callable(is_verified) and is_verified():
        return True
    key = request.session.session_key
    return (
        bool(key) and UserSession.objects.filter(session_key=key, user_id=user.pk, mfa_verified=True).exists()
    )


def _request_token(request: HttpRequest) -> ApiToken | None:
    auth = getattr(request, "auth", None)  # DRF requests only
    return auth if isinstance(auth, ApiToken) else None


def mfa_session_ok(request: HttpRequest) -> bool:
    """Whether this request may create credentials (API tokens, app passwords): a full-scope
    token, or a session that passed the second factor its account has or needs."""
    user = request.user
    if not user.is_authenticated:
        return False
    token = _request_token(request)
    if token is not None:
        return token.scope == FULL_SCOPE
    if not (mfa_enabled(user) or mfa_required(user)):
        return True
    return session_mfa_verified(request)


def mfa_session_require(request: HttpRequest) -> None:
    """Raise MfaVerificationRequired unless mfa_session_ok(request)."""
    if not mfa_session_ok(request):
        raise MfaVerificationRequired()


def mfa_manage_ok(request: HttpRequest) -> bool:
    """Whether this request may change the caller's own second factors. Adding the first
    one: any signed-in session or token, the enrolment kind included. Once there is one:
    only a session verified in this sign-in or a full-scope token, so that a password
    alone never replaces or removes a factor."""
    user = request.user
    if not user.is_authenticated:
        return False
    if not mfa_enabled(user):
        return True
    token = _request_token(request)
    if token is not None:
        return token.scope == FULL_SCOPE
    return session_mfa_verified(request)


def mfa_session_verify(*, request: HttpRequest, device: Device) -> None:
    """Mark the signed-in session as verified by `device` (django-otp and UserSession)."""
    django_otp.login(request, device)
    web_session_mark_verified(request=request)


# --- Web sign-in: the pending second step ------------------------------------------------


@dataclass(frozen=True)
class PendingSignIn:
    user: User
    next_url: str
    method: str


def mfa_pending_start(*, request: HttpRequest, user: User, next_url: str, method: str = "password") -> None:
    """Remember, in the not yet signed-in session, that `user` passed the first step
    (`method`: "password", or "sso" for an identity provider not trusted for MFA).
    `next_url` must already be checked as safe."""
    request.session[PENDING_SESSION_KEY] = {
        "user_id": user.pk,
        "at": time.time(),
        "next": next_url,
        "method": method,
    }


def mfa_pending_get(request: HttpRequest) -> PendingSignIn | None:
    """The sign-in waiting for its second step, or None (none, expired, or the account was
    disabled meanwhile; those are forgotten)."""
    data = request.session.get(PENDING_SESSION_KEY)
    if not isinstance(data, dict):
        return None
    age = time.time() - float(data.get("at", 0))
    user = None
    if 0 <= age <= PENDING_SECONDS:
        user = User.objects.filter(pk=data.get("user_id"), is_active=True).first()
    if user is None:
        mfa_pending_clear(request)
        return None
    return PendingSignIn(
        user=user, next_url=str(data.get("next") or ""), method=str(data.get("method") or "password")
    )


def mfa_pending_clear(request: HttpRequest) -> None:
    request.session.pop(PENDING_SESSION_KEY, None)


def mfa_login_complete(*, request: HttpRequest, user: User, device: Device, method: str = "password") -> None:
    """Finish a sign-in whose second step `device` verified: start the session, then mark
    it verified so that request.user.is_verified() holds from the next request on."""
    mfa_pending_clear(request)
    services.login_complete(request=request, user=user, method=method, mfa_verified=True)
    mfa_session_verify(request=request, device=device)
