"""Single sign-on rules: identity providers (create, change, delete, sync from the
environment) and what an identity provider's word is worth here: which account it signs in
to, whether one is created, which role it gets and whether it counts as a second factor.

Trust rules (docs/authentication.md, "Single sign-on"):
- An identity already linked to an account signs in to that account.
- Otherwise it is linked to the account with the same email address, but only when the
  provider vouches for the address: OpenID Connect `email_verified` true (Microsoft Entra:
  `xms_edov`), or a SAML provider, whose attributes are trusted by configuring it.
- Otherwise an account is created only when the provider allows just-in-time provisioning
  and the address is in one of its domains; else the sign-in is refused with one message.
- Group mapping may promote or demote; a superadmin is only demoted by a group mapped
  explicitly (never by the "*" fallback), and never when they are the last one.
- The sign-in counts as a second factor only for a provider trusted for MFA, and only when
  the provider asserted one (`amr`/`acr`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from django.conf import settings
from django.core.validators import slug_re
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from social_django.models import Nonce

from apps.accounts import services as account_services
from apps.accounts.models import AuthEvent, SsoProvider, User
from apps.accounts.sso.exceptions import SamlAssertionReplayed, SsoRefused
from apps.alerts.services import emit
from apps.core.addresses import AddressError, normalize_domain
from apps.core.audit import audit, audit_changes, snapshot
from apps.core.exceptions import ApplicationError, ConflictError, PermissionDeniedError
from apps.core.secrets import secret_encrypt

logger = logging.getLogger(__name__)

ENV_PROVIDER_SLUG = "oidc"
GOOGLE_ISSUER = "https://accounts.google.com"
_MICROSOFT_ISSUER = re.compile(r"^https://login\.microsoftonline\.com/(?P<tenant>[^/]+)/v2\.0$")
# Entra's shared endpoints issue tokens whose issuer names each user's own tenant, so they
# cannot be checked against one issuer: a provider is one tenant.
_MICROSOFT_SHARED_TENANTS = {"common", "organizations", "consumers"}
# The role_mapping key that applies when none of a user's groups is mapped.
DEFAULT_ROLE_KEY = "*"
ROLE_RANK = {User.Role.USER: 0, User.Role.DOMAIN_ADMIN: 1, User.Role.SUPERADMIN: 2}
NO_ACCOUNT_MESSAGE = "No account for this identity."
EDITABLE_FIELDS = frozenset(
    {
        "slug",
        "name",
        "kind",
        "enabled",
        "issuer",
        "client_id",
        "client_secret",
        "scopes",
        "idp_entity_id",
        "idp_sso_url",
        "idp_x509_cert",
        "jit_provisioning",
        "jit_domains",
        "groups_claim",
        "role_mapping",
        "trust_idp_mfa",
    }
)
OIDC_KINDS = {SsoProvider.Kind.OIDC, SsoProvider.Kind.GOOGLE, SsoProvider.Kind.MICROSOFT}


def backend_name(provider: SsoProvider) -> str:
    """The name social-auth stores with each linked identity (UserSocialAuth.provider).
    Built on the primary key, so that renaming a provider's slug keeps its links."""
    return f"sso-{provider.pk}"


# --- Providers -------------------------------------------------------------------------


def _require_superadmin(actor: User) -> None:
    if not actor.is_superadmin:
        raise PermissionDeniedError("Only a superadmin can manage identity providers.")


@transaction.atomic
def sso_provider_create(*, actor: User | None, values: Mapping[str, object]) -> SsoProvider:
    """Add an identity provider. `values` holds SsoProvider fields (EDITABLE_FIELDS); the
    client secret is stored encrypted. Raises ApplicationError (with fields) for settings
    that cannot work, ConflictError for a slug in use. `actor` None: the environment sync."""
    if actor is not None:
        _require_superadmin(actor)
    provider = SsoProvider()
    _provider_apply(provider, values)
    _provider_clean(provider)
    provider.save()
    _provider_alert(provider, actor=actor, verb="added")
    audit("sso_provider.create", actor=actor, target=provider, changes=audit_changes({}, provider))
    return provider


@transaction.atomic
def sso_provider_update(
    *, actor: User | None, provider: SsoProvider, values: Mapping[str, object]
) -> SsoProvider:
    """Change the given fields of a provider. A `client_secret` of "" removes the secret;
    leaving the key out keeps it. Same errors as sso_provider_create."""
    if actor is not None:
        _require_superadmin(actor)
    before = snapshot(provider)
    _provider_apply(provider, values)
    _provider_clean(provider)
    provider.save()
    _provider_alert(provider, actor=actor, verb="changed")
    audit("sso_provider.update", actor=actor, target=provider, changes=audit_changes(before, provider))
    return provider


