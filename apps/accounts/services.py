"""Accounts: users and roles, sign-in, API tokens, and the auth event record."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.accounts import lockout
from apps.accounts.exceptions import AuthenticationFailed, LockedOut
from apps.accounts.models import ApiToken, AuthEvent, User
from apps.alerts.services import emit
from apps.core.addresses import parse_address
from apps.core.audit import audit, audit_changes, snapshot
from apps.core.exceptions import ApplicationError, ConflictError, PermissionDeniedError
from apps.core.metrics import LOGINS

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "a3"  # noqa: S105 - a public marker, not a secret
ADMIN_ROLES = {User.Role.SUPERADMIN, User.Role.DOMAIN_ADMIN}


# --- Request context -------------------------------------------------------------------


@dataclass(frozen=True)
class ClientInfo:
    """Who is on the other end of a request, for the auth record and the alerts."""

    ip: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest | None) -> ClientInfo:
        if request is None:
            return cls()
        return cls(
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "").replace("\x00", "")[:300],
        )


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: the peer, or behind a trusted reverse proxy (A3_BEHIND_PROXY)
    the address that proxy appended to X-Forwarded-For.

    The ASGI server does not rewrite the peer from proxy headers, and every entry but the
    ones our own proxies appended is whatever the client sent; so only the entry at the
    proxy count from the right is trusted, the rule the API throttle follows (NUM_PROXIES).
    """
    peer = request.META.get("REMOTE_ADDR") or None
    proxies = settings.REST_FRAMEWORK.get("NUM_PROXIES") or 0
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        candidate = hops[-min(proxies, len(hops))]
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(candidate))
    return peer


# --- Users -----------------------------------------------------------------------------


def password_validate(password: str, *, user: User | None = None, field_name: str = "password") -> None:
    """Raise ApplicationError (code weak_password) unless the password passes the
    configured validators. Shared by web passwords and mail-protocol passwords."""
    try:
        password_validation.validate_password(password, user=user)
    except ValidationError as exc:
        raise ApplicationError(
            "The password is too weak.", code="weak_password", fields={field_name: exc.messages}
        ) from None


def _normalize_email(email: str) -> str:
    return parse_address(email, field="email").value


