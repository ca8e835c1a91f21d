"""Passkeys: WebAuthn credentials kept by django-otp-webauthn as django-otp devices.

The library runs the ceremonies (challenges, origin and RP ID checks, signature and sign
count); this module owns what A3Mailer adds around them: names, the auth record, the
MFA step's pending user, the lockout, and finishing a sign-in through `login_complete`.

A passkey is both factors at once: the authenticator holds the key and checked the user
(PIN or biometrics). So a passkey sign-in, with or without a password before it, starts a
session that counts as MFA-verified.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django_otp_webauthn import exceptions as webauthn_errors
from django_otp_webauthn.models import WebAuthnCredential
from django_otp_webauthn.utils import rewrite_exceptions

from apps.accounts import lockout, mfa
from apps.accounts.exceptions import LockedOut
from apps.accounts.models import AuthEvent, User
from apps.accounts.services import ClientInfo, auth_event_record, login_complete
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError

logger = logging.getLogger(__name__)

__all__ = [
    "NAME_MAX_LENGTH",
    "PENDING_NAME_SESSION_KEY",
    "PasskeySignIn",
    "passkey_ceremony_user",
    "passkey_get",
    "passkey_list",
    "passkey_name_clean",
    "passkey_name_pending_set",
    "passkey_register",
    "passkey_remove",
    "passkey_rename",
    "passkey_sign_in",
    "passkey_sign_in_check",
]

NAME_MAX_LENGTH = 64  # django_otp's Device.name
# The name chosen for the passkey being registered. The library's script posts only the
# authenticator's response, so the name is given one step earlier and kept in the session.
PENDING_NAME_SESSION_KEY = "a3_passkey_name"


# --- Reads -----------------------------------------------------------------------------


def passkey_list(*, user: User) -> QuerySet[WebAuthnCredential]:
    """The user's own passkeys, newest first. Passkeys are seen and managed by their owner
    only; an administrator's reset (mfa.mfa_reset) removes them with the other factors."""
    if not user.is_authenticated:
        return WebAuthnCredential.objects.none()
    return WebAuthnCredential.objects.filter(user=user).order_by("-created_at", "-pk")