@transaction.atomic
def sso_provider_delete(*, actor: User, provider: SsoProvider) -> None:
    """Remove a provider and the identities linked through it. The accounts stay and can
    still sign in by any other means they have."""
    _require_superadmin(actor)
    from social_django.models import UserSocialAuth

    UserSocialAuth.objects.filter(provider=backend_name(provider)).delete()
    name = provider.name
    audit("sso_provider.delete", actor=actor, target=provider)
    provider.delete()
    emit(
        "accounts.sso_provider_changed",
        "warning",
        f"Identity provider {name} was removed by {actor.email}.",
        provider=name,
        actor=actor.email,
    )


def sso_provider_sync_from_settings() -> SsoProvider | None:
    """Create or update the provider described by A3_OIDC_ISSUER, A3_OIDC_CLIENT_ID,
    A3_OIDC_CLIENT_SECRET and A3_OIDC_NAME (slug "oidc"; Google and Microsoft issuers get
    their preset). Settings made on the dashboard (provisioning, roles, MFA trust) stay.
    Returns None when A3_OIDC_ISSUER is unset; an existing row is then left alone."""
    issuer = settings.A3_OIDC_ISSUER
    if not issuer:
        return None
    values: dict[str, object] = {
        "name": settings.A3_OIDC_NAME or "Single sign-on",
        "kind": _kind_for_issuer(issuer),
        "issuer": issuer,
        "client_id": settings.A3_OIDC_CLIENT_ID,
        "enabled": True,
    }
    if settings.A3_OIDC_CLIENT_SECRET:
        values["client_secret"] = settings.A3_OIDC_CLIENT_SECRET
    existing = SsoProvider.objects.filter(slug=ENV_PROVIDER_SLUG).first()
    if existing is None:
        return sso_provider_create(actor=None, values={"slug": ENV_PROVIDER_SLUG, **values})
    return sso_provider_update(actor=None, provider=existing, values=values)


def _kind_for_issuer(issuer: str) -> str:
    if issuer.rstrip("/") == GOOGLE_ISSUER:
        return SsoProvider.Kind.GOOGLE
    if _MICROSOFT_ISSUER.match(issuer.rstrip("/")):
        return SsoProvider.Kind.MICROSOFT
    return SsoProvider.Kind.OIDC


def _provider_alert(provider: SsoProvider, *, actor: User | None, verb: str) -> None:
    by = actor.email if actor is not None else "the environment (sso_provider_sync)"
    emit(
        "accounts.sso_provider_changed",
        "warning" if provider.jit_provisioning or provider.role_mapping else "info",
        f"Identity provider {provider.name} was {verb} by {by}.",
        provider=provider.slug,
        actor=by,
    )


def _provider_apply(provider: SsoProvider, values: Mapping[str, object]) -> None:
    unknown = set(values) - EDITABLE_FIELDS
    if unknown:
        raise ApplicationError(
            "Unknown provider settings.", fields={name: ["Unknown field."] for name in sorted(unknown)}
        )
    for name, value in values.items():
        if name == "client_secret":
            provider.client_secret = secret_encrypt(str(value or "").strip())
        else:
            setattr(provider, name, value)


def _provider_clean(provider: SsoProvider) -> None:
    """Normalise a provider's settings in place; raise ApplicationError naming the fields
    that cannot work."""
    errors: dict[str, list[str]] = {}
    provider.slug = str(provider.slug or "").strip().lower()
    provider.name = str(provider.name or "").strip()
    if not slug_re.match(provider.slug) or len(provider.slug) > 40:
        errors["slug"] = ["Letters, digits, hyphens and underscores, at most 40."]
    elif SsoProvider.objects.filter(slug=provider.slug).exclude(pk=provider.pk).exists():
        raise ConflictError(
            f"A provider with the slug {provider.slug} exists.",
            code="duplicate",
            fields={"slug": ["A provider with this slug exists."]},
        )
    if not provider.name or len(provider.name) > 100:
        errors["name"] = ["Give a name of at most 100 characters: it is shown on the sign-in button."]
    if provider.kind not in SsoProvider.Kind.values:
        errors["kind"] = ["Unknown kind."]
    elif provider.kind in OIDC_KINDS:
        _oidc_clean(provider, errors)
    else:
        _saml_clean(provider, errors)
    provider.jit_domains = _domains_clean(provider.jit_domains, errors)
    if provider.jit_provisioning and not provider.jit_domains:
        errors.setdefault("jit_domains", []).append(
            "Name the email domains whose people may get an account on their first sign-in."
        )
    provider.groups_claim = str(provider.groups_claim or "").strip()
    provider.role_mapping = _role_mapping_clean(provider.role_mapping, errors)
    if provider.role_mapping and not provider.groups_claim:
        errors.setdefault("groups_claim", []).append("Role mapping needs the claim that carries the groups.")
    if errors:
        raise ApplicationError("The provider settings cannot work.", code="invalid_provider", fields=errors)


