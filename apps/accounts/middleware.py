"""Enforcement of the MFA policy for web sessions (apps/accounts/mfa.py, docs/authentication.md).

A user whom policy requires to have a second factor and whose session has not passed one
(they signed in with a password before having a factor) gets the enrolment page for every
request until they have set one up and verified it in this session. Bearer-token API calls
are left to the token scopes (apps/accounts/authentication.py); API calls made with the
session cookie get the same 403 an enrolment-scope token would.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import Resolver404, resolve, reverse

from apps.accounts import mfa

# Pages a user being sent to enrolment can still reach (URL names in "accounts").
_ACCOUNT_PAGES = frozenset({"mfa-setup", "mfa-verify", "login-mfa", "login", "logout"})
# Probes and metrics carry no session worth redirecting.
_PROBES = frozenset({"healthz", "readyz", "prometheus-django-metrics"})


class MfaEnforcementMiddleware:
    """Sends sessions that owe a second factor to accounts:mfa-setup (after OTPMiddleware)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self._exempt(request) or not self._owes_second_factor(request):
            return self.get_response(request)
        return self._refuse(request)

    @staticmethod
    def _exempt(request: HttpRequest) -> bool:
        if not request.user.is_authenticated:
            return True
        path = request.path_info
        if path.startswith(settings.STATIC_URL):
            return True
        scheme = request.headers.get("Authorization", "").split(" ", 1)[0].lower()
        if path.startswith("/api/") and scheme == "bearer":
            return True  # a bearer token (any other header falls back to the session): its scope decides
        try:
            match = resolve(path)
        except Resolver404:
            return False
        namespaces = set(match.namespaces) | set(match.app_names)
        if "otp_webauthn" in namespaces:
            return True  # registering a passkey is one way to enrol
        if "accounts" in namespaces and match.url_name in _ACCOUNT_PAGES:
            return True
        if "api" in namespaces:
            if match.url_name == "token-obtain":
                return True  # takes a password, not the session
            return mfa.enrolment_scope_allows(
                url_name=match.url_name, namespaces=match.namespaces, method=request.method or ""
            )
        return match.url_name in _PROBES

    @staticmethod
    def _owes_second_factor(request: HttpRequest) -> bool:
        # Cheapest first: a verified session needs nothing more (no query beyond django-otp's).
        user = request.user
        if callable(getattr(user, "is_verified", None)) and user.is_verified():
            return False
        # One indexed EXISTS query for sessions not verified (none for a role the policy
        # covers): cheaper than remembering it in the session, which would cost a session
        # write whenever it had to be refreshed.
        return mfa.mfa_required(user) and not mfa.session_mfa_verified(request)

    @staticmethod
    def _refuse(request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith("/api/"):
            from apps.core.api.errors import error_body

            body = error_body(
                "mfa_enrolment_required", "Set up a second factor for this account before using the API."
            )
            return JsonResponse(body, status=403)
        target = reverse("accounts:mfa-setup")
        if request.method == "GET":
            target = f"{target}?{urlencode({'next': request.get_full_path()})}"
        if request.headers.get("HX-Request") == "true":
            # A redirect would be followed inside the swapped fragment; HTMX navigates instead.
            response = HttpResponse(status=204)
            response["HX-Redirect"] = target
            return response
        return HttpResponseRedirect(target)
