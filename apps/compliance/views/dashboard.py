"""The compliance dashboard: retention, legal holds, GDPR jobs, DLP hits and the state of
the audit chain on one page, for administrators.

Domain admins see what concerns their domains (retention policies, holds, DLP); the
server-wide parts (retention runs, GDPR jobs, the audit chain) are for superadmins.

The retention chart is an SVG drawn here, server-side: the page needs no script, and
the bars are sized with SVG attributes, which the content security policy allows where
inline styles are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from django.core.cache import cache
from django.db.models import Q, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from apps.compliance.models import ComplianceJob, LegalHold, RetentionPolicy, RetentionRun
from apps.compliance.services import dlp as dlp_services
from apps.core.permissions import admin_required
from apps.mailboxes.models import Domain

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

CHART_DAYS = 30
AUDIT_STATUS_CACHE_KEY = "compliance.audit_verify.last"
AUDIT_STATUS_TTL = 6 * 3600
# Verifying walks the whole chain; below this many events it is quick enough to do while
# the page renders when no cached result exists. Above, the page waits for "verify now".
AUDIT_INLINE_VERIFY_MAX = 20_000


@dataclass(frozen=True)
class Bar:
    day: date
    value: int
    x: int
    y: int
    height: int


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    bar_width: int
    maximum: int
    total: int


def _retention_chart(*, days: int = CHART_DAYS) -> Chart:
    """Mail deleted by retention (real runs, not dry runs) per day over the last `days`."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    per_day = dict(
        RetentionRun.objects.filter(dry_run=False, started_at__date__gte=first)
        .annotate(day=TruncDate("started_at"))
        .values("day")
        .annotate(total=Sum("deleted_items"))
        .values_list("day", "total")
    )
    slot, bar_width, plot_height, top = 20, 14, 120, 10
    maximum = max([*per_day.values(), 0])
    bars = []
    for index in range(days):
        day = first + timedelta(days=index)
        value = int(per_day.get(day) or 0)
        height = round(plot_height * value / maximum) if maximum else 0
        if value and height < 2:
            height = 2  # a day with deletions stays visible next to a huge one
        bars.append(
            Bar(day=day, value=value, x=index * slot + 3, y=top + plot_height - height, height=height)
        )
    return Chart(
        bars=bars,
        width=days * slot,
        height=top + plot_height + 20,
        bar_width=bar_width,
        maximum=maximum,
        total=sum(per_day.values()),
    )


def _audit_url() -> str | None:
    for name in ("compliance:audit-log", "compliance:audit-list", "compliance:audit"):
        try:
            return reverse(name)
        except NoReverseMatch:
            continue
    return None


def _audit_status() -> dict[str, object] | None:
    """The last audit-chain verification (cached), verifying now when the chain is short;
    None when the audit service is not installed."""
    try:
        from apps.compliance.models import AuditEvent
        from apps.compliance.services.audit import audit_verify
    except ImportError:
        return None
    status = cache.get(AUDIT_STATUS_CACHE_KEY)
    if status is None and AuditEvent.objects.count() <= AUDIT_INLINE_VERIFY_MAX:
        result = audit_verify()
        status = {
            "ok": result.ok,
            "checked": result.checked,
            "first_broken_id": result.first_broken_id,
            "reason": result.reason,
            "verified_at": timezone.now(),
        }
        cache.set(AUDIT_STATUS_CACHE_KEY, status, AUDIT_STATUS_TTL)
    return status or {"ok": None}


def _dashboard_context(actor: User) -> dict[str, object]:
    now = timezone.now()
    domains = Domain.objects.manageable_by(actor)
    policies = RetentionPolicy.objects.filter(is_active=True)
    holds = LegalHold.objects.filter(released_at__isnull=True).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=now)
    )
    if not actor.is_superadmin:
        policies = policies.filter(Q(domain__isnull=True) | Q(domain__in=domains))
        holds = holds.filter(Q(domain__in=domains) | Q(mailbox__domain__in=domains))
    context: dict[str, object] = {
        "retention_policies": policies.count(),
        "legal_holds": holds.count(),
        "dlp_by_category": dlp_services.dlp_hits_by_category(actor=actor, days=CHART_DAYS),
        "dlp_policies": dlp_services.dlp_policy_list(actor=actor).filter(is_active=True).count(),
        "chart_days": CHART_DAYS,
    }
    if actor.is_superadmin:
        jobs = ComplianceJob.objects.defer("report")
        context.update(
            exports=list(jobs.filter(kind=ComplianceJob.Kind.EXPORT)[:5]),
            erasures=list(jobs.filter(kind=ComplianceJob.Kind.ERASURE)[:5]),
            last_run=RetentionRun.objects.filter(dry_run=False).first(),
            chart=_retention_chart(),
            audit_status=_audit_status(),
            audit_url=_audit_url(),
        )
    return context


@admin_required
def dashboard_view(request: HttpRequest) -> HttpResponse:
    return render(request, "compliance/dashboard.html", _dashboard_context(request.user))
