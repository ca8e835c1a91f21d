from celery import shared_task

from apps.threats import services
from apps.threats.services.behaviour import auth_anomaly_check
from apps.threats.services.digests import digests_send


@shared_task(name="threats.scan", acks_late=True, soft_time_limit=120, time_limit=150, ignore_result=True)
def message_scan_task(*, message_id: int) -> None:
    """Scan a newly accepted message on the scan queue, then hand it to delivery."""
    services.message_scan_then_deliver(message_id=message_id)


@shared_task(name="threats.quarantine_expire", acks_late=True, soft_time_limit=300, time_limit=360)
def quarantine_expire_task() -> int:
    return services.quarantine_expire()


@shared_task(name="threats.digests_send", acks_late=True, soft_time_limit=600, time_limit=660)
def digests_send_task() -> int:
    """Send the quarantine digests that are due (hourly; each mailbox at its frequency)."""
    return digests_send()


@shared_task(name="threats.behaviour_watch", acks_late=True, soft_time_limit=120, time_limit=150)
def behaviour_watch_task() -> int:
    """Look for distributed password guessing against single accounts (every 5 minutes)."""
    return auth_anomaly_check()


@shared_task(name="threats.bayes_prune", acks_late=True, soft_time_limit=600, time_limit=660)
def bayes_prune_task() -> int:
    return services.bayes_prune()
