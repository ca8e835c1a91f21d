"""DRF authentication by `Authorization: Bearer <token>`."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from apps.accounts import mfa, services


class BearerTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request: Request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Malformed token.") from None
        resolved = services.api_token_authenticate(secret)
        if resolved is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        token = resolved[1]
        if token.scope != mfa.FULL_SCOPE and not self._enrolment_scope_allows(request):
            # The token is good, but it came from a password alone for an account that must
            # have a second factor: it may only set one up.
            raise exceptions.PermissionDenied(
                "This token may only be used to set up a second factor (/api/v1/auth/mfa/).",
                code="mfa_enrolment_required",
            )
        return resolved

    @staticmethod
    def _enrolment_scope_allows(request: Request) -> bool:
        match = request._request.resolver_match
        if match is None:
            return False
        return mfa.enrolment_scope_allows(
            url_name=match.url_name, namespaces=match.namespaces, method=request.method
        )

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="a3mailer"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "Token from POST /api/v1/auth/token/"}
