"""The audit log page: filter, page through, download, and check the chain."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from apps.compliance import selectors, services
from apps.compliance.api.audit import AuditEventFilter
from apps.core.htmx import htmx_partial
from apps.core.permissions import superadmin_required

FILTER_FIELDS = ("action", "actor_email", "target_type", "target_id", "since", "until")


@superadmin_required
def audit_log_view(request: HttpRequest) -> HttpResponse:
    events = AuditEventFilter(request.GET, queryset=services.audit_event_list(actor=request.user)).qs
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    filters = {name: request.GET.get(name, "") for name in FILTER_FIELDS}
    export_query = request.GET.copy()
    export_query.pop("page", None)
    context = {"page": page, "filters": filters, "export_query": export_query.urlencode()}
    template = (
        "compliance/partials/audit_table.html" if htmx_partial(request) else "compliance/audit_log.html"
    )
    return render(request, template, context)


@superadmin_required
@require_POST
def audit_verify_view(request: HttpRequest) -> HttpResponse:
    result = services.audit_verify()
    selectors.audit_status_store(result)  # the dashboard shows the latest verification
    if request.htmx:
        return render(request, "compliance/partials/audit_chain_status.html", {"result": result})
    page = Paginator(services.audit_event_list(actor=request.user), 50).get_page(1)
    context = {
        "page": page,
        "filters": dict.fromkeys(FILTER_FIELDS, ""),
        "export_query": "",
        "result": result,
    }
    return render(request, "compliance/audit_log.html", context)
