from celery import shared_task

from apps.core import services


@shared_task(name="core.heartbeat", acks_late=True, soft_time_limit=20, time_limit=30)
def worker_heartbeat_record_task() -> None:
    services.worker_heartbeat_record()
