from celery import shared_task

from apps.relay import services


# The soft limit covers a whole pass: every command has its own timeout
# (A3_RELAY_COMMAND_TIMEOUT_SECONDS) and a pass stops taking new items after two of them.
@shared_task(name="relay.deliver", acks_late=True, soft_time_limit=1500, time_limit=1560, ignore_result=True)
def queue_deliver_task(*, item_id: int) -> None:
    services.queue_deliver(item_id=item_id)


@shared_task(name="relay.requeue_stalled", acks_late=True, soft_time_limit=60, time_limit=90)
def queue_requeue_stalled_task() -> int:
    return services.queue_requeue_stalled()


@shared_task(name="relay.watch", acks_late=True, soft_time_limit=60, time_limit=90)
def queue_watch_task() -> list[str]:
    return services.queue_watch()
