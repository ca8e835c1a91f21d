"""Dashboard passwords: changing one's own (knowing the current one), and resetting a
forgotten one with a signed link sent by mail through our own relay.

Either way the new password is a fresh start: API tokens are revoked (user_update does
that for every password change) and every other web session is signed out. A reset
signs out every session; a change keeps the browser that made it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.tokens import default_token_generator
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode

from apps.accounts import lockout, services, web_sessions
from apps.accounts.exceptions import AuthenticationFailed, LockedOut
from apps.accounts.models import AuthEvent, User
from apps.core.exceptions import ApplicationError

__all__ = [
    "RESET_REQUESTS_PER_ADDRESS",
    "RESET_REQUESTS_PER_IP",
    "ResetLinkInvalid",
    "ResetThrottled",
    "password_change",
    "password_reset_complete",
    "password_reset_link",
    "password_reset_request",
    "password_reset_user",
]

logger = logging.getLogger(__name__)

# Reset requests per hour: per typed address (mail to one person), and per client address
# (one client trying many accounts). Counted from the auth record, which every process
# shares; refused requests count too, so a client that keeps trying stays refused.
RESET_REQUESTS_PER_ADDRESS = 5
RESET_REQUESTS_PER_IP = 20
_RESET_WINDOW = timedelta(hours=1)


class ResetLinkInvalid(ApplicationError):
    """The reset link is malformed, tampered with, expired or already used; we never say which."""

    code = "reset_link_invalid"

    def __init__(self) -> None:
        super().__init__("This password reset link is invalid or has expired. Ask for a new one.")


class ResetThrottled(ApplicationError):
    """Too many reset requests for this address or from this client. Said the same way
    whether or not the account exists: unknown addresses are counted too."""

    code = "throttled"
    status_code = 429

    def __init__(self) -> None:
        super().__init__("Too many password reset requests. Try again in an hour.")


# --- Change ----------------------------------------------------------------------------


def password_change(
    *, request: HttpRequest, user: User, current_password: str, new_password: str
) -> web_sessions.RevokedCredentials:
    """Change the signed-in user's password. The current password is checked like a
    sign-in (lockout, failure record); raises LockedOut, or ApplicationError with code
    `wrong_password` or `weak_password`. On success the request's session stays signed
    in (under a new key), every other session is signed out, API tokens are revoked and
    PASSWORD_CHANGED is recorded."""
    client = services.ClientInfo.from_request(request)
    # The check runs before the transaction: the failure record and lockout counters of a
    # wrong current password must stay when the change is refused.
    try:
        verified = services.credentials_verify(request=request, email=user.email, password=current_password)
    except LockedOut:
        raise
    except AuthenticationFailed:
        verified = None
    if verified is None or verified.pk != user.pk:
        raise ApplicationError(
            "Your current password is not correct.",
            code="wrong_password",
            fields={"current_password": ["This is not your current password."]},
        )
    services.password_validate(new_password, user=user, field_name="new_password")
    old_key = request.session.session_key
    with transaction.atomic():
        services.user_update(actor=user, user=user, password=new_password)
        # Django rotates the session key here and re-signs the session with the new
        # password hash; without it this browser would be signed out too.
        update_session_auth_hash(request, user)
        web_sessions.web_session_rekey(request=request, old_key=old_key)
        revoked = web_sessions.web_sessions_revoke_all(
            actor=user,
            user=user,
            keep_current=request.session.session_key,
            revoke_tokens=False,  # user_update has revoked them
            client=client,
            reason="password changed",
        )
        services.auth_event_record(
            kind=AuthEvent.Kind.PASSWORD_CHANGED, client=client, user=user, sessions_revoked=revoked.sessions
        )
    return revoked


# --- Reset -----------------------------------------------------------------------------


def password_reset_link(*, user: User) -> str:
    """The absolute reset link for `user`, valid for PASSWORD_RESET_TIMEOUT seconds and
    until the password changes (Django's token covers the password hash and last login,
    so it works once). Built on A3_PUBLIC_URL, never on the request's Host header, which
    the client chooses."""
    path = reverse(
        "accounts:password-reset-confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    return f"{settings.A3_PUBLIC_URL}{path}"


def password_reset_request(*, email: str, client: services.ClientInfo) -> None:
    """Mail a reset link to the account with this email, if there is one that is active
    and has a password. Returns the same way whether or not it exists; raises
    ResetThrottled past the hourly limits (counted for unknown addresses too).

    Records PASSWORD_RESET_REQUESTED for every request. The mail goes through the relay:
    into the local mailbox when the address is one of ours, else the outbound queue."""
    typed = services.login_name_normalize(email)
    recent = AuthEvent.objects.filter(
        kind=AuthEvent.Kind.PASSWORD_RESET_REQUESTED, created_at__gte=timezone.now() - _RESET_WINDOW
    )
    throttled = recent.filter(email=typed).count() >= RESET_REQUESTS_PER_ADDRESS or bool(
        client.ip and recent.filter(ip=client.ip).count() >= RESET_REQUESTS_PER_IP
    )
    user = User.objects.filter(email=typed).first() if typed else None
    # Like Django's own reset: an account without a usable password signs in elsewhere
    # (SSO) or was disabled on purpose, and a reset must not open a second way in.
    eligible = user is not None and user.is_active and user.has_usable_password()
    services.auth_event_record(
        kind=AuthEvent.Kind.PASSWORD_RESET_REQUESTED,
        client=client,
        user=user,
        email=typed,
        sent=eligible and not throttled,
        throttled=throttled,
    )
    if throttled:
        raise ResetThrottled()
    if not eligible or not _reset_mail_reaches_owner(user):
        return
    _reset_mail_send(user=user, client=client)


def _reset_mail_reaches_owner(user: User) -> bool:
    """A reset link may only go where only the account's owner reads it. An address in one
    of our domains must be a mailbox the user owns: an alias or catch-all there is run by
    the domain's admins, who must not be able to take over a more powerful account."""
    from apps.mailboxes.models import Domain, Mailbox

    domain = user.email.rpartition("@")[2]
    if not Domain.objects.filter(name=domain).exists():
        return True
    return Mailbox.objects.filter(address=user.email, owner=user, is_active=True).exists()


