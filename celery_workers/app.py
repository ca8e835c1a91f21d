from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "a3mailer.settings")

app = Celery("a3mailer", task_cls="celery.contrib.django.task:DjangoTask")
# One configuration source: Django settings (CELERY_*: broker, acks, limits). Queues,
# routes and the beat schedule from celery_workers.config go on top with conf.update,
# because a second config_from_object would replace the first source, not extend it.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _apply_routing(sender: Celery, **kwargs: object) -> None:
    from celery_workers import config

    sender.conf.update(
        task_queues=config.task_queues,
        task_default_queue=config.task_default_queue,
        task_routes=config.task_routes,
        beat_schedule=config.beat_schedule,
    )


import celery_workers.hooks  # noqa: E402,F401  (worker signal hooks)
