"""social-core backends whose settings come from an SsoProvider row instead of Django
settings: one class per kind (generic OpenID Connect, the Google and Microsoft Entra
presets, SAML 2.0), one instance per sign-in, bound to the provider the URL names.

social-core reads configuration through `self.setting(name)`; ProviderBackendMixin answers
from the provider first. Each bound instance is named after its provider (services.
backend_name), so every provider has its own linked identities, session keys and nonces.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from django.db import transaction
from django.http import HttpRequest
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from social_core.backends.open_id_connect import OpenIdConnectAuth
from social_core.backends.saml import SAMLAuth, SAMLIdentityProvider
from social_core.exceptions import AuthConfigurationError

from apps.accounts.models import SsoProvider
from apps.accounts.sso import saml, services
from apps.core.secrets import secret_decrypt

if TYPE_CHECKING:
    from social_core.strategy import BaseStrategy

    from apps.accounts.models import User

# Microsoft Entra: the authentication methods of a SAML sign-in (its `amr`).
ENTRA_AUTHN_METHODS = "http://schemas.microsoft.com/claims/authnmethodsreferences"


@dataclass
class SsoOutcome:
    """What the pipeline steps found, for the step that starts the session."""

    identity: services.SsoIdentity | None = None
    account: services.SsoAccount | None = None
    role_change: services.RoleChange | None = None
    mfa_verified: bool = False
    login: services.SsoLogin | None = None


class ProviderBackendMixin(abc.ABC):
    """Binds a social-core backend to one SsoProvider. Each protocol's backend says how
    its settings come from the provider row and how its response becomes an identity."""

    provider: SsoProvider | None
    outcome: SsoOutcome

    def __init__(
        self,
        strategy: BaseStrategy | None = None,
        redirect_uri: str | None = None,
        *,
        provider: SsoProvider | None = None,
    ) -> None:
        self.provider = provider
        if provider is not None:
            self.name = services.backend_name(provider)
        self.outcome = SsoOutcome()
        super().__init__(strategy, redirect_uri=redirect_uri)  # type: ignore[call-arg]

    @abc.abstractmethod
    def provider_settings(self) -> dict[str, object]: ...

    def setting(self, name: str, default: object = None) -> object:
        own = self.provider_settings()
        if name in own:
            return own[name]
        return super().setting(name, default)  # type: ignore[misc]

    @abc.abstractmethod
    def sso_identity(self, *, uid: str, details: dict, response: dict) -> services.SsoIdentity: ...

    def pipeline(
        self, pipeline: list[str], pipeline_index: int = 0, *args: object, **kwargs: object
    ) -> object:
        # The steps create accounts, links and role changes: all of them or none. The
        # network exchanges with the provider happened before, outside the transaction.
        with transaction.atomic():
            return super().pipeline(pipeline, pipeline_index, *args, **kwargs)  # type: ignore[misc]

    @property
    def http_request(self) -> HttpRequest:
        # Not `request`: BaseAuth.request() is social-core's HTTP client.
        return self.strategy.request  # type: ignore[attr-defined]


def _truthy(value: object) -> bool:
    # Some providers send JSON booleans as strings.
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value if item is not None)
    return (str(value),)


def _groups(claims: dict, claim: str) -> tuple[str, ...] | None:
    if not claim or claim not in claims:
        return None
    return _strings(claims[claim])


def _full_name(details: dict) -> str:
    full = (details.get("fullname") or "").strip()
    if full:
        return full
    return " ".join(part for part in (details.get("first_name"), details.get("last_name")) if part).strip()


class OidcBackend(ProviderBackendMixin, OpenIdConnectAuth):
    """Generic OpenID Connect: discovery at <issuer>/.well-known/openid-configuration,
    authorization code flow with PKCE (S256), nonce and state checked by social-core."""

    title = "OpenID Connect"

    @cached_property
    def _client_secret(self) -> str:
        assert self.provider is not None
        try:
            return secret_decrypt(self.provider.client_secret)
        except ValueError as exc:
            # The secret key changed since the secret was saved: it must be entered again.
            raise AuthConfigurationError(self, parameter="SECRET", code="invalid_setting") from exc

    def provider_settings(self) -> dict[str, object]:
        provider = self.provider
        if provider is None:
            return {}
        return {
            "KEY": provider.client_id,
            "SECRET": self._client_secret,
            "OIDC_ENDPOINT": provider.issuer.rstrip("/"),
            "SCOPE": provider.scopes.split(),
            "IGNORE_DEFAULT_SCOPE": True,
            "USE_PKCE": True,
            "PKCE_CODE_CHALLENGE_METHOD": "S256",
        }

    def email_verified(self, claims: dict) -> bool:
        return _truthy(claims.get("email_verified"))

    def sso_identity(self, *, uid: str, details: dict, response: dict) -> services.SsoIdentity:
        assert self.provider is not None
        id_token = self.id_token or {}
        # UserInfo (its subject already matched to the ID token's by social-core) over the
        # ID token; how the person authenticated is only ever taken from the ID token.
        claims = {**id_token, **response}
        return services.SsoIdentity(
            uid=uid,
            email=str(details.get("email") or claims.get("email") or "").strip(),
            email_verified=self.email_verified(claims),
            full_name=_full_name(details),
            groups=_groups(claims, self.provider.groups_claim),
            amr=_strings(id_token.get("amr")),
            acr=_strings(id_token.get("acr")),
        )


class GoogleBackend(OidcBackend):
    title = "Google"


class MicrosoftBackend(OidcBackend):
    """Microsoft Entra ID, one tenant (issuer https://login.microsoftonline.com/<tenant>/v2.0)."""

    title = "Microsoft"

    def email_verified(self, claims: dict) -> bool:
        # Entra sends no email_verified; its optional claim xms_edov says whether the
        # address's domain is verified as owned by the tenant.
        return super().email_verified(claims) or _truthy(claims.get("xms_edov"))


class SamlBackend(ProviderBackendMixin, SAMLAuth):
    """SAML 2.0 Web SSO (SP-initiated, HTTP-Redirect request, HTTP-POST response). The
    provider's IdP is the only one enabled for the instance; an instance without a provider
    only produces our metadata."""

    title = "SAML"
    _last_auth: OneLogin_Saml2_Auth | None = None
    authn_contexts: tuple[str, ...] = ()

    def provider_settings(self) -> dict[str, object]:
        certificate, key = saml.sp_signing_pair()
        values: dict[str, object] = {
            "SP_ENTITY_ID": saml.sp_entity_id(self.http_request),
            "SP_PUBLIC_CERT": certificate,
            "SP_PRIVATE_KEY": key,
            "ORG_INFO": saml.organization(self.http_request),
            "SECURITY_CONFIG": saml.security_profile(signing=bool(key)),
            # Every response must answer an AuthnRequest this browser session sent.
            "ALLOW_IDP_INITIATED": False,
            "ENABLED_IDPS": {},
        }
        provider = self.provider
        if provider is not None:
            values["ENABLED_IDPS"] = {
                self.idp_name: {
                    "entity_id": provider.idp_entity_id,
                    "url": provider.idp_sso_url,
                    "x509cert": provider.idp_x509_cert,
                }
            }
        return values

    @property
    def idp_name(self) -> str:
        assert self.provider is not None
        return str(self.provider.pk)

    def generate_saml_config(self, idp: SAMLIdentityProvider | None = None) -> dict:
        config = super().generate_saml_config(idp)
        config["debug"] = False
        config.pop("contactPerson", None)  # optional, and we have no one to name
        return config

    def auth_url(self) -> str:
        # As SAMLAuth.auth_url, for the bound provider. RelayState only names it: the
        # place to go afterwards stays in the session, where do_auth put it.
        idp = self.get_idp(self.idp_name)
        auth = self._get_saml_auth(idp, stage="begin")
        url = auth.login(return_to=json.dumps({"idp": idp.name}))
        self.strategy.session_set(self._authn_request_id_session_key(idp.name), auth.get_last_request_id())
        return url

    def _process_response(self, auth: OneLogin_Saml2_Auth, request_id: str | None = None) -> None:
        super()._process_response(auth, request_id)
        self._last_auth = auth

    def _check_entitlements(self, idp: SAMLIdentityProvider, attributes: dict) -> None:
        # Runs once the response passed every check (signature, times, audience,
        # InResponseTo): now its assertion may be used, once.
        auth = self._last_auth
        assert auth is not None and self.provider is not None
        services.saml_assertion_claim(
            provider=self.provider,
            assertion_id=auth.get_last_assertion_id() or "",
            not_on_or_after=auth.get_last_assertion_not_on_or_after(),
        )
        self.authn_contexts = tuple(auth.get_last_authn_contexts() or ())

    def sso_identity(self, *, uid: str, details: dict, response: dict) -> services.SsoIdentity:
        assert self.provider is not None
        attributes = response["attributes"]
        return services.SsoIdentity(
            uid=uid,
            email=str(details.get("email") or "").strip(),
            # A SAML provider's attributes are trusted by configuring the provider: only
            # assertions signed with its certificate get here.
            email_verified=True,
            full_name=_full_name(details),
            groups=_groups(attributes, self.provider.groups_claim),
            amr=_strings(attributes.get(ENTRA_AUTHN_METHODS)),
            acr=self.authn_contexts,
        )


BACKEND_CLASSES: dict[str, type[ProviderBackendMixin]] = {
    SsoProvider.Kind.OIDC: OidcBackend,
    SsoProvider.Kind.GOOGLE: GoogleBackend,
    SsoProvider.Kind.MICROSOFT: MicrosoftBackend,
    SsoProvider.Kind.SAML: SamlBackend,
}


class SsoPipelineBackend:
    """The Django authentication backend (settings.AUTHENTICATION_BACKENDS) through which
    social-core's strategy runs the pipeline of a provider-bound backend. It answers only
    those calls: password logins pass it by with None. Sessions are never started through
    it (login_complete names ModelBackend), so it never loads users."""

    def authenticate(self, request: HttpRequest | None, **credentials: object) -> User | None:
        backend = credentials.get("backend")
        if not isinstance(backend, ProviderBackendMixin) or backend.provider is None:
            return None
        if "strategy" not in credentials or "response" not in credentials:
            return None
        return backend.run_authentication(request, **credentials)  # type: ignore[attr-defined]

    def get_user(self, user_id: int) -> User | None:
        return None
