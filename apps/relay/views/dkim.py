"""Dashboard pages for DKIM keys: the domains an administrator manages, and per domain its
keys, the DNS records to publish, the DNS check and the key actions.

Every action is a plain POST form that redirects back with a flash message, so the pages
work without JavaScript; with HTMX the DNS check fills in its status in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required
from apps.mailboxes.models import Domain
from apps.relay import services
from apps.relay.models import DkimKey

PAGE_SIZE = 25


class DkimKeyGenerateForm(forms.Form):
    # Sent by whichever "Generate …" button was pressed, so it is not rendered as a field.
    algorithm = forms.ChoiceField(choices=DkimKey.Algorithm.choices)
    selector = forms.CharField(
        max_length=63,
        required=False,
        help_text="Optional. Leave empty for a3-YYYYMMDD.",
        widget=forms.TextInput(attrs={"placeholder": "a3-YYYYMMDD", "autocomplete": "off"}),
    )

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {"algorithm": data["algorithm"], "selector": data["selector"].strip() or None}


@dataclass(frozen=True)
class KeyRow:
    """One key as the domain page shows it."""

    key: DkimKey
    state: str
    dns_name: str
    dns_value: str


@dataclass(frozen=True)
class DomainRow:
    """One domain on the overview: its signer and how many keys wait for activation."""

    domain: Domain
    active: DkimKey | None
    pending: int
    total: int


def _domain_row(domain: Domain) -> DomainRow:
    keys = list(domain.dkim_keys.all())
    states = [services.dkim_key_state(key) for key in keys]
    active = next((key for key in keys if key.is_active), None)
    return DomainRow(domain=domain, active=active, pending=states.count("pending"), total=len(keys))


def _rows(keys: list[DkimKey]) -> list[KeyRow]:
    rows = []
    for key in keys:
        name, value = services.dkim_dns_record(key)
        rows.append(KeyRow(key=key, state=services.dkim_key_state(key), dns_name=name, dns_value=value))
    return rows


@admin_required
def dkim_list_view(request: HttpRequest) -> HttpResponse:
    domains = services.dkim_domain_list(actor=request.user)
    page = Paginator(domains, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [_domain_row(domain) for domain in page]
    template = "relay/partials/dkim_domain_table.html" if htmx_partial(request) else "relay/dkim_list.html"
    return render(request, template, {"page": page, "rows": rows})


def _domain_page(request: HttpRequest, domain_id: int, form: DkimKeyGenerateForm) -> HttpResponse:
    domain = services.dkim_domain_get(actor=request.user, domain_id=domain_id)
    context = {"domain": domain, "rows": _rows(list(domain.dkim_keys.all())), "form": form}
    return render(request, "relay/dkim_domain.html", context)


@admin_required
def dkim_domain_view(request: HttpRequest, domain_id: int) -> HttpResponse:
    return _domain_page(request, domain_id, DkimKeyGenerateForm())


@admin_required
@require_POST
def dkim_generate_view(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = services.dkim_domain_get(actor=request.user, domain_id=domain_id)
    form = DkimKeyGenerateForm(request.POST)
    if form.is_valid():
        try:
            key = services.dkim_key_create(actor=request.user, domain=domain, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            if key.is_active:
                messages.success(request, f"Key {key.selector} created; it signs mail from now on.")
            else:
                messages.success(
                    request,
                    f"Key {key.selector} created. Publish its DNS record, check it, then activate it.",
                )
            return redirect("relay:dkim-domain", domain_id=domain.pk)
    return _domain_page(request, domain.pk, form)


@admin_required
@require_POST
def dkim_activate_view(request: HttpRequest, key_id: int) -> HttpResponse:
    key = services.dkim_key_get(actor=request.user, key_id=key_id)
    try:
        key = services.dkim_key_activate(actor=request.user, key=key)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Key {key.selector} now signs mail from {key.domain.name_unicode}.")
    return redirect("relay:dkim-domain", domain_id=key.domain_id)


_CHECK_LEVEL = {
    services.PublishedState.PUBLISHED: messages.SUCCESS,
    services.PublishedState.MISSING: messages.WARNING,
    services.PublishedState.MISMATCH: messages.ERROR,
    services.PublishedState.DNS_ERROR: messages.WARNING,
}


@admin_required
@require_POST
def dkim_check_view(request: HttpRequest, key_id: int) -> HttpResponse:
    """Look the key's record up in DNS (a POST: it reaches out to the resolvers)."""
    key = services.dkim_key_get(actor=request.user, key_id=key_id)
    status = services.dkim_check_published(key)
    if htmx_partial(request):
        return render(request, "relay/partials/dkim_check.html", {"status": status})
    messages.add_message(request, _CHECK_LEVEL[status.state], f"{key.selector}: {status.detail}")
    return redirect("relay:dkim-domain", domain_id=key.domain_id)


@admin_required
def dkim_delete_view(request: HttpRequest, key_id: int) -> HttpResponse:
    """GET asks for confirmation; POST deletes."""
    key = services.dkim_key_get(actor=request.user, key_id=key_id)
    if request.method != "POST":
        name, _ = services.dkim_dns_record(key)
        return render(
            request,
            "relay/dkim_confirm_delete.html",
            {"key": key, "state": services.dkim_key_state(key), "dns_name": name},
        )
    try:
        services.dkim_key_delete(actor=request.user, key=key)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Key {key.selector} deleted. You can now remove its DNS record.")
    return redirect("relay:dkim-domain", domain_id=key.domain_id)
