"""Dashboard page for app passwords: per-device passwords for sending mail (SMTP AUTH) as
a mailbox. Everyone manages those of their own mailboxes; administrators also those of the
mailboxes they administer.

A new secret is shown on the response to the create POST and nowhere else: it is never
put in the session or a flash message, and the page is marked uncacheable.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from apps.accounts.mfa import mfa_session_require
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.htmx import htmx_partial
from apps.mailboxes.models import Mailbox
from apps.relay import selectors, services

PAGE_SIZE = 25


class AppPasswordCreateForm(forms.Form):
    mailbox = forms.ChoiceField(help_text="The mailbox the device sends mail as.")
    name = forms.CharField(
        max_length=100,
        help_text="Which device or program uses it, e.g. “Phone” or “Backup script”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args: object, mailboxes: QuerySet[Mailbox], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["mailbox"].choices = [(m.address, m.address_display) for m in mailboxes]


@login_required
@never_cache
def app_password_list_view(request: HttpRequest) -> HttpResponse:
    """The list (filtered by ?mailbox=), and the create form whose POST shows the secret once."""
    mailboxes = selectors.app_password_mailboxes(request.user)
    mailbox_filter = request.GET.get("mailbox", "").strip()
    form = AppPasswordCreateForm(
        request.POST or None, mailboxes=mailboxes, initial={"mailbox": mailbox_filter or None}
    )
    issued = None
    if request.method == "POST" and form.is_valid():
        try:
            mfa_session_require(request)  # a session must have passed its second factor
            mailbox = selectors.app_password_mailbox_get(request.user, form.cleaned_data["mailbox"])
            issued = services.app_password_create(
                actor=request.user, mailbox=mailbox, name=form.cleaned_data["name"]
            )
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            form = AppPasswordCreateForm(mailboxes=mailboxes, initial={"mailbox": mailbox.address})
    passwords = selectors.app_password_list(request.user)
    if mailbox_filter:
        passwords = passwords.filter(mailbox__address=mailbox_filter.lower())
    page = Paginator(passwords, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "issued": issued,
        "mailboxes": mailboxes,
        "mailbox_filter": mailbox_filter,
    }
    if htmx_partial(request) and request.method == "GET":
        return render(request, "relay/partials/app_password_table.html", context)
    return render(request, "relay/app_passwords.html", context)


@login_required
@require_POST
def app_password_revoke_view(request: HttpRequest, app_password_id: int) -> HttpResponse:
    app_password = selectors.app_password_get(request.user, app_password_id)
    services.app_password_revoke(actor=request.user, app_password=app_password)
    messages.success(
        request, f"App password “{app_password.name}” of {app_password.mailbox.address} revoked."
    )
    return redirect("relay:app-password-list")
