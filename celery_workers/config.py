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
    # Exports and erasures are long, disk-heavy jobs: kept off the mail and default queues.
    "compliance.*": {"queue": "backup"},
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
    "compliance.audit_prune": {
        "task": "compliance.audit_prune",
        "schedule": crontab(minute=37, hour=3),
    },
    "compliance.audit_stream": {  # does nothing unless A3_AUDIT_SYSLOG / A3_AUDIT_WEBHOOK_URL is set
        "task": "compliance.audit_stream",
        "schedule": timedelta(minutes=1),
        "options": {"expires": 55},
    },
    "compliance.retention_apply": {
        "task": "compliance.retention_apply",
        "schedule": crontab(minute=7, hour=2),
    },
    "compliance.exports_expire": {
        "task": "compliance.exports_expire",
        "schedule": crontab(minute=11),
    },
    "threats.bayes_prune": {
        "task": "threats.bayes_prune",
        "schedule": crontab(minute=47, hour=4),
    },
    "threats.quarantine_expire": {
        "task": "threats.quarantine_expire",
        "schedule": crontab(minute=29),
    },
    "threats.digests_send": {
        "task": "threats.digests_send",
        "schedule": crontab(minute=3),
    },
    "threats.behaviour_watch": {
        "task": "threats.behaviour_watch",
        "schedule": timedelta(minutes=5),
        "options": {"expires": 240},
    },
    "compliance.jobs_requeue_stalled": {
        "task": "compliance.jobs_requeue_stalled",
        "schedule": timedelta(minutes=5),
        "options": {"expires": 120},
    },
}
