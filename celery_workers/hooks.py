"""Worker-side hooks: database connection hygiene around every task."""

from __future__ import annotations

from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections


@task_prerun.connect
def _close_stale_connections_before(**_: object) -> None:
    close_old_connections()


@task_postrun.connect
def _close_stale_connections_after(**_: object) -> None:
    close_old_connections()
