"""Dashboard pages for domains, mailboxes and aliases.

Each list page renders its table from one partial; HTMX requests (search, paging, inline
edits) get just that partial, everything else the full page, so the pages work without JS.
"""

from __future__ import annotations

from dataclasses import asdict

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required, superadmin_required
from apps.mailboxes import selectors, services
from apps.mailboxes.forms import (
    AliasForm,
    DomainForm,
    MailboxCreateForm,
    MailboxUpdateForm,
)

PAGE_SIZE = 25


def _list_page(
    request: HttpRequest,
    queryset: QuerySet,
    *,
    search: tuple[str, ...],
    template: str,
    partial: str,
    extra: dict | None = None,
) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    if query:
        condition = Q()
        for field_name in search:
            condition |= Q(**{f"{field_name}__icontains": query})
        # distinct(): a multi-valued search field (alias destinations) would repeat rows.
        queryset = queryset.filter(condition).distinct()
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "q": query, **(extra or {})}
    return render(request, partial if htmx_partial(request) else template, context)


def _report_message(report: services.DeletionReport) -> str:
    parts = []
    details = asdict(report)
    for key, label in (
        ("mailboxes", "mailboxes"),
        ("aliases", "aliases"),
        ("destinations_removed", "alias destinations"),
        ("users", "users"),
    ):
        if details[key]:
            parts.append(f"{len(details[key])} {label}")
    return "Removed " + ", ".join(parts) + "." if parts else "Deleted."


# --- Domains ---------------------------------------------------------------------------


@login_required
def domain_list_view(request: HttpRequest) -> HttpResponse:
    return _list_page(
        request,
        selectors.domain_list(actor=request.user),
        search=("name", "description"),
        template="mailboxes/domain_list.html",
        partial="mailboxes/partials/domain_table.html",
    )


