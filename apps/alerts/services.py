from __future__ import annotations

import logging
from typing import TypedDict

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.alerts.groups import ALL_ALERTS_GROUP, domain_group
from apps.alerts.models import Alert
from apps.core.metrics import ALERTS_EMITTED
from apps.core.realtime import broadcast_on_commit

logger = logging.getLogger(__name__)


class AlertEvent(TypedDict):
    id: int
    kind: str
    level: str
    message: str
    created_at: str
    domain_id: int | None
    data: dict


def alert_event(alert: Alert) -> AlertEvent:
    """The JSON object pushed over /ws/alerts/ and returned by the API."""
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "level": alert.level,
        "message": alert.message,
        "created_at": alert.created_at.isoformat(),
        "domain_id": alert.domain_id,
        "data": alert.data,
    }


def emit(kind: str, level: str, message: str, *, domain_id: int | None = None, **data: object) -> Alert:
    """Persist an alert, then push it to connected dashboards once the transaction commits.

    Runs inside the caller's transaction: if that rolls back, neither the row nor the push
    happens. `data` must be JSON-serialisable and must never hold secrets.
    """
    if level not in Alert.Level.values:
        raise ValueError(f"unknown alert level {level!r}")
    alert = Alert.objects.create(
        kind=kind, level=level, message=message[:500], data=data, domain_id=domain_id
    )
    ALERTS_EMITTED.labels(level=level).inc()
    logger.info("alert %s", kind, extra={"alert_id": alert.pk, "alert_level": level})
    event = alert_event(alert)
    groups = [ALL_ALERTS_GROUP] + ([domain_group(domain_id)] if domain_id is not None else [])
    for group in groups:
        broadcast_on_commit(group=group, type="alerts.created", payload=dict(event))
    return alert


@transaction.atomic
def alert_acknowledge(*, alert: Alert) -> Alert:
    """Mark an alert as seen; acknowledging twice keeps the first time."""
    if alert.acknowledged_at is None:
        alert.acknowledged_at = timezone.now()
        alert.save(update_fields=["acknowledged_at"])
    return alert


def alerts_prune(*, older_than_days: int | None = None) -> int:
    """Delete alerts older than the retention period; returns how many went."""
    days = settings.A3_ALERT_RETENTION_DAYS if older_than_days is None else older_than_days

    cutoff = timezone.now() - timezone.timedelta(days=days)
    deleted, _ = Alert.objects.filter(created_at__lt=cutoff).delete()
    return deleted
