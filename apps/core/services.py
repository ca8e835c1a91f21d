from __future__ import annotations

import socket

from django.utils import timezone

from apps.core.models import WorkerHeartbeat


def worker_heartbeat_record(*, hostname: str | None = None) -> WorkerHeartbeat:
    """Record that a worker on this host ran a beat-scheduled task just now. Idempotent."""
    heartbeat, _ = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname or socket.gethostname(), defaults={"last_seen": timezone.now()}
    )
    return heartbeat
