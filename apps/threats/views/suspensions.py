"""Dashboard page of suspended sending accounts (administrators, scoped to their
domains): the active suspensions and the recently lifted ones, with a button that
restores sending."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from apps.core.exceptions import NotFoundError
from apps.core.permissions import admin_required
from apps.threats import selectors
from apps.threats.services.behaviour import suspension_lift

RECENT = timedelta(days=30)


@admin_required
def suspension_list_view(request: HttpRequest) -> HttpResponse:
    rows = selectors.suspensions_visible_to(request.user).order_by("-created_at", "-id")
    active = list(rows.filter(lifted_at__isnull=True))
    recent = list(rows.filter(lifted_at__gte=timezone.now() - RECENT)[:50])
    return render(request, "threats/suspension_list.html", {"active": active, "recent": recent})


@admin_required
@require_POST
def suspension_lift_view(request: HttpRequest, suspension_id: int) -> HttpResponse:
    suspension = selectors.suspensions_visible_to(request.user).filter(pk=suspension_id).first()
    if suspension is None:
        raise NotFoundError("No such suspension.")
    suspension = suspension_lift(actor=request.user, suspension=suspension, request=request)
    messages.success(request, f"Sending restored for {suspension.mailbox.address}.")
    return redirect("threats:suspension-list")
