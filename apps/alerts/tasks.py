from celery import shared_task

from apps.alerts import services


@shared_task(name="alerts.prune", acks_late=True, soft_time_limit=120, time_limit=180)
def alerts_prune_task() -> int:
    return services.alerts_prune()
