from __future__ import annotations

import django_filters
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from apps.accounts import lockout, mfa, selectors, services
from apps.accounts.exceptions import AuthenticationFailed, LockedOut
from apps.accounts.forms import (
    LockoutClearForm,
    LoginForm,
    TokenCreateForm,
    UserCreateForm,
    UserUpdateForm,
)
from apps.accounts.models import AuthEvent
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.htmx import htmx_partial
from apps.core.permissions import superadmin_required


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("core:overview")


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
def login_view(request: HttpRequest) -> HttpResponse:
    """Password step. An account with a second factor is not signed in yet: the pending
    sign-in waits (mfa.PENDING_SECONDS) for accounts:login-mfa."""
    if request.user.is_authenticated:
        return HttpResponseRedirect(_safe_next(request))
    form = LoginForm(request.POST or None)
    retry_after = None
    if request.method == "POST" and form.is_valid():
        mfa.mfa_pending_clear(request)  # a new password step replaces any earlier one
        try:
            user = services.credentials_verify(
                request=request,
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
            )
        except LockedOut as exc:
            form.add_error(None, exc.message)
            retry_after = exc.retry_after
        except AuthenticationFailed as exc:
            form.add_error(None, exc.message)
        else:
            if mfa.mfa_enabled(user):
                mfa.mfa_pending_start(request=request, user=user, next_url=_safe_next(request))
                return redirect("accounts:login-mfa")
            services.login_complete(request=request, user=user)
            return HttpResponseRedirect(_safe_next(request))
    status = 200 if request.method != "POST" else 429 if retry_after else 400
    response = render(
        request, "accounts/login.html", {"form": form, "next": _safe_next(request)}, status=status
    )
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    services.logout_complete(request=request)
    messages.info(request, "You have been signed out.")
    return redirect("accounts:login")


@login_required
def tokens_view(request: HttpRequest) -> HttpResponse:
    """The user's API tokens: list, create (secret shown once), revoke."""
    form = TokenCreateForm(request.POST or None)
    issued_secret = None
    if request.method == "POST" and form.is_valid():
        try:
            mfa.mfa_session_require(request)
            issued = services.api_token_create(
                user=request.user,
                name=form.cleaned_data["name"],
                expires_in_days=form.cleaned_data["expires_in_days"],
                client=services.ClientInfo.from_request(request),
            )
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            issued_secret = issued.secret
            form = TokenCreateForm()
    tokens = selectors.api_token_list(actor=request.user)
    return render(
        request,
        "accounts/tokens.html",
        {"form": form, "tokens": tokens, "issued_secret": issued_secret},
    )


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    token = selectors.api_token_get(actor=request.user, token_id=token_id)
    services.api_token_revoke(
        actor=request.user, token=token, client=services.ClientInfo.from_request(request)
    )
    messages.success(request, f"Token “{token.name}” revoked.")
    if request.htmx:
        return render(request, "accounts/partials/token_row.html", {"token": token})
    return redirect("accounts:tokens")


@superadmin_required
def user_list_view(request: HttpRequest) -> HttpResponse:
    users = selectors.user_list(actor=request.user)
    query = request.GET.get("q", "").strip()
    if query:
        users = users.filter(email__icontains=query)
    page = Paginator(users, 25).get_page(request.GET.get("page"))
    template = "accounts/partials/user_table.html" if htmx_partial(request) else "accounts/user_list.html"
    return render(request, template, {"page": page, "q": query})


@superadmin_required
@sensitive_post_parameters("password")
def user_create_view(request: HttpRequest) -> HttpResponse:
    form = UserCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_create(actor=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"User {user.email} created.")
            return redirect("accounts:user-list")
    return render(request, "accounts/user_form.html", {"form": form, "creating": True})


@superadmin_required
@sensitive_post_parameters("password")
def user_edit_view(request: HttpRequest, user_id: int) -> HttpResponse:
    user = selectors.user_get(actor=request.user, user_id=user_id)
    initial = {"full_name": user.full_name, "role": user.role, "is_active": user.is_active}
    form = UserUpdateForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.user_update(actor=request.user, user=user, **form.cleaned_data)
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"User {user.email} updated.")
            return redirect("accounts:user-list")
    context = {
        "form": form,
        "subject": user,
        "subject_mfa": mfa.mfa_status(user),
        "can_reset_mfa": mfa.mfa_reset_allowed(actor=request.user, user=user),
    }
    return render(request, "accounts/user_form.html", context)


@superadmin_required
def user_delete_view(request: HttpRequest, user_id: int) -> HttpResponse:
    user = selectors.user_get(actor=request.user, user_id=user_id)
    if request.method == "POST":
        try:
            services.user_delete(actor=request.user, user=user)
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"User {user.email} deleted.")
        return redirect("accounts:user-list")
    return render(request, "accounts/user_confirm_delete.html", {"subject": user})


class AuthEventFilter(django_filters.FilterSet):
    """Filters of the sign-in log page. They only narrow what the selector allows."""

    kind = django_filters.ChoiceFilter(
        choices=AuthEvent.Kind.choices, empty_label="All events", label="Event"
    )
    email = django_filters.CharFilter(method="filter_email", label="Account")
    since = django_filters.DateFilter(
        field_name="created_at",
        lookup_expr="date__gte",
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    until = django_filters.DateFilter(
        field_name="created_at",
        lookup_expr="date__lte",
        label="To",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def filter_email(self, queryset: QuerySet[AuthEvent], name: str, value: str) -> QuerySet[AuthEvent]:
        # The typed name of a failure, or the account an event belongs to.
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(email__icontains=value) | Q(user__email__icontains=value))


@login_required
def auth_events_view(request: HttpRequest) -> HttpResponse:
    """The sign-in record: superadmins see everyone's, others their own; filter by event,
    account (superadmins), and date."""
    events = AuthEventFilter(request.GET or None, queryset=selectors.auth_event_list(actor=request.user))
    if not request.user.is_superadmin:
        del events.filters["email"]  # everyone else sees only their own account
    page = Paginator(events.qs, 50).get_page(request.GET.get("page"))
    partial = htmx_partial(request)
    template = "accounts/partials/auth_event_table.html" if partial else "accounts/auth_events.html"
    return render(request, template, {"page": page, "filter": events})


@superadmin_required
def lockout_list_view(request: HttpRequest) -> HttpResponse:
    """Locked-out login names and addresses, each with a Clear button."""
    template = "accounts/partials/lockout_table.html" if htmx_partial(request) else "accounts/lockouts.html"
    return render(request, template, {"lockouts": lockout.lockouts_active()})


@superadmin_required
@require_POST
def lockout_clear_view(request: HttpRequest) -> HttpResponse:
    """Clear one lockout; HTMX gets the refreshed table, everyone else a redirect."""
    form = LockoutClearForm(request.POST)
    if not form.is_valid():
        outcome, text = messages.ERROR, "Nothing to clear: give a login name or an address."
    else:
        try:
            lockout.lockout_clear(actor=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            outcome, text = messages.ERROR, exc.message
        else:
            what = form.cleaned_data["username"] or form.cleaned_data["ip"]
            outcome, text = messages.SUCCESS, f"Lockout of {what} cleared."
    if htmx_partial(request):
        # The row leaving the table is the feedback; an error shows above it.
        context = {"lockouts": lockout.lockouts_active(), "error": text if outcome == messages.ERROR else ""}
        return render(request, "accounts/partials/lockout_table.html", context)
    messages.add_message(request, outcome, text)
    return redirect("accounts:lockout-list")
