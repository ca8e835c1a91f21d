"""Dashboard pages for sessions and credentials (sign out one browser or everywhere,
revoke API tokens and app passwords), password change, and password reset by mail.

Every page works without JavaScript: revocations are plain POST forms that redirect back,
and "sign out everywhere" asks on a page of its own before it acts.
"""

from __future__ import annotations

from dataclasses import dataclass

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_POST

from apps.accounts import password, selectors, services, web_sessions
from apps.accounts.exceptions import LockedOut
from apps.accounts.models import User, UserSession
from apps.core.exceptions import ApplicationError, NotFoundError
from apps.core.forms import apply_application_error

METHOD_LABELS = {"password": "Password", "passkey": "Passkey", "sso": "Single sign-on"}


# --- Forms (shape only; the rules are in apps/accounts/password.py) ----------------------


def _password_field(label: str, autocomplete: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": autocomplete}),
    )


class _NewPasswordForm(forms.Form):
    new_password = _password_field("New password", "new-password")
    new_password_confirm = _password_field("New password again", "new-password")

    def clean(self) -> dict:
        data = super().clean()
        first, second = data.get("new_password"), data.get("new_password_confirm")
        if first and second and first != second:
            self.add_error("new_password_confirm", "The two passwords differ.")
        return data


class PasswordChangeForm(_NewPasswordForm):
    current_password = _password_field("Current password", "current-password")
    field_order = ["current_password", "new_password", "new_password_confirm"]


class PasswordResetRequestForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "username", "autofocus": True})
    )


class PasswordResetForm(_NewPasswordForm):
    pass


class RevokeAllForm(forms.Form):
    revoke_tokens = forms.BooleanField(required=False, initial=True, label="Also revoke all API tokens")
    include_current = forms.BooleanField(required=False, label="Also sign out this browser")


# --- Sessions and credentials ----------------------------------------------------------


@dataclass(frozen=True)
class SessionRow:
    """One session as the page shows it."""

    session: UserSession
    device: str
    method: str
    current: bool


def _subject(request: HttpRequest) -> User:
    """Whose sessions: the caller's own, or for superadmins any user's (?user=<id>).
    Anyone else naming another user gets a 404 from the selector."""
    user_id = request.POST.get("user") or request.GET.get("user")
    if not user_id or str(user_id) == str(request.user.pk):
        return request.user
    if not request.user.is_superadmin:
        raise NotFoundError("No such user.")
    return selectors.user_get(actor=request.user, user_id=user_id)


def _sessions_url(subject: User, viewer: User) -> str:
    url = reverse("accounts:sessions")
    return url if subject.pk == viewer.pk else f"{url}?user={subject.pk}"


@login_required
@never_cache
def sessions_view(request: HttpRequest) -> HttpResponse:
    """Where one is signed in, and with what: web sessions, API tokens, app passwords."""
    from apps.relay import selectors as relay_selectors

    subject = _subject(request)
    own = subject.pk == request.user.pk
    current_key = request.session.session_key
    rows = [
        SessionRow(
            session=session,
            device=web_sessions.user_agent_summary(session.user_agent),
            method=METHOD_LABELS.get(session.method, "—"),
            current=own and session.session_key == current_key,
        )
        for session in web_sessions.web_sessions_list(actor=request.user, user=subject)
    ]
    context = {"subject": subject, "own": own, "rows": rows}
    if own:
        # Credentials are listed for their owner only: an administrator manages other
        # people's on the tokens and app passwords pages of their own scope.
        context["tokens"] = selectors.api_token_list(actor=request.user).usable()
        context["app_passwords"] = relay_selectors.app_password_list(request.user).filter(
            mailbox__owner=request.user, revoked_at__isnull=True
        )
    return render(request, "accounts/sessions.html", context)


@login_required
@require_POST
def session_revoke_view(request: HttpRequest, session_id: int) -> HttpResponse:
    subject = _subject(request)
    session = web_sessions.web_session_revoke(
        actor=request.user,
        user=subject,
        session_id=session_id,
        client=services.ClientInfo.from_request(request),
    )
    if session.session_key == request.session.session_key:
        # This very browser: its stored session is gone, so finish signing it out.
        services.logout_complete(request=request)
        messages.info(request, "You have been signed out.")
        return redirect("accounts:login")
    messages.success(request, f"Signed out {web_sessions.user_agent_summary(session.user_agent)}.")
    return redirect(_sessions_url(subject, request.user))


