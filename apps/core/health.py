"""Readiness checks: the database, the broker and the blob directory."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.core.models import WorkerHeartbeat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_database() -> CheckResult:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        logger.warning("readiness: database check failed: %s", exc)
        return CheckResult("database", False, f"{type(exc).__name__} (details in the server log)")
    return CheckResult("database", True, connection.vendor)


def check_broker() -> CheckResult:
    from celery_workers import app

    # What Celery actually uses, not what the settings say: they must agree.
    scheme = app.conf.broker_url.split("://", 1)[0]

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001
        logger.warning("readiness: broker check failed: %s", exc)
        return CheckResult("broker", False, f"{scheme}: {type(exc).__name__} (details in the server log)")
    return CheckResult("broker", True, scheme)


def check_blob_dir() -> CheckResult:
    directory = settings.A3_BLOB_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ready-", delete=True) as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        logger.warning("readiness: blob store check failed: %s", exc)
        return CheckResult("blob_store", False, f"not writable: {exc.strerror or type(exc).__name__}")
    return CheckResult("blob_store", True, str(directory))


def worker_heartbeat_age() -> float | None:
    """Seconds since any worker last ran its heartbeat; None if none has yet."""
    latest = WorkerHeartbeat.objects.order_by("-last_seen").values_list("last_seen", flat=True).first()
    if latest is None:
        return None
    return (timezone.now() - latest).total_seconds()


def readiness() -> list[CheckResult]:
    return [check_database(), check_broker(), check_blob_dir()]