@superadmin_required
def domain_create_view(request: HttpRequest) -> HttpResponse:
    form = DomainForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            domain = services.domain_create(actor=request.user, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Domain {domain.name_unicode} added.")
            return redirect("mailboxes:domain-list")
    return render(request, "mailboxes/domain_form.html", {"form": form, "creating": True})


@superadmin_required
def domain_edit_view(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = selectors.domain_get(actor=request.user, domain_id=domain_id)
    initial = {
        "description": domain.description,
        "is_active": domain.is_active,
        "max_mailboxes": domain.max_mailboxes,
        "max_aliases": domain.max_aliases,
        "default_quota_mib": domain.default_quota_bytes // (1024 * 1024),
        "admins": "\n".join(user.email for user in domain.admins.all()),
        "max_messages_per_hour": domain.max_messages_per_hour,
        "max_recipients_per_hour": domain.max_recipients_per_hour,
        "require_mfa": domain.require_mfa,
    }
    form = DomainForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        try:
            services.domain_update(actor=request.user, domain=domain, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Domain {domain.name_unicode} saved.")
            return redirect("mailboxes:domain-list")
    return render(request, "mailboxes/domain_form.html", {"form": form, "domain": domain})


@superadmin_required
def domain_delete_view(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = selectors.domain_get(actor=request.user, domain_id=domain_id)
    if request.method == "POST":
        name = domain.name_unicode
        report = services.domain_delete(actor=request.user, domain=domain)
        messages.success(request, f"Domain {name} deleted. {_report_message(report)}")
        return redirect("mailboxes:domain-list")
    return render(
        request,
        "mailboxes/confirm_delete.html",
        {
            "object_label": f"domain {domain.name_unicode}",
            "consequences": [
                f"{domain.mailbox_count} mailboxes and their folders",
                f"{domain.alias_count} aliases",
                "this domain's addresses in other aliases",
            ],
            "cancel_url": "mailboxes:domain-list",
        },
    )


# --- Mailboxes -------------------------------------------------------------------------


@login_required
def mailbox_list_view(request: HttpRequest) -> HttpResponse:
    mailboxes = selectors.mailbox_list(actor=request.user)
    domain_filter = request.GET.get("domain", "").strip()
    if domain_filter:
        mailboxes = mailboxes.filter(domain__name=domain_filter)
    return _list_page(
        request,
        mailboxes,
        search=("address", "display_name", "owner__email"),
        template="mailboxes/mailbox_list.html",
        partial="mailboxes/partials/mailbox_table.html",
        extra={"domain_filter": domain_filter, "hidden": {"domain": domain_filter} if domain_filter else {}},
    )


@admin_required
@sensitive_post_parameters("password")
def mailbox_create_view(request: HttpRequest) -> HttpResponse:
    form = MailboxCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            mailbox = services.mailbox_create(actor=request.user, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Mailbox {mailbox.address_display} created.")
            return redirect("mailboxes:mailbox-list")
    domains = selectors.domains_manageable(actor=request.user)
    return render(
        request, "mailboxes/mailbox_form.html", {"form": form, "creating": True, "domains": domains}
    )


@admin_required
@sensitive_post_parameters("password")
def mailbox_edit_view(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    """Full edit page, or with HTMX the inline row editor (GET) and its save (POST)."""
    mailbox = selectors.mailbox_get(actor=request.user, mailbox_id=mailbox_id)
    initial = {
        "display_name": mailbox.display_name,
        "quota_mib": mailbox.quota_bytes // (1024 * 1024),
        "is_active": mailbox.is_active,
        "save_sent_copy": mailbox.save_sent_copy,
        "max_messages_per_hour": mailbox.max_messages_per_hour,
        "max_recipients_per_hour": mailbox.max_recipients_per_hour,
    }
    form = MailboxUpdateForm(request.POST or None, initial=initial)
    inline = htmx_partial(request)
    if request.method == "POST" and form.is_valid():
        try:
            mailbox = services.mailbox_update(actor=request.user, mailbox=mailbox, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            if inline:
                return render(request, "mailboxes/partials/mailbox_row.html", {"mailbox": mailbox})
            messages.success(request, f"Mailbox {mailbox.address_display} saved.")
            return redirect("mailboxes:mailbox-list")
    if inline:
        status = 422 if request.method == "POST" else 200
        return render(
            request,
            "mailboxes/partials/mailbox_row_edit.html",
            {"mailbox": mailbox, "form": form},
            status=status,
        )
    under_hold = services.mailbox_under_hold(mailbox=mailbox)
    return render(
        request,
        "mailboxes/mailbox_form.html",
        {"form": form, "mailbox": mailbox, "under_legal_hold": under_hold},
    )


@admin_required
@require_POST
def mailbox_toggle_view(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    """Disable an active mailbox or enable a disabled one."""
    mailbox = selectors.mailbox_get(actor=request.user, mailbox_id=mailbox_id)
    if mailbox.is_active:
        mailbox = services.mailbox_disable(actor=request.user, mailbox=mailbox)
    else:
        mailbox = services.mailbox_enable(actor=request.user, mailbox=mailbox)
    if htmx_partial(request):
        return render(request, "mailboxes/partials/mailbox_row.html", {"mailbox": mailbox})
    state = "enabled" if mailbox.is_active else "disabled"
    messages.success(request, f"Mailbox {mailbox.address_display} {state}.")
    return redirect("mailboxes:mailbox-list")


@admin_required
def mailbox_delete_view(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    mailbox = selectors.mailbox_get(actor=request.user, mailbox_id=mailbox_id)
    if request.method == "POST":
        label = mailbox.address_display
        report = services.mailbox_delete(actor=request.user, mailbox=mailbox)
        messages.success(request, f"Mailbox {label} deleted. {_report_message(report)}")
        return redirect("mailboxes:mailbox-list")
    references = services.mailbox_references(mailbox=mailbox)
    consequences = ["the mailbox, its folders and its mail"]
    consequences += [f"its place in alias {address}" for address in references]
    return render(
        request,
        "mailboxes/confirm_delete.html",
        {
            "object_label": f"mailbox {mailbox.address_display}",
            "consequences": consequences,
            "cancel_url": "mailboxes:mailbox-list",
        },
    )


# --- Aliases ---------------------------------------------------------------------------


@login_required
def alias_list_view(request: HttpRequest) -> HttpResponse:
    return _list_page(
        request,
        selectors.alias_list(actor=request.user),
        search=("address", "description", "destinations__address"),
        template="mailboxes/alias_list.html",
        partial="mailboxes/partials/alias_table.html",
    )


@admin_required
def alias_create_view(request: HttpRequest) -> HttpResponse:
    form = AliasForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            alias = services.alias_create(actor=request.user, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Alias {alias.address_display} created.")
            return redirect("mailboxes:alias-list")
    return render(request, "mailboxes/alias_form.html", {"form": form, "creating": True})


@admin_required
def alias_edit_view(request: HttpRequest, alias_id: int) -> HttpResponse:
    alias = selectors.alias_get(actor=request.user, alias_id=alias_id)
    initial = {
        "destinations": "\n".join(row.address for row in alias.destinations.all()),
        "description": alias.description,
        "is_active": alias.is_active,
        "send_as": "\n".join(mailbox.address for mailbox in alias.send_as.all()),
    }
    form = AliasForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        try:
            services.alias_update(actor=request.user, alias=alias, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Alias {alias.address_display} saved.")
            return redirect("mailboxes:alias-list")
    return render(request, "mailboxes/alias_form.html", {"form": form, "alias": alias})


@admin_required
def alias_delete_view(request: HttpRequest, alias_id: int) -> HttpResponse:
    alias = selectors.alias_get(actor=request.user, alias_id=alias_id)
    if request.method == "POST":
        label = alias.address_display
        report = services.alias_delete(actor=request.user, alias=alias)
        messages.success(request, f"Alias {label} deleted. {_report_message(report)}")
        return redirect("mailboxes:alias-list")
    return render(
        request,
        "mailboxes/confirm_delete.html",
        {
            "object_label": f"alias {alias.address_display}",
            "consequences": ["the alias", "its place in other aliases' destinations"],
            "cancel_url": "mailboxes:alias-list",
        },
    )
