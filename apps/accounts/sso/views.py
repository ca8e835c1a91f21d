"""Single sign-on pages: the sign-in endpoints (begin, OpenID Connect callback, SAML
assertion consumer service and metadata) and the superadmins' provider pages."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.sso import flow, saml, selectors, services
from apps.accounts.sso.exceptions import SsoFailed, SsoRefused
from apps.accounts.sso.forms import SsoProviderForm
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.permissions import superadmin_required


def _back_to_login(request: HttpRequest, message: str) -> HttpResponse:
    messages.error(request, message)
    return redirect("accounts:login")


@never_cache
@require_POST
def sso_begin_view(request: HttpRequest, slug: str) -> HttpResponse:
    """The login page's provider button (a POST with the CSRF token)."""
    if request.user.is_authenticated:
        return HttpResponseRedirect(reverse("core:overview"))
    provider = selectors.sso_provider_get_enabled(slug=slug)
    try:
        response = flow.sso_begin(request=request, provider=provider)
    except SsoFailed as exc:
        return _back_to_login(request, exc.message)
    if isinstance(response, HttpResponseRedirect):
        # Browsers apply the login page's CSP (form-action 'self') to every redirect that
        # follows its form's POST, so the way to the provider is a page of our own.
        return render(
            request, "accounts/sso_redirect.html", {"provider": provider, "location": response["Location"]}
        )
    return response


@never_cache
@csrf_exempt  # the provider's redirect carries no CSRF token: state and PKCE stand for it
@require_http_methods(["GET", "POST"])
def sso_complete_view(request: HttpRequest, slug: str) -> HttpResponse:
    """OpenID Connect callback (the redirect URI registered with the provider)."""
    provider = selectors.sso_provider_get_enabled(slug=slug)
    try:
        return flow.sso_complete(request=request, provider=provider)
    except (SsoRefused, SsoFailed) as exc:
        return _back_to_login(request, exc.message)


@never_cache
@csrf_exempt  # posted by the identity provider's page; the signed response answers our request ID
@require_POST
def saml_acs_view(request: HttpRequest) -> HttpResponse:
    """SAML assertion consumer service, shared by every SAML provider."""
    provider = flow.saml_provider_for_response(request)
    try:
        return flow.sso_complete(request=request, provider=provider)
    except (SsoRefused, SsoFailed) as exc:
        return _back_to_login(request, exc.message)


@require_GET
def saml_metadata_view(request: HttpRequest) -> HttpResponse:
    """Our SAML service-provider metadata, for identity providers to import."""
    return HttpResponse(flow.saml_metadata(request), content_type="application/samlmetadata+xml")


# --- Superadmin pages ------------------------------------------------------------------


@superadmin_required
def provider_list_view(request: HttpRequest) -> HttpResponse:
    providers = selectors.sso_provider_list(actor=request.user)
    context = {
        "providers": providers,
        "metadata_url": request.build_absolute_uri(saml.metadata_path()),
        "acs_url": request.build_absolute_uri(saml.acs_path()),
        "sp_entity_id": saml.sp_entity_id(request),
        "callback_pattern": request.build_absolute_uri(
            reverse("accounts:sso-complete", args=["SLUG"])
        ).replace("SLUG", "<slug>"),
    }
    return render(request, "accounts/sso_provider_list.html", context)


@superadmin_required
@sensitive_post_parameters("client_secret")
def provider_create_view(request: HttpRequest) -> HttpResponse:
    form = SsoProviderForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            provider = services.sso_provider_create(actor=request.user, values=form.values(creating=True))
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Identity provider {provider.name} added.")
            return redirect("accounts:sso-provider-list")
    return render(request, "accounts/sso_provider_form.html", {"form": form, "creating": True})


@superadmin_required
@sensitive_post_parameters("client_secret")
def provider_edit_view(request: HttpRequest, provider_id: int) -> HttpResponse:
    provider = selectors.sso_provider_get(actor=request.user, provider_id=provider_id)
    initial = {name: getattr(provider, name) for name in services.EDITABLE_FIELDS - {"client_secret"}}
    form = SsoProviderForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.sso_provider_update(
                actor=request.user, provider=provider, values=form.values(creating=False)
            )
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Identity provider {provider.name} saved.")
            return redirect("accounts:sso-provider-list")
    callback = request.build_absolute_uri(reverse("accounts:sso-complete", args=[provider.slug]))
    context = {"form": form, "subject": provider, "callback_url": callback}
    return render(request, "accounts/sso_provider_form.html", context)


@superadmin_required
def provider_delete_view(request: HttpRequest, provider_id: int) -> HttpResponse:
    provider = selectors.sso_provider_get(actor=request.user, provider_id=provider_id)
    if request.method == "POST":
        name = provider.name
        services.sso_provider_delete(actor=request.user, provider=provider)
        messages.success(request, f"Identity provider {name} removed.")
        return redirect("accounts:sso-provider-list")
    return render(request, "accounts/sso_provider_confirm_delete.html", {"subject": provider})
