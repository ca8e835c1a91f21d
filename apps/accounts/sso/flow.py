"""Begin and complete an SSO sign-in with social-core's actions (do_auth, do_complete), on a
backend bound to the provider. Instead of social-auth's own login, do_complete calls
`_login`, which starts the session through services.sso_login_finish (and so
accounts.services.login_complete, method "sso"). Failures come back as SsoRefused (a
decision about the person) or SsoFailed (the exchange did not verify), both recorded.
"""

from __future__ import annotations

import json
import logging

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from social_core.actions import do_auth, do_complete
from social_core.exceptions import SocialAuthBaseException
from social_django.utils import load_strategy

from apps.accounts.models import SsoProvider, User
from apps.accounts.sso import saml, selectors, services
from apps.accounts.sso.backends import BACKEND_CLASSES, ProviderBackendMixin, SamlBackend
from apps.accounts.sso.exceptions import SsoFailed, SsoRefused
from apps.core.exceptions import ApplicationError, NotFoundError

logger = logging.getLogger(__name__)

REDIRECT_FIELD = "next"


def backend_for(*, request: HttpRequest, provider: SsoProvider) -> ProviderBackendMixin:
    """A backend for one sign-in with `provider`, with its callback URL (OpenID Connect:
    per provider; SAML: the shared assertion consumer service)."""
    if provider.kind == SsoProvider.Kind.SAML:
        callback = saml.acs_path()
    else:
        callback = reverse("accounts:sso-complete", args=[provider.slug])
    backend_class = BACKEND_CLASSES[provider.kind]
    return backend_class(load_strategy(request), redirect_uri=callback, provider=provider)


def sso_begin(*, request: HttpRequest, provider: SsoProvider) -> HttpResponse:
    """Send the browser to the provider (state, nonce and PKCE verifier, or the SAML
    request ID, kept in the session)."""
    backend = backend_for(request=request, provider=provider)
    try:
        return do_auth(backend, redirect_name=REDIRECT_FIELD)  # type: ignore[arg-type]
    except SocialAuthBaseException as exc:
        raise _failed(request=request, provider=provider, error=exc) from exc


def sso_complete(*, request: HttpRequest, provider: SsoProvider) -> HttpResponse:
    """Verify the provider's answer, run the pipeline and start the session (or the wait
    for the account's own second factor). Raises SsoRefused or SsoFailed."""
    backend = backend_for(request=request, provider=provider)
    try:
        # Always as a fresh sign-in: SSO never links an identity to whoever is signed in.
        response = do_complete(backend, _login, user=None, redirect_name=REDIRECT_FIELD, request=request)  # type: ignore[arg-type]
    except SsoRefused as exc:
        services.sso_failure_record(request=request, provider=provider, code=exc.code)
        raise
    except SocialAuthBaseException as exc:
        raise _failed(request=request, provider=provider, error=exc) from exc
    except ApplicationError as exc:
        services.sso_failure_record(request=request, provider=provider, code=exc.code)
        raise SsoFailed(exc.message, code=exc.code) from exc
    login = backend.outcome.login
    if login is not None and login.second_factor_pending:
        return HttpResponseRedirect(reverse("accounts:login-mfa"))
    return response


def saml_provider_for_response(request: HttpRequest) -> SsoProvider:
    """The SAML provider a response posted to the shared ACS belongs to, by its RelayState
    (which only selects: the response must then verify with that provider's certificate and
    answer a request this session made). NotFoundError when none matches."""
    raw = request.POST.get("RelayState", "")
    try:
        relay = json.loads(raw)
    except ValueError:
        relay = None
    idp = relay.get("idp") if isinstance(relay, dict) else None
    provider = selectors.sso_provider_get_enabled(pk=idp if isinstance(idp, (str, int)) else None)
    if provider.kind != SsoProvider.Kind.SAML:
        raise NotFoundError("No such identity provider.")
    return provider


def saml_metadata(request: HttpRequest) -> str:
    """Our SP metadata (entity ID, ACS URL, signing certificate when configured), as
    python3-saml generates and validates it."""
    backend = SamlBackend(load_strategy(request), redirect_uri=saml.acs_path())
    metadata, errors = backend.generate_metadata_xml()
    if errors:
        raise ApplicationError(f"SAML metadata is invalid: {', '.join(errors)}", code="saml_metadata")
    return metadata.decode() if isinstance(metadata, bytes) else metadata


def _login(backend: ProviderBackendMixin, user: User, social_user: object) -> None:
    """do_complete's login callable: ours instead of social-auth's django login()."""
    assert backend.provider is not None
    request = backend.http_request
    backend.outcome.login = services.sso_login_finish(
        request=request,
        provider=backend.provider,
        user=user,
        mfa_verified=backend.outcome.mfa_verified,
        next_url=_next_url(request),
    )


def _next_url(request: HttpRequest) -> str:
    # do_auth kept the (already sanitised) next URL in the session; check it once more.
    target = request.session.get(REDIRECT_FIELD) or ""
    if isinstance(target, str) and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("core:overview")


def _failed(*, request: HttpRequest, provider: SsoProvider, error: SocialAuthBaseException) -> SsoFailed:
    code = str(getattr(error, "code", "") or "unknown_error")
    logger.warning(
        "sso sign-in with %s failed: %s",
        provider.slug,
        code,
        extra={
            "provider": provider.slug,
            "error_code": code,
            "error_stage": getattr(error, "stage", ""),
            "error_detail": str(getattr(error, "detail", ""))[:300],
        },
    )
    services.sso_failure_record(request=request, provider=provider, code=code)
    message = f"Sign-in with {provider.name} failed: {error}"
    if getattr(error, "recovery", "") == "restart_login":
        message += " Please start again."
    return SsoFailed(message, code=code)
