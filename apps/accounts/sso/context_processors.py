from __future__ import annotations

from django.http import HttpRequest

from apps.accounts.sso.selectors import sso_provider_list_enabled


def sso_login_providers(request: HttpRequest) -> dict:
    """The identity providers the login page offers. A QuerySet is lazy: only a template
    that iterates it (accounts/partials/login_sso.html) runs the query."""
    return {"sso_login_providers": sso_provider_list_enabled()}
