"""Our steps of social-auth's pipeline (settings.SOCIAL_AUTH_PIPELINE). Each reads what the
backend verified, calls one service and hands its result to the next step; the rules are
in services.py. Steps run in one transaction (ProviderBackendMixin.pipeline).

Order: social_details, social_uid, identity_read, social_user (an identity linked before
signs in to its account), account_resolve (else link by verified email or provision),
associate_user (records the link), roles_apply, assurance_read. The session is started
afterwards by flow.py through accounts.services.login_complete.
"""

from __future__ import annotations

from apps.accounts.models import User
from apps.accounts.services import ClientInfo
from apps.accounts.sso import services
from apps.accounts.sso.backends import ProviderBackendMixin


def _bound(backend: object) -> ProviderBackendMixin:
    if not isinstance(backend, ProviderBackendMixin) or backend.provider is None:
        raise TypeError("the SSO pipeline runs only with provider-bound backends")
    return backend


def identity_read(backend: object, uid: str, details: dict, response: dict, **kwargs: object) -> dict:
    """What the provider asserted, in our terms (services.SsoIdentity)."""
    sso = _bound(backend)
    sso.outcome.identity = sso.sso_identity(uid=uid, details=details, response=response)
    return {}


def account_resolve(backend: object, user: User | None = None, **kwargs: object) -> dict:
    """The account to sign in to: the linked one (if still active), else by verified
    email, else a provisioned one; refuses (SsoRefused) otherwise."""
    sso = _bound(backend)
    if user is not None:
        services.sso_account_check(user=user)
        return {}
    assert sso.provider is not None and sso.outcome.identity is not None
    account = services.sso_account_resolve(
        provider=sso.provider, identity=sso.outcome.identity, client=ClientInfo.from_request(sso.http_request)
    )
    sso.outcome.account = account
    return {"user": account.user, "is_new": account.provisioned}


def roles_apply(backend: object, user: User, **kwargs: object) -> dict:
    """The role the provider's groups map to, if the provider maps roles."""
    sso = _bound(backend)
    assert sso.provider is not None and sso.outcome.identity is not None
    sso.outcome.role_change = services.sso_role_apply(
        provider=sso.provider, user=user, groups=sso.outcome.identity.groups
    )
    if sso.outcome.role_change is not None:
        user.refresh_from_db(fields=["role", "is_superuser"])
    return {}


def assurance_read(backend: object, **kwargs: object) -> dict:
    """Whether the sign-in counts as a second factor (provider trusted and asserting one)."""
    sso = _bound(backend)
    assert sso.provider is not None and sso.outcome.identity is not None
    sso.outcome.mfa_verified = services.sso_mfa_asserted(provider=sso.provider, identity=sso.outcome.identity)
    return {}
