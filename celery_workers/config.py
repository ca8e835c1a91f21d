"""Queues, routing and the beat schedule. Task code lives in each app's tasks.py."""

from __future__ import annotations

from datetime import timedelta

from celery.schedules import crontab
from django.conf import settings
from kombu import Queue

QUEUES = ("default", "mail", "scan", "backup")

task_queues = [Queue(name) for name in QUEUES]
task_default_queue = "default"

# Route by workload, keyed on the explicit task names ("<app>.<service>").
task_routes = {
    "mailboxes.*": {"queue": "mail"},
    "relay.*": {"queue": "mail"},
    "threats.*": {"queue": "scan"},
    "backups.*": {"queue": "backup"},
}

beat_schedule = {
    "core.heartbeat": {
        "task": "core.heartbeat",
        "schedule": timedelta(seconds=settings.A3_HEARTBEAT_SECONDS),
        "options": {"expires": settings.A3_HEARTBEAT_SECONDS},
    },
    "mailboxes.requeue_stalled": {
        "task": "mailboxes.requeue_stalled",
        "schedule": timedelta(seconds=max(5, settings.A3_DELIVERY_SWEEP_AFTER_SECONDS // 2)),
        "options": {"expires": 30},
    },
    "relay.requeue_stalled": {
        "task": "relay.requeue_stalled",
        "schedule": timedelta(seconds=max(5, settings.A3_RELAY_SWEEP_AFTER_SECONDS // 2)),
        "options": {"expires": 30},
    },
    "relay.watch": {
        "task": "relay.watch",
        "schedule": timedelta(minutes=5),
        "options": {"expires": 120},
    },
    "mailboxes.sweep_orphan_blobs": {
        "task": "mailboxes.sweep_orphan_blobs",
        "schedule": crontab(minute=41),
    },
    "alerts.prune": {
        "task": "alerts.prune",
        "schedule": crontab(minute=17, hour=3),
    },
    "accounts.purge_expired_tokens": {
        "task": "accounts.purge_expired_tokens",
        "schedule": crontab(minute=23, hour=3),
    },
}
