"""Compliance tasks: thin wrappers around the services, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.compliance import services
from apps.compliance.services import gdpr
from apps.core.exceptions import TemporaryFailure


@shared_task(name="compliance.audit_prune", acks_late=True, soft_time_limit=600, time_limit=660)
def audit_prune_task() -> int:
    return services.audit_prune()


@shared_task(
    name="compliance.audit_stream",
    acks_late=True,
    autoretry_for=(TemporaryFailure,),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=240,
    time_limit=300,
)
def audit_stream_task() -> dict[str, int]:
    return services.audit_stream_send()


@shared_task(name="compliance.retention_apply", acks_late=True, soft_time_limit=3000, time_limit=3300)
def retention_apply_task() -> int:
    """Apply the retention policies; returns how many items went."""
    return services.retention_apply().deleted_items


# --- GDPR exports and erasure ----------------------------------------------------------


@shared_task(name="compliance.export", acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 300)
def export_run_task(*, job_id: int) -> None:
    gdpr.export_run(job_id=job_id)


@shared_task(name="compliance.erasure", acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 300)
def erasure_run_task(*, job_id: int) -> None:
    gdpr.erasure_run(job_id=job_id)


@shared_task(name="compliance.exports_expire", acks_late=True, soft_time_limit=600, time_limit=660)
def exports_expire_task() -> int:
    return gdpr.exports_expire()


@shared_task(name="compliance.jobs_requeue_stalled", acks_late=True, soft_time_limit=60, time_limit=90)
def compliance_jobs_requeue_stalled_task() -> int:
    return gdpr.compliance_jobs_requeue_stalled()
