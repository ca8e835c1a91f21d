from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.alerts import selectors as alert_selectors
from apps.core import health
from apps.mailboxes import selectors as mailbox_selectors


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers HTTP."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database, the broker and the blob store all work, else 503
    with the reasons."""
    results = health.readiness()
    ok = all(result.ok for result in results)
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
        "worker_heartbeat_age_seconds": health.worker_heartbeat_age(),
    }
    return JsonResponse(body, status=200 if ok else 503)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    counts = mailbox_selectors.overview_counts(actor=request.user)
    alerts = alert_selectors.alert_list(actor=request.user)[:20] if request.user.is_admin else []
    return render(request, "core/overview.html", {"counts": counts, "alerts": alerts})
