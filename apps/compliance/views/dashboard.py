"""The compliance dashboard: retention, legal holds, GDPR jobs, DLP hits and the state of
the audit chain on one page, for administrators (apps.compliance.selectors)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.compliance import selectors
from apps.core.permissions import admin_required


@admin_required
def dashboard_view(request: HttpRequest) -> HttpResponse:
    return render(request, "compliance/dashboard.html", selectors.dashboard_summary(actor=request.user))
