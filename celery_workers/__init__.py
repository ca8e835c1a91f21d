"""The Celery app: `celery -A celery_workers worker` / `beat` in scale-out mode."""

from celery_workers.app import app

__all__ = ["app"]