def passkey_get(*, actor: User, passkey_id: int) -> WebAuthnCredential:
    """One of the actor's passkeys, by its row id; NotFoundError for anyone else's."""
    try:
        return passkey_list(user=actor).get(pk=passkey_id)
    except (WebAuthnCredential.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such passkey.") from None


# --- Names -----------------------------------------------------------------------------


def passkey_name_clean(name: str) -> str:
    """The name as stored: spaces collapsed, 1 to 64 characters, no control characters.
    Raises ApplicationError (code invalid_name) otherwise."""
    cleaned = " ".join((name or "").split())
    if not cleaned:
        raise ApplicationError(
            "Give the passkey a name.", code="invalid_name", fields={"name": ["Required."]}
        )
    if len(cleaned) > NAME_MAX_LENGTH:
        raise ApplicationError(
            "The passkey name is too long.",
            code="invalid_name",
            fields={"name": [f"At most {NAME_MAX_LENGTH} characters."]},
        )
    # Format and control characters (bidi overrides among them) could disguise a name in
    # the list and the auth log.
    if any(unicodedata.category(char) in {"Cc", "Cf"} for char in cleaned):
        raise ApplicationError(
            "The passkey name contains invisible characters.",
            code="invalid_name",
            fields={"name": ["Use visible characters only."]},
        )
    return cleaned


def _name_taken(*, user: User, name: str, exclude_id: int | None = None) -> bool:
    others = WebAuthnCredential.objects.filter(user=user, name__iexact=name)
    if exclude_id is not None:
        others = others.exclude(pk=exclude_id)
    return others.exists()


def _name_unique(*, user: User, name: str, exclude_id: int | None = None) -> str:
    name = passkey_name_clean(name)
    if _name_taken(user=user, name=name, exclude_id=exclude_id):
        raise ConflictError(
            f"You already have a passkey named “{name}”.",
            code="duplicate",
            fields={"name": ["You already have a passkey with this name."]},
        )
    return name


def _name_default(*, user: User, exclude_id: int | None = None) -> str:
    number = WebAuthnCredential.objects.filter(user=user).exclude(pk=exclude_id).count() + 1
    while _name_taken(user=user, name=f"Passkey {number}"):
        number += 1
    return f"Passkey {number}"


def passkey_name_pending_set(*, request: HttpRequest, user: User, name: str) -> str:
    """Check the name for the passkey the user is about to register and keep it in the
    session for passkey_register; a blank name leaves it to passkey_register ("Passkey N").
    Raises ApplicationError / ConflictError for a bad or duplicate name."""
    name = _name_unique(user=user, name=name) if name.strip() else ""
    request.session[PENDING_NAME_SESSION_KEY] = name
    return name


# --- Registration, rename, removal -----------------------------------------------------


@transaction.atomic
def passkey_register(*, request: HttpRequest, user: User, state: dict, data: dict) -> WebAuthnCredential:
    """Verify the authenticator's registration response against the session's challenge
    (the library's helper: origin, RP ID, attestation) and store the passkey under the
    name given beforehand (passkey_name_pending_set), or "Passkey N". Records MFA_ENROLLED.
    A session that had not passed a second factor counts as verified by the new passkey,
    as after enrolling an authenticator app: its owner just used it.

    Raises the library's OTPWebAuthnApiError subclasses for a response that does not
    verify; nothing is stored then.
    """
    helper = WebAuthnCredential.get_webauthn_helper(request=request)
    with rewrite_exceptions(logger=logger):
        passkey = helper.register_complete(user=user, state=state, data=data)
    wanted = request.session.get(PENDING_NAME_SESSION_KEY, "")
    try:
        # Checked when it was chosen; checked again because another tab may have used it since.
        passkey.name = _name_unique(user=user, name=wanted, exclude_id=passkey.pk)
    except ApplicationError:
        passkey.name = _name_default(user=user, exclude_id=passkey.pk)
    passkey.save(update_fields=["name"])
    request.session.pop(PENDING_NAME_SESSION_KEY, None)
    if not mfa.session_mfa_verified(request):
        mfa.mfa_session_verify(request=request, device=passkey)
    auth_event_record(
        kind=AuthEvent.Kind.MFA_ENROLLED,
        client=ClientInfo.from_request(request),
        user=user,
        factor="passkey",
        name=passkey.name,
    )
    return passkey


@transaction.atomic
def passkey_rename(*, user: User, passkey_id: int, name: str) -> WebAuthnCredential:
    """Rename one of the user's passkeys. NotFoundError for a passkey that is not theirs;
    ApplicationError / ConflictError for a bad or duplicate name."""
    passkey = passkey_get(actor=user, passkey_id=passkey_id)
    passkey.name = _name_unique(user=user, name=name, exclude_id=passkey.pk)
    passkey.save(update_fields=["name"])
    return passkey


@transaction.atomic
def passkey_remove(
    *, actor: User, user: User, passkey_id: int, client: ClientInfo | None = None
) -> WebAuthnCredential:
    """Delete one of the user's passkeys, by its owner only, and record MFA_REMOVED.

    NotFoundError for a passkey that is not the user's. Sessions stay signed in, but when
    it was the last second factor they no longer count as verified.
    """
    if actor.pk != user.pk:
        raise PermissionDeniedError(
            "Only the owner removes a passkey; an administrator resets second factors."
        )
    passkey = passkey_get(actor=user, passkey_id=passkey_id)
    name = passkey.name
    passkey.delete()
    from apps.accounts import mfa

    if not mfa.mfa_enabled(user):
        mfa.mfa_sessions_unverify(user)
    auth_event_record(
        kind=AuthEvent.Kind.MFA_REMOVED,
        client=client or ClientInfo(),
        user=user,
        factor="passkey",
        name=name,
    )
    return passkey


# --- Sign-in ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeySignIn:
    passkey: WebAuthnCredential
    user: User
    step: str  # "passwordless" | "mfa" | "reverify"
    next_url: str  # where the MFA step was headed; "" when it did not say


def passkey_ceremony_user(request: HttpRequest) -> User | None:
    """Whose passkey an authentication ceremony must use: the signed-in user (re-verifying
    the session), the user waiting at the MFA step (mfa.mfa_pending_get), or None for a
    passwordless sign-in, where the passkey itself says whose it is."""
    if request.user.is_authenticated:
        return request.user
    pending = mfa.mfa_pending_get(request)
    return pending.user if pending is not None else None


def _refuse_locked(*, user: User, client: ClientInfo) -> None:
    remaining = lockout.lockout_remaining(username=user.email, ip=client.ip)
    if remaining:
        auth_event_record(
            kind=AuthEvent.Kind.LOGIN_FAILED, client=client, user=user, method="passkey", locked_out=True
        )
        raise LockedOut(retry_after=remaining)


def passkey_sign_in_check(*, request: HttpRequest) -> User | None:
    """Before a challenge is issued: the ceremony's user (passkey_ceremony_user). LockedOut
    while the MFA step's user or the client's address is locked out, so no challenge is
    handed out for an account that cannot sign in now; ConflictError (no_passkey) when that
    user has no passkey."""
    user = passkey_ceremony_user(request)
    if user is None:
        return None
    if not request.user.is_authenticated:
        _refuse_locked(user=user, client=ClientInfo.from_request(request))
    if not WebAuthnCredential.objects.filter(user=user, confirmed=True).exists():
        # An empty list of allowed passkeys would have the browser offer any passkey at all.
        raise ConflictError("This account has no passkey.", code="no_passkey")
    return user


def passkey_sign_in(*, request: HttpRequest, state: dict, data: dict) -> PasskeySignIn:
    """Verify a passkey assertion against the session's challenge and finish what it was for:

    - passwordless: the passkey says whose it is; the session starts with method "passkey";
    - the MFA step: the passkey must belong to the user who passed the password step
      (CredentialUserMismatch otherwise), and mfa.mfa_login_complete starts the session;
    - a signed-in session: the passkey must be the user's; the session becomes verified.

    The session is then MFA-verified and django-otp knows the device
    (request.user.is_verified()). A locked-out login name or address gets LockedOut even
    with a valid passkey. A failed assertion raises the library's OTPWebAuthnApiError and is
    recorded (LOGIN_FAILED or MFA_FAILED), but never counted towards the lockout: it is not
    a guess at a secret, and counting it would let anyone lock an account out by presenting
    a passkey of their own.
    """
    client = ClientInfo.from_request(request)
    pending = None if request.user.is_authenticated else mfa.mfa_pending_get(request)
    if request.user.is_authenticated:
        step, expected = "reverify", request.user
    elif pending is not None:
        step, expected = "mfa", pending.user
    else:
        step, expected = "passwordless", None
    if step == "passwordless" and not state.get("require_user_verification"):
        # The challenge was issued for a second step (no user verification needed then)
        # that has since been abandoned: a passkey alone must prove its user (PIN, biometric).
        raise webauthn_errors.InvalidState()
    helper = WebAuthnCredential.get_webauthn_helper(request=request)
    try:
        with rewrite_exceptions(logger=logger):
            # Checks the challenge, origin, RP ID, signature, user verification when it was
            # required (passwordless), and that the passkey is `expected`'s.
            passkey = helper.authenticate_complete(user=expected, state=state, data=data)
        if not passkey.confirmed:
            raise webauthn_errors.CredentialDisabled()
        if not passkey.user.is_active:
            raise webauthn_errors.UserDisabled()
    except webauthn_errors.OTPWebAuthnApiError as exc:
        auth_event_record(
            kind=AuthEvent.Kind.LOGIN_FAILED if step == "passwordless" else AuthEvent.Kind.MFA_FAILED,
            client=client,
            user=expected,
            method="passkey",
            reason=exc.code,
        )
        raise
    user = passkey.user
    if step != "reverify":
        _refuse_locked(user=user, client=client)
    auth_event_record(
        kind=AuthEvent.Kind.MFA_OK, client=client, user=user, factor="passkey", name=passkey.name
    )
    if step == "reverify":
        mfa.mfa_session_verify(request=request, device=passkey)
    elif step == "mfa":
        mfa.mfa_login_complete(request=request, user=user, device=passkey)
    else:
        login_complete(request=request, user=user, method="passkey", mfa_verified=True)
        # After login(), which gave the session a new key: the device goes into the new one.
        mfa.mfa_session_verify(request=request, device=passkey)
        mfa.mfa_pending_clear(request)
    return PasskeySignIn(
        passkey=passkey, user=user, step=step, next_url=pending.next_url if pending is not None else ""
    )