@transaction.atomic
def user_create(
    *,
    actor: User | None,
    email: str,
    password: str | None,
    role: str = User.Role.USER,
    full_name: str = "",
    validate_password: bool = True,
) -> User:
    """Create a user. Only superadmins may create users with an admin role.

    Raises ConflictError when the email is taken. Creating an admin emits an alert.
    """
    if role not in User.Role.values:
        raise ApplicationError(f"Unknown role '{role}'.", fields={"role": ["Unknown role."]})
    if actor is not None and role in ADMIN_ROLES and not actor.is_superadmin:
        raise PermissionDeniedError("Only a superadmin can create administrators.")
    email = _normalize_email(email)
    if User.objects.filter(email=email).exists():
        raise ConflictError(
            f"A user with email {email} already exists.",
            code="duplicate",
            fields={"email": ["A user with this email already exists."]},
        )
    user = User(email=email, role=role, full_name=full_name, is_superuser=role == User.Role.SUPERADMIN)
    if password:
        if validate_password:
            password_validate(password, user=user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    if role in ADMIN_ROLES:
        _alert_admin_granted(user=user, actor=actor)
    audit("user.create", actor=actor, target=user, changes=audit_changes({}, user))
    return user


def _alert_admin_granted(*, user: User, actor: User | None) -> None:
    by = actor.email if actor is not None else "the system"
    emit(
        "accounts.admin_created",
        "warning",
        f"{user.get_role_display()} {user.email} was created by {by}.",
        user_id=user.pk,
        email=user.email,
        role=user.role,
        actor=by,
    )


@transaction.atomic
def user_update(
    *,
    actor: User,
    user: User,
    full_name: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user's profile, role, state or password (superadmins, or users themselves
    for name and password). A superadmin cannot demote or disable themselves, so the
    installation is never left without one."""
    is_self = actor.pk == user.pk
    if not actor.is_superadmin and not is_self:
        raise PermissionDeniedError("Only a superadmin can change other users.")
    if (role is not None and role != user.role) or (is_active is not None and is_active != user.is_active):
        if not actor.is_superadmin:
            raise PermissionDeniedError("Only a superadmin can change roles or disable users.")
        if is_self:
            raise PermissionDeniedError("You cannot change your own role or disable yourself.")
    became_admin = False
    before = snapshot(user)
    if full_name is not None:
        user.full_name = full_name
    if role is not None and role != user.role:
        if role not in User.Role.values:
            raise ApplicationError(f"Unknown role '{role}'.", fields={"role": ["Unknown role."]})
        became_admin = (role in ADMIN_ROLES and user.role not in ADMIN_ROLES) or (
            role == User.Role.SUPERADMIN
        )
        user.role = role
        user.is_superuser = role == User.Role.SUPERADMIN
    if is_active is not None:
        user.is_active = is_active
    if password:
        password_validate(password, user=user)
        user.set_password(password)
    user.save()
    if password:
        # A new password is a fresh start: credentials derived from the old one go.
        revoked = ApiToken.objects.usable().filter(user=user).update(revoked_at=timezone.now())
        if revoked:
            auth_event_record(
                kind=AuthEvent.Kind.TOKEN_REVOKED,
                client=ClientInfo(),
                user=user,
                channel="api",
                reason="password changed",
                count=revoked,
            )
    if became_admin:
        _alert_admin_granted(user=user, actor=actor)
    audit("user.update", actor=actor, target=user, changes=audit_changes(before, user))
    return user


@transaction.atomic
def user_delete(*, actor: User, user: User) -> None:
    if not actor.is_superadmin:
        raise PermissionDeniedError("Only a superadmin can delete users.")
    if actor.pk == user.pk:
        raise PermissionDeniedError("You cannot delete yourself.")
    if user.mailboxes.exists():
        raise ConflictError(
            f"{user.email} still owns mailboxes; delete or reassign them first.",
            code="user_owns_mailboxes",
        )
    audit("user.delete", actor=actor, target=user)
    user.delete()


@dataclass(frozen=True)
class InitialSuperuser:
    user: User
    generated_password: str | None


@transaction.atomic
def superuser_ensure_initial() -> InitialSuperuser | None:
    """On first start, create the superadmin from DJANGO_SUPERUSER_EMAIL/PASSWORD, or
    admin@<A3_HOSTNAME> with a random password that the caller prints once. Does nothing
    when a superadmin exists."""
    if User.objects.filter(role=User.Role.SUPERADMIN, is_active=True).exists():
        return None

    email = settings.DJANGO_SUPERUSER_EMAIL or f"admin@{settings.A3_HOSTNAME}"
    password = settings.DJANGO_SUPERUSER_PASSWORD
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(18)
    existing = User.objects.filter(email=_normalize_email(email)).first()
    if existing is not None:
        existing.role = User.Role.SUPERADMIN
        existing.is_superuser = True
        existing.is_active = True
        existing.set_password(password)
        existing.save()
        user = existing
        _alert_admin_granted(user=user, actor=None)

    else:
        # The operator chose this password in the environment; don't second-guess it here.
        user = user_create(
            actor=None,
            email=email,
            password=password,
            role=User.Role.SUPERADMIN,
            validate_password=False,
        )
    return InitialSuperuser(user=user, generated_password=generated)


# --- Sign-in ---------------------------------------------------------------------------


def auth_event_record(
    *,
    kind: str,
    client: ClientInfo,
    user: User | None = None,
    email: str = "",
    channel: str = "web",
    **detail: object,
) -> AuthEvent:
    event = AuthEvent.objects.create(
        kind=kind,
        user=user,
        email=(email or (user.email if user else ""))[:254],
        ip=client.ip,
        user_agent=client.user_agent,
        channel=channel,
        detail=detail,
    )
    # The audit log carries every auth event too, so one chain holds the whole story. An
    # administrator acting on someone (MFA reset, lockout clear) is that event's actor.
    by = User.objects.filter(pk=detail["actor_id"]).first() if detail.get("actor_id") else user
    context = {key: value for key, value in detail.items() if key != "actor"}  # the actor's email
    audit(
        f"auth.{kind}",
        actor=by,
        target=("user", user and user.pk, event.email),
        client=client,
        channel=channel,
        **context,
    )
    return event


def login_name_normalize(typed: str) -> str:
    """The one spelling of a typed login name, used for the user lookup, the auth record and
    the lockout counters: stripped, lower-case, an address's domain as its IDNA A-label (as
    user_create stores it). A name that is not an address stays as typed, lower-cased, and
    matches no user."""
    # NUL never belongs in a login name, and PostgreSQL refuses to store it.
    name = (typed or "").replace("\x00", "").strip().lower()[:254]
    with contextlib.suppress(ApplicationError):
        name = _normalize_email(name)
    return name[:254]


def credentials_verify(
    *, request: HttpRequest | None, email: str, password: str, channel: str = "web"
) -> User:
    """Check an email and password through Django's authentication backends.

    Returns the user or raises AuthenticationFailed with one message for every cause, so
    that a failure never tells whether the account exists. A login name or address that is
    locked out (apps/accounts/lockout.py) gets LockedOut, a kind of AuthenticationFailed,
    without its password being checked, so that answer says nothing about the password.
    Failures are recorded, counted towards the lockout, and repeated ones raise an alert.
    This is the password step: later factors (OTP, passkeys) and SSO run after it and end
    in `login_complete`.
    """
    client = ClientInfo.from_request(request)
    typed = login_name_normalize(email)
    remaining = lockout.lockout_remaining(username=typed, ip=client.ip)
    if remaining:
        LOGINS.labels(channel=channel, outcome="locked").inc()
        _login_failure_record(client=client, email=typed, channel=channel, locked_out=True)
        raise LockedOut(retry_after=remaining)
    user = lockout.lockout_authenticate(
        username=typed,
        password=password or "",
        ip=client.ip,
        channel=channel,
        user_agent=client.user_agent,
    )
    if user is None or not user.is_active:
        LOGINS.labels(channel=channel, outcome="failed").inc()
        _login_failure_record(client=client, email=typed, channel=channel)
        raise AuthenticationFailed()
    lockout.lockout_record_success(username=typed, ip=client.ip, channel=channel)
    return user


def _login_failure_record(*, client: ClientInfo, email: str, channel: str, locked_out: bool = False) -> None:
    # Committed on its own: the caller's request fails, but the record of it must stay.
    with transaction.atomic():
        # Linked to the account when one matches, so its owner sees attempts on it; the
        # response to the client is the same either way.
        auth_event_record(
            kind=AuthEvent.Kind.LOGIN_FAILED,
            client=client,
            user=User.objects.filter(email=email).first(),
            email=email,
            channel=channel,
            **({"locked_out": True} if locked_out else {}),
        )

        window_start = timezone.now() - timedelta(seconds=settings.A3_LOGIN_FAILURE_WINDOW_SECONDS)
        threshold = settings.A3_LOGIN_FAILURE_ALERT_THRESHOLD
        match = Q(email=email)
        if client.ip:
            match |= Q(ip=client.ip)
        failures = AuthEvent.objects.filter(
            match, kind=AuthEvent.Kind.LOGIN_FAILED, created_at__gte=window_start
        )
        by_account = failures.filter(email=email).count()
        by_ip = failures.filter(ip=client.ip).count() if client.ip else 0
        # Alert when a counter reaches the threshold, and again at each further multiple,
        # so a long attack keeps showing up without one alert per attempt.
        for subject, count in (("account " + email, by_account), ("address " + str(client.ip), by_ip)):
            if count and count % threshold == 0:
                emit(
                    "accounts.login_failures",
                    "warning" if count < threshold * 4 else "error",
                    f"{count} failed sign-ins for {subject} in the last "
                    f"{settings.A3_LOGIN_FAILURE_WINDOW_SECONDS // 60} minutes.",
                    email=email,
                    ip=client.ip,
                    count=count,
                    channel=channel,
                )
                break


def login_complete(
    *, request: HttpRequest, user: User, method: str = "password", mfa_verified: bool = False
) -> None:
    """Start the web session once every required step has passed. `method` is how the
    user proved who they are ("password", "passkey" or "sso"); `mfa_verified` whether a
    second factor (or an IdP asserting one) was part of it."""
    from django.contrib.auth import login

    from apps.accounts.web_sessions import web_session_start

    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    web_session_start(request=request, user=user, method=method, mfa_verified=mfa_verified)
    LOGINS.labels(channel="web", outcome="ok").inc()
    client = ClientInfo.from_request(request)
    auth_event_record(
        kind=AuthEvent.Kind.LOGIN_OK,
        client=client,
        user=user,
        method=method,
        mfa=mfa_verified,
    )
    # Sign-in hooks of the apps above this one (A3_LOGIN_OBSERVERS: threats remembers the
    # networks a user signs in from), by dotted path so accounts never imports them.
    for path in settings.A3_LOGIN_OBSERVERS:
        import_string(path)(user_id=user.pk, ip=client.ip, channel="web")


def logout_complete(*, request: HttpRequest) -> None:
    from django.contrib.auth import logout

    user = request.user if request.user.is_authenticated else None
    if user is not None:
        auth_event_record(kind=AuthEvent.Kind.LOGOUT, client=ClientInfo.from_request(request), user=user)
    logout(request)


# --- API tokens ------------------------------------------------------------------------


def _token_hash(secret_token: str) -> str:
    return hashlib.sha256(secret_token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    secret: str  # the full bearer value: shown once, never stored


@transaction.atomic
def api_token_create(
    *,
    user: User,
    name: str,
    expires_in_days: int | None = None,
    client: ClientInfo | None = None,
    not_after: datetime | None = None,
) -> IssuedToken:
    """Issue a bearer token. Only its SHA-256 is stored; the caller shows the secret once.

    `expires_in_days=None` uses the configured default; 0 means no expiry. `not_after`
    caps the expiry (a token made with another token never outlives it).
    """
    name = (name or "").strip() or "API token"
    if len(name) > 100:
        raise ApplicationError("The token name is too long.", fields={"name": ["At most 100 characters."]})
    days = settings.A3_API_TOKEN_DEFAULT_DAYS if expires_in_days is None else expires_in_days
    if days < 0 or days > 3650:
        raise ApplicationError(
            "Expiry must be between 0 (never) and 3650 days.",
            fields={"expires_in_days": ["Must be between 0 and 3650."]},
        )
    prefix = secrets.token_hex(6)
    secret = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        key_hash=_token_hash(secret),
        expires_at=_capped_expiry(timezone.now() + timedelta(days=days) if days else None, not_after),
    )
    auth_event_record(
        kind=AuthEvent.Kind.TOKEN_CREATED,
        client=client or ClientInfo(),
        user=user,
        channel="api",
        token_id=token.pk,
        name=name,
    )
    return IssuedToken(token=token, secret=secret)


def _capped_expiry(expires_at: datetime | None, not_after: datetime | None) -> datetime | None:
    if not_after is None:
        return expires_at
    return not_after if expires_at is None else min(expires_at, not_after)


def api_token_authenticate(secret: str) -> tuple[User, ApiToken] | None:
    """Resolve a bearer value to its user, or None when unknown, expired or revoked."""
    parts = secret.split("_", 2)  # the random part may itself contain "_"
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    token = ApiToken.objects.usable().select_related("user").filter(prefix=parts[1]).first()
    if token is None or not hmac.compare_digest(token.key_hash, _token_hash(secret)):
        return None
    if not token.user.is_active:
        return None
    now = timezone.now()
    # Throttle the write: last-used precision of a minute is plenty.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token


@transaction.atomic
def api_token_revoke(*, actor: User, token: ApiToken, client: ClientInfo | None = None) -> ApiToken:
    """Revoke a token; revoking twice is harmless. The caller gets the token via a selector
    scoped to its owner."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        auth_event_record(
            kind=AuthEvent.Kind.TOKEN_REVOKED,
            client=client or ClientInfo(),
            user=actor,
            channel="api",
            token_id=token.pk,
        )
    return token


def api_tokens_purge_expired(*, older_than_days: int = 30) -> int:
    """Delete tokens that expired or were revoked more than the given days ago."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted, _ = ApiToken.objects.filter(Q(expires_at__lt=cutoff) | Q(revoked_at__lt=cutoff)).delete()
    return deleted
