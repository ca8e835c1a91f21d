"""Passkey pages and the WebAuthn ceremony endpoints.

The ceremony endpoints are django-otp-webauthn's views with three changes: registration
takes a name and records the enrolment (passkeys.passkey_register), authentication signs in
through our own path (passkeys.passkey_sign_in: login_complete, the MFA step's pending user,
the lockout) instead of the library's login, and service errors answer in the library's
JSON error shape, which its script shows to the user. They keep the library's URL names in
the "otp_webauthn" namespace because its template tags reverse those names.
"""

from __future__ import annotations

from urllib.parse import unquote, urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_otp_webauthn.views import (
    BeginCredentialAuthenticationView,
    BeginCredentialRegistrationView,
    CompleteCredentialAuthenticationView,
    CompleteCredentialRegistrationView,
)

from apps.accounts import mfa, passkeys, services
from apps.accounts.exceptions import LockedOut
from apps.core.exceptions import ApplicationError
from apps.core.htmx import htmx_partial

# Set by static/js/passkeys.js when the user starts a registration: the library's script
# posts no form data, so the name rides along as a short-lived cookie on the begin request.
NAME_COOKIE = "a3_passkey_name"


# --- The ceremony endpoints (library views, our services) ------------------------------


class _ServiceErrorsAsJson:
    """Answer our services' errors like the library answers its own: JSON with `detail`
    (shown to the user by its script) and `code`."""

    def handle_exception(self, exc: Exception) -> HttpResponse:
        if isinstance(exc, ApplicationError):
            response = JsonResponse({"detail": exc.message, "code": exc.code}, status=exc.status_code)
            if isinstance(exc, LockedOut):
                response["Retry-After"] = str(exc.retry_after)
            return response
        return super().handle_exception(exc)  # type: ignore[misc]


class _RegistrationPolicy:
    """Who may add a passkey: the MFA policy's rule for changing one's own factors
    (mfa.mfa_manage_ok), not the library's narrower is_verified() check, so that a
    session whose identity provider asserted MFA counts too."""

    request: HttpRequest

    def user_is_mfa_enrolled(self, user: AbstractBaseUser) -> bool:
        # The library refuses when this is True and the session is not django-otp verified.
        return not mfa.mfa_manage_ok(self.request)


class PasskeyRegistrationBeginView(
    _ServiceErrorsAsJson, _RegistrationPolicy, BeginCredentialRegistrationView
):
    def post(self, *args: object, **kwargs: object) -> HttpResponse:
        passkeys.passkey_name_pending_set(
            request=self.request,
            user=self.get_user(),
            name=unquote(self.request.COOKIES.get(NAME_COOKIE, "")),
        )
        response = super().post(*args, **kwargs)
        response.delete_cookie(NAME_COOKIE, path=reverse("otp_webauthn:credential-registration-begin"))
        return response


class PasskeyRegistrationCompleteView(
    _ServiceErrorsAsJson, _RegistrationPolicy, CompleteCredentialRegistrationView
):
    def post(self, *args: object, **kwargs: object) -> HttpResponse:
        user = self.get_user()
        state = self.get_state()  # popped first: a registration state is never used twice
        passkey = passkeys.passkey_register(
            request=self.request, user=user, state=state, data=self.request.data
        )
        messages.success(self.request, f"Passkey “{passkey.name}” added.")
        return JsonResponse({"id": passkey.pk, "name": passkey.name})


class PasskeyAuthenticationBeginView(_ServiceErrorsAsJson, BeginCredentialAuthenticationView):
    def check_can_authenticate(self) -> None:
        self.ceremony_user = passkeys.passkey_sign_in_check(request=self.request)
        super().check_can_authenticate()

    def get_user(self) -> AbstractBaseUser | None:
        # With a user, the challenge lists their passkeys only and asks for no second user
        # check; without one (passwordless) the authenticator must verify the user.
        return self.ceremony_user


class PasskeyAuthenticationCompleteView(_ServiceErrorsAsJson, CompleteCredentialAuthenticationView):
    def get_user(self) -> AbstractBaseUser | None:
        return passkeys.passkey_ceremony_user(self.request)

    def post(self, *args: object, **kwargs: object) -> HttpResponse:
        state = self.get_state()  # popped first: a challenge is never answered twice
        outcome = passkeys.passkey_sign_in(request=self.request, state=state, data=self.request.data)
        redirect_url = self.get_success_url()
        if outcome.next_url and url_has_allowed_host_and_scheme(
            outcome.next_url, allowed_hosts={self.request.get_host()}, require_https=self.request.is_secure()
        ):
            redirect_url = outcome.next_url
        return JsonResponse({"id": outcome.passkey.pk, "redirect_url": redirect_url})


# --- Managing one's passkeys -----------------------------------------------------------


class PasskeyRenameForm(forms.Form):
    name = forms.CharField(max_length=passkeys.NAME_MAX_LENGTH)


def _back(request: HttpRequest) -> str:
    """Where to return after an action: the page it was made on, else the passkeys page."""
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("accounts:passkey-list")


def _navigate(request: HttpRequest, target: str) -> HttpResponse:
    if htmx_partial(request):
        # HTMX would follow a redirect inside the swapped element; it navigates instead.
        response = HttpResponse(status=204)
        response["HX-Redirect"] = target
        return response
    return HttpResponseRedirect(target)


def _verify_first(request: HttpRequest) -> HttpResponse | None:
    """A password alone never changes a factor: send a session that has not passed its
    second factor to verify first (mfa.mfa_manage_ok)."""
    if mfa.mfa_manage_ok(request):
        return None
    return _navigate(request, reverse("accounts:mfa-verify") + "?" + urlencode({"next": _back(request)}))


@login_required
def passkey_list_view(request: HttpRequest) -> HttpResponse:
    """The user's passkeys, with add, rename and remove."""
    return render(request, "accounts/passkeys.html", {"passkeys": passkeys.passkey_list(user=request.user)})


@login_required
@require_POST
def passkey_rename_view(request: HttpRequest, passkey_id: int) -> HttpResponse:
    """Rename one of the user's own passkeys (404 for anyone else's)."""
    if refused := _verify_first(request):
        return refused
    passkey = passkeys.passkey_get(actor=request.user, passkey_id=passkey_id)
    form = PasskeyRenameForm(request.POST)
    # The service has the one definition of a good name; the form only reads the field.
    name = form.cleaned_data["name"] if form.is_valid() else request.POST.get("name", "")
    try:
        passkey = passkeys.passkey_rename(user=request.user, passkey_id=passkey.pk, name=name)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Passkey renamed to “{passkey.name}”.")
    return _navigate(request, _back(request))


@login_required
@require_POST
def passkey_remove_view(request: HttpRequest, passkey_id: int) -> HttpResponse:
    """Remove one of the user's own passkeys (404 for anyone else's)."""
    if refused := _verify_first(request):
        return refused
    passkey = passkeys.passkey_remove(
        actor=request.user,
        user=request.user,
        passkey_id=passkey_id,
        client=services.ClientInfo.from_request(request),
    )
    messages.success(request, f"Passkey “{passkey.name}” removed.")
    return _navigate(request, _back(request))