def _oidc_clean(provider: SsoProvider, errors: dict[str, list[str]]) -> None:
    provider.issuer = str(provider.issuer or "").strip().rstrip("/")
    provider.client_id = str(provider.client_id or "").strip()
    if provider.kind == SsoProvider.Kind.GOOGLE:
        provider.issuer = provider.issuer or GOOGLE_ISSUER
        if provider.issuer != GOOGLE_ISSUER:
            errors["issuer"] = [f"Google's issuer is {GOOGLE_ISSUER}."]
    elif provider.kind == SsoProvider.Kind.MICROSOFT:
        match = _MICROSOFT_ISSUER.match(provider.issuer)
        if match is None or match["tenant"].lower() in _MICROSOFT_SHARED_TENANTS:
            errors["issuer"] = [
                "Give https://login.microsoftonline.com/<tenant ID>/v2.0 with your directory's tenant ID."
            ]
    elif not _url_ok(provider.issuer):
        errors["issuer"] = ["Give the issuer URL (https://, or http:// on this machine only)."]
    if not provider.client_id:
        errors["client_id"] = ["The client ID registered with the identity provider is required."]
    if provider.kind != SsoProvider.Kind.OIDC and not provider.client_secret:
        errors["client_secret"] = ["This provider needs the client secret."]
    scopes = str(provider.scopes or "").split()
    if "openid" not in scopes:
        scopes.insert(0, "openid")
    provider.scopes = " ".join(dict.fromkeys(scopes))[:255]


def _saml_clean(provider: SsoProvider, errors: dict[str, list[str]]) -> None:
    provider.idp_entity_id = str(provider.idp_entity_id or "").strip()
    provider.idp_sso_url = str(provider.idp_sso_url or "").strip()
    if not provider.idp_entity_id:
        errors["idp_entity_id"] = ["The identity provider's entity ID is required."]
    if not _url_ok(provider.idp_sso_url):
        errors["idp_sso_url"] = ["Give the single sign-on URL (HTTP-Redirect binding) of the provider."]
    try:
        provider.idp_x509_cert = certificate_normalize(str(provider.idp_x509_cert or ""))
    except ValueError:
        errors["idp_x509_cert"] = ["Paste the provider's signing certificate (PEM)."]


def certificate_normalize(text: str) -> str:
    """An X.509 certificate as PEM, from PEM or its bare base64 body. Raises ValueError."""
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", text or "")
    if not body:
        raise ValueError("no certificate")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    x509.load_pem_x509_certificate(pem.encode())
    return pem


