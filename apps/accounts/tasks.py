from celery import shared_task

from apps.accounts import services


@shared_task(name="accounts.purge_expired_tokens", acks_late=True, soft_time_limit=120, time_limit=180)
def api_tokens_purge_expired_task() -> int:
    return services.api_tokens_purge_expired()
