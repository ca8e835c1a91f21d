from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a3mailer.settings")

app = Celery("a3mailer", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.config_from_object("celery_workers.config")
app.autodiscover_tasks()

import celery_workers.hooks  # noqa: E402,F401  (worker signal hooks)
