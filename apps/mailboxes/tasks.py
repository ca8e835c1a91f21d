from celery import shared_task

from apps.mailboxes import services


@shared_task(
    name="mailboxes.deliver", acks_late=True, soft_time_limit=120, time_limit=150, ignore_result=True
)
def message_deliver_task(*, message_id: int) -> None:
    services.message_deliver(message_id=message_id)


@shared_task(name="mailboxes.requeue_stalled", acks_late=True, soft_time_limit=60, time_limit=90)
def messages_requeue_stalled_task() -> int:
    return services.messages_requeue_stalled()


@shared_task(name="mailboxes.sweep_orphan_blobs", acks_late=True, soft_time_limit=600, time_limit=660)
def blobs_sweep_orphans_task() -> int:
    return services.blobs_sweep_orphans()
