"""The service-provider side of SAML 2.0: our entity ID, assertion consumer service and
optional signing pair, the security profile python3-saml enforces, and the metadata
identity providers import. Every SAML provider shares one SP identity and one ACS URL;
RelayState names the provider a response belongs to."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.urls import reverse
from onelogin.saml2.constants import OneLogin_Saml2_Constants

# HTTP-POST is the only response binding python3-saml accepts.
ACS_BINDING = OneLogin_Saml2_Constants.BINDING_HTTP_POST


def metadata_path() -> str:
    return reverse("accounts:sso-saml-metadata")


def acs_path() -> str:
    return reverse("accounts:sso-saml-acs")


def sp_entity_id(request: HttpRequest) -> str:
    """A3_SAML_SP_ENTITY_ID, or the metadata URL as this request reached it."""
    return settings.A3_SAML_SP_ENTITY_ID or request.build_absolute_uri(metadata_path())


@lru_cache(maxsize=4)
def _read_pem(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ImproperlyConfigured(f"cannot read {path}: {exc}") from None


def sp_signing_pair() -> tuple[str, str]:
    """(certificate, private key) PEM from A3_SAML_SP_CERT / A3_SAML_SP_KEY, or ("", "")."""
    if not settings.A3_SAML_SP_CERT:
        return "", ""
    return _read_pem(settings.A3_SAML_SP_CERT), _read_pem(settings.A3_SAML_SP_KEY)


def security_profile(*, signing: bool) -> dict[str, object]:
    """What python3-saml insists on (strict mode is always on)."""
    return {
        # The assertion itself must carry the IdP's signature; a signed envelope around an
        # unsigned assertion is not enough.
        "wantAssertionsSigned": True,
        "wantMessagesSigned": False,
        "wantNameId": True,
        "rejectDeprecatedAlgorithm": True,
        "signatureAlgorithm": OneLogin_Saml2_Constants.RSA_SHA256,
        "digestAlgorithm": OneLogin_Saml2_Constants.SHA256,
        "authnRequestsSigned": signing,
        "signMetadata": False,
        # Asking for a password context would stop an IdP from using its MFA contexts.
        "requestedAuthnContext": False,
    }


def organization(request: HttpRequest) -> dict[str, dict[str, str]]:
    return {
        "en-US": {
            "name": "A3Mailer",
            "displayname": f"A3Mailer {settings.A3_HOSTNAME}",
            "url": request.build_absolute_uri("/"),
        }
    }