def _url_ok(url: str) -> bool:
    """https://, or http:// to this machine (a provider in a lab or a test)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _domains_clean(raw: object, errors: dict[str, list[str]]) -> list[str]:
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    if not isinstance(raw, (list, tuple)):
        errors["jit_domains"] = ["A list of domain names."]
        return []
    domains: list[str] = []
    for item in raw:
        try:
            domains.append(normalize_domain(str(item).strip().lstrip("@"), field="jit_domains"))
        except AddressError as exc:
            errors.setdefault("jit_domains", []).append(exc.message)
    return list(dict.fromkeys(domains))


def _role_mapping_clean(raw: object, errors: dict[str, list[str]]) -> dict[str, str]:
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        errors["role_mapping"] = ["A mapping of group names to roles."]
        return {}
    mapping: dict[str, str] = {}
    for group, role in raw.items():
        group = str(group).strip()
        if not group or len(group) > 255:
            errors.setdefault("role_mapping", []).append("Group names are 1 to 255 characters.")
        elif role not in User.Role.values:
            errors.setdefault("role_mapping", []).append(
                f"'{role}' for group '{group}' is not a role ({', '.join(User.Role.values)})."
            )
        else:
            mapping[group] = str(role)
    return mapping


# --- What an identity provider asserted ---------------------------------------------------


@dataclass(frozen=True)
class SsoIdentity:
    """What the identity provider asserted about the person signing in, read from a
    response the backend has already verified (signature, issuer, audience, expiry)."""

    uid: str
    email: str
    email_verified: bool
    full_name: str = ""
    groups: tuple[str, ...] | None = None  # None: the provider sent no groups claim at all
    amr: tuple[str, ...] = ()
    acr: tuple[str, ...] = ()


@dataclass(frozen=True)
class SsoAccount:
    user: User
    linked: bool = False
    provisioned: bool = False


@dataclass(frozen=True)
class RoleChange:
    old: str
    new: str


def sso_account_check(*, user: User) -> None:
    """Refuse a disabled account (with the one message that says nothing more)."""
    if not user.is_active:
        raise SsoRefused(NO_ACCOUNT_MESSAGE, code="no_account")


@transaction.atomic
def sso_account_resolve(
    *, provider: SsoProvider, identity: SsoIdentity, client: account_services.ClientInfo
) -> SsoAccount:
    """The account for an identity not linked yet: the one with the same, provider-verified
    email address (SSO_LINKED), or a new one where provisioning allows (SSO_PROVISIONED).
    Raises SsoRefused otherwise. The caller links the identity to the account."""
    if not identity.email:
        raise SsoRefused(
            "Your identity provider did not send an email address, so no account can be matched.",
            code="email_missing",
        )
    if not identity.email_verified:
        raise SsoRefused(
            "Your identity provider does not vouch for your email address, so it cannot be "
            "matched to an account.",
            code="email_unverified",
        )
    email = account_services.login_name_normalize(identity.email)
    domain = email.rpartition("@")[2]
    user = User.objects.filter(email=email).first()
    if user is not None:
        sso_account_check(user=user)
        # An IdP vouches for addresses of its own organisation only: a consumer Google
        # account can verify any address. So linking is limited to the provider's domains
        # when it has any, and administrators are only ever linked through a provider
        # that names their domain.
        if (provider.jit_domains or user.is_admin) and domain not in provider.jit_domains:
            raise SsoRefused(NO_ACCOUNT_MESSAGE, code="no_account")
        account_services.auth_event_record(
            kind=AuthEvent.Kind.SSO_LINKED, client=client, user=user, provider=provider.slug
        )
        return SsoAccount(user=user, linked=True)
    if not provider.jit_provisioning or domain not in provider.jit_domains:
        raise SsoRefused(NO_ACCOUNT_MESSAGE, code="no_account")
    user = account_services.user_create(
        actor=None, email=email, password=None, full_name=identity.full_name[:150]
    )
    account_services.auth_event_record(
        kind=AuthEvent.Kind.SSO_PROVISIONED, client=client, user=user, provider=provider.slug
    )
    return SsoAccount(user=user, provisioned=True)


@transaction.atomic
def sso_role_apply(*, provider: SsoProvider, user: User, groups: tuple[str, ...] | None) -> RoleChange | None:
    """Set the user's role from their groups by the provider's role_mapping: the highest
    role any of their groups maps to, else the "*" entry, else no change. A provider that
    sent no groups claim changes nothing. Returns the change, if any."""
    mapping = provider.role_mapping or {}
    if not mapping or not provider.groups_claim or groups is None:
        return None
    mapped = [mapping[group] for group in groups if group in mapping]
    explicit = bool(mapped)
    if not mapped and DEFAULT_ROLE_KEY in mapping:
        mapped = [mapping[DEFAULT_ROLE_KEY]]
    if not mapped:
        return None
    target = max(mapped, key=lambda role: ROLE_RANK[role])
    user = User.objects.select_for_update().get(pk=user.pk)  # serialize the last-superadmin check
    if target == user.role:
        return None
    if user.role == User.Role.SUPERADMIN:
        if not explicit:
            return None  # the fallback never demotes a superadmin
        others = User.objects.filter(role=User.Role.SUPERADMIN, is_active=True).exclude(pk=user.pk)
        if not others.exists():
            logger.warning("sso role mapping would demote the last superadmin", extra={"user_id": user.pk})
            return None
    change = RoleChange(old=user.role, new=target)
    user.role = target
    user.is_superuser = target == User.Role.SUPERADMIN
    user.save(update_fields=["role", "is_superuser"])
    promoted = ROLE_RANK[change.new] > ROLE_RANK[change.old]
    emit(
        "accounts.sso_role_changed",
        "warning" if promoted else "info",
        f"{user.email} is now {user.get_role_display()} (was {User.Role(change.old).label}) by the "
        f"group mapping of {provider.name}.",
        user_id=user.pk,
        email=user.email,
        role=change.new,
        previous_role=change.old,
        provider=provider.slug,
    )
    return change


def sso_mfa_asserted(*, provider: SsoProvider, identity: SsoIdentity) -> bool:
    """Whether this sign-in counts as a second factor: only for a provider trusted for MFA,
    and only when it asserted one (an `amr` in A3_SSO_MFA_AMR or an `acr` in A3_SSO_MFA_ACR)."""
    if not provider.trust_idp_mfa:
        return False
    amr = set(settings.A3_SSO_MFA_AMR)
    acr = set(settings.A3_SSO_MFA_ACR)
    return any(value in amr for value in identity.amr) or any(value in acr for value in identity.acr)


# --- Signing in ------------------------------------------------------------------------


@dataclass(frozen=True)
class SsoLogin:
    user: User
    second_factor_pending: bool


def sso_login_finish(
    *, request: HttpRequest, provider: SsoProvider, user: User, mfa_verified: bool, next_url: str
) -> SsoLogin:
    """Sign the user in (accounts.services.login_complete, method "sso") and record
    SSO_LOGIN. When the provider asserted no second factor the user is trusted for, but
    the account has one, the sign-in waits for it instead (accounts:login-mfa), as after a
    password. `next_url` must already be checked as safe."""
    from apps.accounts import mfa

    client = account_services.ClientInfo.from_request(request)
    pending = not mfa_verified and mfa.mfa_enabled(user)
    account_services.auth_event_record(
        kind=AuthEvent.Kind.SSO_LOGIN,
        client=client,
        user=user,
        provider=provider.slug,
        mfa=mfa_verified,
        **({"second_factor_pending": True} if pending else {}),
    )
    if pending:
        mfa.mfa_pending_start(request=request, user=user, next_url=next_url, method="sso")
    else:
        account_services.login_complete(request=request, user=user, method="sso", mfa_verified=mfa_verified)
    return SsoLogin(user=user, second_factor_pending=pending)


def sso_failure_record(*, request: HttpRequest, provider: SsoProvider, code: str) -> None:
    """Record a refused or failed SSO sign-in. It does not count towards the password
    lockout: nothing was guessed here."""
    with transaction.atomic():
        account_services.auth_event_record(
            kind=AuthEvent.Kind.LOGIN_FAILED,
            client=account_services.ClientInfo.from_request(request),
            method="sso",
            provider=provider.slug,
            reason=code,
        )


# --- SAML replay protection --------------------------------------------------------------

_SAML_ASSERTION_SCOPE = "a3mailer:saml-assertion"
# python3-saml accepts assertions up to this many seconds past their NotOnOrAfter.
_SAML_CLOCK_DRIFT_SECONDS = 300
# How long an assertion ID is kept when the assertion names no end of validity.
_SAML_DEFAULT_KEEP_SECONDS = 24 * 3600


def saml_assertion_claim(*, provider: SsoProvider, assertion_id: str, not_on_or_after: int | None) -> None:
    """Accept a verified SAML assertion once: its ID is remembered until it expires (plus
    the clock drift python3-saml allows), and a second use raises SamlAssertionReplayed.
    The IDs live in social-auth's Nonce table, so every process sees them; expired ones
    are removed here."""
    if not assertion_id:
        raise SamlAssertionReplayed()  # an assertion without an ID cannot be told apart
    now = int(time.time())
    keep_until = (not_on_or_after or now + _SAML_DEFAULT_KEEP_SECONDS) + _SAML_CLOCK_DRIFT_SECONDS
    # IDs are chosen by the provider; a digest bounds their length for the table's column.
    salt = hashlib.sha256(f"{provider.pk}:{assertion_id}".encode()).hexdigest()
    with transaction.atomic():
        Nonce.objects.filter(server_url=_SAML_ASSERTION_SCOPE, timestamp__lt=now).delete()
        try:
            with transaction.atomic():
                _, created = Nonce.objects.get_or_create(
                    server_url=_SAML_ASSERTION_SCOPE, salt=salt, defaults={"timestamp": keep_until}
                )
        except IntegrityError:
            created = False  # the same assertion, posted twice at once
    if not created:
        logger.warning("replayed SAML assertion refused", extra={"provider": provider.slug})
        raise SamlAssertionReplayed()
