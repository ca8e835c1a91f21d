"""Dashboard pages for second factors: the sign-in's second step, enrolment of an
authenticator app, step-up verification, the security page, and the admin reset.

The rules live in apps/accounts/mfa.py; these views parse, call it and render.
"""

from __future__ import annotations

from urllib.parse import quote

import segno
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from django_otp.plugins.otp_static.models import StaticDevice

from apps.accounts import mfa, passkeys, selectors, services
from apps.accounts.exceptions import LockedOut
from apps.accounts.views import _safe_next
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error

INVALID_CODE = "Invalid code."


class OtpForm(forms.Form):
    otp = forms.CharField(
        label="Code",
        max_length=32,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autofocus": True,
                "autocapitalize": "off",
                "spellcheck": "false",
            }
        ),
        help_text="The 6-digit code from your authenticator app, or one of your backup codes.",
    )


class TotpConfirmForm(OtpForm):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["otp"].widget.attrs["inputmode"] = "numeric"
        self.fields["otp"].help_text = "The 6-digit code the app shows now."


def _backup_codes_page(request: HttpRequest, *, codes: list[str], next_url: str) -> HttpResponse:
    # The codes exist in plaintext only in this response: the download is a data: URI made
    # from them here, so nothing has to keep them for a second request.
    text = "A3Mailer backup codes for {}\nEach code works once.\n\n{}\n".format(
        request.user.email, "\n".join(codes)
    )
    context = {
        "codes": codes,
        "download_href": "data:text/plain;charset=utf-8," + quote(text),
        "next_url": next_url,
    }
    return render(request, "accounts/mfa_backup_codes.html", context)


def _verify_next(request: HttpRequest) -> str:
    return reverse("accounts:mfa-verify") + "?next=" + quote(_safe_next(request))


# --- Sign-in: the second step ---------------------------------------------------------------