@login_required
@never_cache
def sessions_revoke_all_view(request: HttpRequest) -> HttpResponse:
    """GET asks for confirmation; POST signs out every other session (and this one too
    when asked), revoking API tokens unless unticked."""
    subject = _subject(request)
    own = subject.pk == request.user.pk
    form = RevokeAllForm(request.POST or None)
    if not own:
        del form.fields["include_current"]  # the caller's own browser is not among them
    if request.method == "POST" and form.is_valid():
        include_current = own and form.cleaned_data["include_current"]
        revoked = web_sessions.web_sessions_revoke_all(
            actor=request.user,
            user=subject,
            keep_current=None if include_current or not own else request.session.session_key,
            revoke_tokens=form.cleaned_data["revoke_tokens"],
            client=services.ClientInfo.from_request(request),
        )
        if include_current:
            services.logout_complete(request=request)
            messages.info(request, "You have been signed out everywhere.")
            return redirect("accounts:login")
        messages.success(
            request,
            f"Signed out {revoked.sessions} session{'s' if revoked.sessions != 1 else ''}"
            f" and revoked {revoked.tokens} API token{'s' if revoked.tokens != 1 else ''}.",
        )
        return redirect(_sessions_url(subject, request.user))
    return render(
        request, "accounts/sessions_revoke_all.html", {"form": form, "subject": subject, "own": own}
    )


@login_required
@require_POST
def session_token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    token = selectors.api_token_get(actor=request.user, token_id=token_id)
    services.api_token_revoke(
        actor=request.user, token=token, client=services.ClientInfo.from_request(request)
    )
    messages.success(request, f"API token “{token.name}” revoked.")
    return redirect("accounts:sessions")


@login_required
@require_POST
def session_app_password_revoke_view(request: HttpRequest, app_password_id: int) -> HttpResponse:
    from apps.relay import selectors as relay_selectors
    from apps.relay import services as relay_services

    app_password = relay_selectors.app_password_get(request.user, app_password_id)
    relay_services.app_password_revoke(actor=request.user, app_password=app_password)
    messages.success(
        request, f"App password “{app_password.name}” of {app_password.mailbox.address} revoked."
    )
    return redirect("accounts:sessions")


# --- Password change -------------------------------------------------------------------


@login_required
@never_cache
@sensitive_post_parameters("current_password", "new_password", "new_password_confirm")
def password_change_view(request: HttpRequest) -> HttpResponse:
    form = PasswordChangeForm(request.POST or None)
    status = 200
    retry_after = None
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                revoked = password.password_change(
                    request=request,
                    user=request.user,
                    current_password=form.cleaned_data["current_password"],
                    new_password=form.cleaned_data["new_password"],
                )
            except LockedOut as exc:
                form.add_error(None, exc.message)
                status, retry_after = 429, exc.retry_after
            except ApplicationError as exc:
                apply_application_error(form, exc)
            else:
                others = f" {revoked.sessions} other session{'s were' if revoked.sessions != 1 else ' was'} signed out."
                messages.success(
                    request, f"Your password has been changed.{others if revoked.sessions else ''}"
                )
                return redirect("accounts:sessions")
    response = render(request, "accounts/password_change.html", {"form": form}, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


# --- Password reset --------------------------------------------------------------------


@csrf_protect
@never_cache
def password_reset_view(request: HttpRequest) -> HttpResponse:
    """Ask for a reset link. The answer is the same whether or not the account exists."""
    form = PasswordResetRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            password.password_reset_request(
                email=form.cleaned_data["email"], client=services.ClientInfo.from_request(request)
            )
        except password.ResetThrottled as exc:
            form.add_error(None, exc.message)
            return render(request, "accounts/password_reset.html", {"form": form}, status=429)
        return redirect("accounts:password-reset-sent")
    status = 400 if request.method == "POST" else 200
    return render(request, "accounts/password_reset.html", {"form": form}, status=status)


def password_reset_sent_view(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/password_reset_sent.html")


@csrf_protect
@never_cache
@sensitive_variables("token")
@sensitive_post_parameters("new_password", "new_password_confirm")
def password_reset_confirm_view(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    """The link from the mail: choose a new password. A bad, used or expired link shows
    why it does not work and where to get a new one."""
    try:
        subject = password.password_reset_user(uidb64=uidb64, token=token)
    except password.ResetLinkInvalid as exc:
        return _reset_link_invalid(request, exc)
    form = PasswordResetForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                password.password_reset_complete(
                    uidb64=uidb64,
                    token=token,
                    new_password=form.cleaned_data["new_password"],
                    client=services.ClientInfo.from_request(request),
                )
            except password.ResetLinkInvalid as exc:
                return _reset_link_invalid(request, exc)
            except ApplicationError as exc:
                apply_application_error(form, exc)
            else:
                if request.user.is_authenticated:
                    # Every session of that account was just signed out; a browser that
                    # was signed in as someone else gets a clean start as well.
                    services.logout_complete(request=request)
                messages.success(request, "Your password has been set. Sign in with it now.")
                return redirect("accounts:login")
    response = render(
        request, "accounts/password_reset_confirm.html", {"form": form, "subject": subject}, status=status
    )
    # The token is in this page's URL: never send it on to another site.
    response["Referrer-Policy"] = "no-referrer"
    return response


def _reset_link_invalid(request: HttpRequest, exc: password.ResetLinkInvalid) -> HttpResponse:
    response = render(request, "accounts/password_reset_confirm.html", {"invalid": exc.message}, status=400)
    response["Referrer-Policy"] = "no-referrer"
    return response
