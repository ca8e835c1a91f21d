from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.alerts import selectors, services
from apps.alerts.models import Alert
from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required


@admin_required
def alert_list_view(request: HttpRequest) -> HttpResponse:
    alerts = selectors.alert_list(actor=request.user)
    level = request.GET.get("level", "")
    if level in Alert.Level.values:
        alerts = alerts.filter(level=level)
    page = Paginator(alerts, 50).get_page(request.GET.get("page"))
    template = "alerts/partials/alert_table.html" if htmx_partial(request) else "alerts/alert_list.html"
    return render(request, template, {"page": page, "level": level, "levels": Alert.Level.choices})


@admin_required
@require_POST
def alert_acknowledge_view(request: HttpRequest, alert_id: int) -> HttpResponse:
    alert = services.alert_acknowledge(alert=selectors.alert_get(actor=request.user, alert_id=alert_id))
    if request.htmx:
        return render(request, "alerts/partials/alert_row.html", {"alert": alert})
    return redirect("alerts:list")
