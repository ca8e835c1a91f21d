from __future__ import annotations

from apps.core.exceptions import ApplicationError


class SsoRefused(ApplicationError):
    """The identity provider vouched for someone this installation will not sign in. The
    message is safe to show on the login page: it never tells whether an account exists."""

    code = "sso_refused"
    status_code = 403


class SsoFailed(ApplicationError):
    """The exchange with the identity provider failed: a forged or stale state, a bad
    signature, an expired or replayed assertion, an unreachable provider."""

    code = "sso_failed"
    status_code = 400


class SamlAssertionReplayed(SsoFailed):
    """A SAML assertion came back a second time before it expired."""

    code = "saml_replayed"

    def __init__(self) -> None:
        super().__init__("This sign-in response was already used.")
