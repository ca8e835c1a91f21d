"""Reads for the compliance dashboard: counts scoped to the viewer, the retention chart and
the last audit-chain verification."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.core.cache import cache
from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.compliance.models import AuditEvent, ComplianceJob, RetentionRun
from apps.compliance.services import dlp as dlp_services
from apps.compliance.services.audit import VerifyResult, audit_verify
from apps.compliance.services.holds import holds_active, legal_hold_list
from apps.compliance.services.retention import retention_policy_list
from apps.core.charts import Chart, daily_chart

if TYPE_CHECKING:
    from apps.accounts.models import User

CHART_DAYS = 30
AUDIT_STATUS_CACHE_KEY = "compliance.audit_verify.last"
AUDIT_STATUS_TTL = 6 * 3600
# Verifying walks the whole chain; below this many events it is quick enough to do while
# the page renders when no cached result exists. Above, the page waits for "verify now".
AUDIT_INLINE_VERIFY_MAX = 20_000


def retention_chart(*, days: int = CHART_DAYS) -> Chart:
    """Mail deleted by retention (real runs, not dry runs) per day over the last `days`,
    laid out as SVG bars (attributes, not styles: the CSP refuses inline styles)."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    per_day = dict(
        RetentionRun.objects.filter(dry_run=False, started_at__date__gte=first)
        .annotate(day=TruncDate("started_at"))
        .values("day")
        .annotate(total=Sum("deleted_items"))
        .values_list("day", "total")
    )
    return daily_chart({"deleted": per_day}, days=days, today=today)


def audit_status_store(result: VerifyResult) -> dict[str, object]:
    """Remember a verification for the dashboard (whoever ran it)."""
    status = {
        "ok": result.ok,
        "checked": result.checked,
        "first_broken_id": result.first_broken_id,
        "reason": result.reason,
        "verified_at": timezone.now(),
    }
    cache.set(AUDIT_STATUS_CACHE_KEY, status, AUDIT_STATUS_TTL)
    return status


def audit_status() -> dict[str, object]:
    """The last audit-chain verification, verifying now when none is cached and the chain
    is short; {"ok": None} when it is long and nobody verified it lately."""
    status = cache.get(AUDIT_STATUS_CACHE_KEY)
    if status is None and AuditEvent.objects.count() <= AUDIT_INLINE_VERIFY_MAX:
        status = audit_status_store(audit_verify())
    return status or {"ok": None}


def dashboard_summary(*, actor: User) -> dict[str, object]:
    """What the dashboard shows: domain admins what concerns their domains, superadmins
    also the server-wide parts (retention runs, GDPR jobs, the audit chain)."""
    summary: dict[str, object] = {
        "retention_policies": retention_policy_list(actor=actor).filter(is_active=True).count(),
        "legal_holds": legal_hold_list(actor=actor).filter(pk__in=holds_active().values("pk")).count(),
        "dlp_by_category": dlp_services.dlp_hits_by_category(actor=actor, days=CHART_DAYS),
        "dlp_policies": dlp_services.dlp_policy_list(actor=actor).filter(is_active=True).count(),
        "chart_days": CHART_DAYS,
    }
    if actor.is_superadmin:
        jobs = ComplianceJob.objects.defer("report")
        summary.update(
            exports=list(jobs.filter(kind=ComplianceJob.Kind.EXPORT)[:5]),
            erasures=list(jobs.filter(kind=ComplianceJob.Kind.ERASURE)[:5]),
            last_run=RetentionRun.objects.filter(dry_run=False).first(),
            chart=retention_chart(),
            audit_status=audit_status(),
        )
    return summary