def _reset_mail_send(*, user: User, client: services.ClientInfo) -> None:
    # The relay sits above accounts in the app order; this one call reaches up to it at
    # run time rather than growing a mail path of its own down here.
    from apps.relay.services import system_mail_send

    minutes = settings.PASSWORD_RESET_TIMEOUT // 60
    text = (
        f"Someone asked to reset the password of the A3Mailer account {user.email}"
        f" at {settings.A3_PUBLIC_URL}"
        f"{f' (from the address {client.ip})' if client.ip else ''}.\n\n"
        f"To choose a new password, open this link within {minutes} minutes:\n\n"
        f"{password_reset_link(user=user)}\n\n"
        "The link works once. Setting a new password signs you out everywhere and revokes\n"
        "your API tokens.\n\n"
        "If you did not ask for this, ignore this message: your password stays as it is.\n"
    )
    try:
        system_mail_send(to=user.email, subject="Reset your A3Mailer password", text=text)
    except ApplicationError:
        # An address the relay refuses must not show in the response, which says the
        # same for every request.
        logger.warning("password reset mail for user %s could not be sent", user.pk, exc_info=True)


def password_reset_user(*, uidb64: str, token: str) -> User:
    """The user a reset link is for; raises ResetLinkInvalid when the link is malformed,
    tampered with, expired, already used, or for an account that is disabled."""
    try:
        user = User.objects.filter(pk=int(urlsafe_base64_decode(uidb64).decode())).first()
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError):
        user = None
    if user is None or not user.is_active or not default_token_generator.check_token(user, token):
        raise ResetLinkInvalid()
    return user


def password_reset_complete(
    *, uidb64: str, token: str, new_password: str, client: services.ClientInfo
) -> User:
    """Set a new password through a reset link. Raises ResetLinkInvalid, or
    ApplicationError `weak_password`. Signs out every session of the account, revokes its
    API tokens, forgets its failed sign-ins from this client, records PASSWORD_RESET.
    Does not sign in: a second factor, where enrolled, still guards the account."""
    user = password_reset_user(uidb64=uidb64, token=token)
    services.password_validate(new_password, user=user, field_name="new_password")
    with transaction.atomic():
        # Two submissions of one link: the row lock makes the second see the new password
        # hash, which the token no longer matches.
        user = User.objects.select_for_update().get(pk=user.pk)
        if not default_token_generator.check_token(user, token):
            raise ResetLinkInvalid()
        services.user_update(actor=user, user=user, password=new_password)
        revoked = web_sessions.web_sessions_revoke_all(
            actor=user,
            user=user,
            keep_current=None,
            revoke_tokens=True,
            client=client,
            reason="password reset",
        )
        services.auth_event_record(
            kind=AuthEvent.Kind.PASSWORD_RESET, client=client, user=user, sessions_revoked=revoked.sessions
        )
    # Proving control of the mailbox is as good as a sign-in for the owner's own typos.
    lockout.lockout_record_success(username=user.email, ip=client.ip, channel="web")
    return user