@sensitive_post_parameters("otp")
@csrf_protect
@never_cache
def login_mfa_view(request: HttpRequest) -> HttpResponse:
    """Second step of a password sign-in for accounts with a second factor."""
    pending = mfa.mfa_pending_get(request)
    if pending is None:
        if request.user.is_authenticated:
            return redirect("core:overview")
        messages.info(request, "Your sign-in timed out or was not started; please sign in again.")
        return redirect("accounts:login")
    form = OtpForm(request.POST or None)
    status, retry_after = 200, None
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                device = mfa.mfa_verify(
                    user=pending.user,
                    otp=form.cleaned_data["otp"],
                    client=services.ClientInfo.from_request(request),
                )
            except LockedOut as exc:
                # Start over at the password step once the lockout is over.
                mfa.mfa_pending_clear(request)
                form.add_error(None, exc.message)
                status, retry_after = 429, exc.retry_after
            else:
                if device is not None:
                    mfa.mfa_login_complete(
                        request=request, user=pending.user, device=device, method=pending.method
                    )
                    _backup_code_notice(request, device)
                    return HttpResponseRedirect(pending.next_url or reverse("core:overview"))
                form.add_error(None, INVALID_CODE)
    response = render(request, "accounts/mfa_login.html", {"form": form}, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


def _backup_code_notice(request: HttpRequest, device: object) -> None:
    if isinstance(device, StaticDevice):
        left = mfa.backup_codes_remaining(request.user)
        messages.warning(
            request,
            f"You signed in with a backup code; {left} left. Make new ones on your security page.",
        )


@login_required
@sensitive_post_parameters("otp")
@never_cache
def mfa_verify_view(request: HttpRequest) -> HttpResponse:
    """Step-up: a signed-in session that has not passed its second factor passes it here."""
    next_url = _safe_next(request)
    if mfa.session_mfa_verified(request):
        return HttpResponseRedirect(next_url)
    if not mfa.mfa_enabled(request.user):
        return redirect(reverse("accounts:mfa-setup") + "?next=" + quote(next_url))
    form = OtpForm(request.POST or None)
    status, retry_after = 200, None
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                device = mfa.mfa_verify(
                    user=request.user,
                    otp=form.cleaned_data["otp"],
                    client=services.ClientInfo.from_request(request),
                )
            except LockedOut as exc:
                form.add_error(None, exc.message)
                status, retry_after = 429, exc.retry_after
            else:
                if device is not None:
                    mfa.mfa_session_verify(request=request, device=device)
                    _backup_code_notice(request, device)
                    return HttpResponseRedirect(next_url)
                form.add_error(None, INVALID_CODE)
    response = render(request, "accounts/mfa_verify.html", {"form": form, "next": next_url}, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


# --- Enrolment ------------------------------------------------------------------------------


@login_required
@sensitive_post_parameters("otp")
@never_cache
def mfa_setup_view(request: HttpRequest) -> HttpResponse:
    """Add (or replace) an authenticator app: QR code and secret, then the first code; on
    success the session counts as verified and the backup codes are shown once."""
    next_url = _safe_next(request)
    if not mfa.mfa_manage_ok(request):
        # The account has a factor this session has not passed: prove it before changing it.
        return redirect(_verify_next(request))
    form = TotpConfirmForm(request.POST or None)
    status = 200
    if request.method == "POST":
        enrolment = mfa.totp_pending(request.user)
        if enrolment is None:
            return redirect(reverse("accounts:mfa-setup") + "?next=" + quote(next_url))
        status = 400
        if form.is_valid():
            try:
                codes = mfa.totp_confirm(
                    user=request.user,
                    otp=form.cleaned_data["otp"],
                    client=services.ClientInfo.from_request(request),
                )
            except ApplicationError as exc:
                apply_application_error(form, exc)
            else:
                device = mfa.totp_device(request.user)
                if device is not None:
                    mfa.mfa_session_verify(request=request, device=device)
                messages.success(request, "Your authenticator app is set up.")
                return _backup_codes_page(request, codes=codes, next_url=next_url)
    else:
        enrolment = mfa.totp_begin(user=request.user)
    qr = segno.make(enrolment.otpauth_url, error="m")
    context = {
        "form": form,
        "secret": enrolment.secret,
        "secret_groups": " ".join(enrolment.secret[i : i + 4] for i in range(0, len(enrolment.secret), 4)),
        "qr_data_uri": qr.svg_data_uri(scale=5, border=2),
        "next": next_url,
        "required": mfa.mfa_required(request.user),
        "replacing": mfa.totp_device(request.user) is not None,
        "passkeys": passkeys.passkey_list(user=request.user),
    }
    return render(request, "accounts/mfa_setup.html", context, status=status)


# --- The security page ----------------------------------------------------------------------


@login_required
@never_cache
def security_view(request: HttpRequest) -> HttpResponse:
    """The user's second factors and what they can do with them."""
    context = {
        "status": mfa.mfa_status(request.user),
        "verified": mfa.session_mfa_verified(request),
        "passkeys": passkeys.passkey_list(user=request.user),
    }
    return render(request, "accounts/security.html", context)


@login_required
@require_POST
def totp_remove_view(request: HttpRequest) -> HttpResponse:
    if not mfa.mfa_manage_ok(request):
        return redirect(reverse("accounts:mfa-verify") + "?next=" + quote(reverse("accounts:security")))
    removed = mfa.totp_remove(
        user=request.user, actor=request.user, client=services.ClientInfo.from_request(request)
    )
    if removed:
        messages.success(request, "Authenticator app removed.")
    return redirect("accounts:security")


@login_required
@require_POST
@never_cache
def backup_codes_regenerate_view(request: HttpRequest) -> HttpResponse:
    if not mfa.mfa_manage_ok(request):
        return redirect(reverse("accounts:mfa-verify") + "?next=" + quote(reverse("accounts:security")))
    try:
        codes = mfa.backup_codes_regenerate(
            user=request.user, client=services.ClientInfo.from_request(request)
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("accounts:security")
    messages.success(request, "New backup codes made; the old ones no longer work.")
    return _backup_codes_page(request, codes=codes, next_url=reverse("accounts:security"))


# --- Administrators ---------------------------------------------------------------------------


@login_required
@require_POST
def user_mfa_reset_view(request: HttpRequest, user_id: int) -> HttpResponse:
    """Reset another user's second factors (superadmins; domain admins for their users)."""
    subject = selectors.user_get(actor=request.user, user_id=user_id)
    removed = mfa.mfa_reset(
        actor=request.user, user=subject, client=services.ClientInfo.from_request(request)
    )
    messages.success(
        request,
        f"Second factors of {subject.email} reset ({removed} removed). "
        "They will be asked to set one up again where policy requires it.",
    )
    if request.user.is_superadmin:
        return redirect("accounts:user-edit", user_id=subject.pk)
    return redirect("core:overview")
