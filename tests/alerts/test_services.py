import asyncio
import logging
import uuid
from datetime import timedelta

import pytest
import time_machine
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from apps.alerts import services
from apps.alerts.groups import ALL_ALERTS_GROUP, domain_group
from apps.alerts.models import Alert

pytestmark = pytest.mark.django_db


class GroupListener:
    """A channel subscribed to channel-layer groups.

    Every read is one completed `receive` (never a timed-out one: a cancelled receive
    leaves channels_redis state bound to a dead event loop). To show that nothing is
    waiting, a marker is sent straight to the channel and must be the next message.
    """

    def __init__(self, *groups):
        self.layer = get_channel_layer()
        self.groups = groups
        self.channel = async_to_sync(self.layer.new_channel)()
        for group in groups:
            async_to_sync(self.layer.group_add)(group, self.channel)

    def receive(self):
        async def receive():
            return await asyncio.wait_for(self.layer.receive(self.channel), 10)

        return async_to_sync(receive)()

    def assert_nothing_pending(self):
        marker = {"type": "test.marker", "nonce": uuid.uuid4().hex}
        async_to_sync(self.layer.send)(self.channel, marker)
        assert self.receive() == marker

    def close(self):
        for group in self.groups:
            async_to_sync(self.layer.group_discard)(group, self.channel)


@pytest.fixture
def listen():
    listeners = []

    def make(*groups):
        listener = GroupListener(*groups)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


def test_emit_persists_alert(db):
    alert = services.emit("disk.full", "error", "Disk is full.", domain_id=7, path="/var", free=0)

    stored = Alert.objects.get(pk=alert.pk)
    assert (stored.kind, stored.level, stored.message, stored.domain_id) == (
        "disk.full",
        "error",
        "Disk is full.",
        7,
    )
    assert stored.data == {"path": "/var", "free": 0}
    assert stored.acknowledged_at is None


def test_emit_truncates_long_message(db):
    alert = services.emit("x.long", "info", "y" * 800)

    assert len(Alert.objects.get(pk=alert.pk).message) == 500


def test_emit_pushes_only_after_commit(listen, django_capture_on_commit_callbacks):
    listener = listen(ALL_ALERTS_GROUP)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alert = services.emit("queue.stuck", "warning", "Queue is stuck.")

    assert Alert.objects.filter(pk=alert.pk).exists()
    assert len(callbacks) == 1
    listener.assert_nothing_pending()  # nothing was sent before the commit

    callbacks[0]()

    message = listener.receive()
    assert message["type"] == "alerts.created"
    assert message["payload"] == {
        "id": alert.pk,
        "kind": "queue.stuck",
        "level": "warning",
        "message": "Queue is stuck.",
        "created_at": alert.created_at.isoformat(),
        "domain_id": None,
        "data": {},
    }


def test_emit_pushes_to_all_and_domain_groups_on_commit(listen, django_capture_on_commit_callbacks):
    everything = listen(ALL_ALERTS_GROUP)
    domain_7 = listen(domain_group(7))
    domain_8 = listen(domain_group(8))

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        alert = services.emit("mailbox.full", "warning", "Mailbox is full.", domain_id=7)

    assert len(callbacks) == 2
    assert everything.receive()["payload"]["id"] == alert.pk
    domain_message = domain_7.receive()
    assert domain_message["payload"]["id"] == alert.pk
    assert domain_message["payload"]["domain_id"] == 7
    domain_8.assert_nothing_pending()
    everything.assert_nothing_pending()  # once per group, not per listener


def test_emit_global_alert_is_not_pushed_to_domain_groups(listen, django_capture_on_commit_callbacks):
    domain_7 = listen(domain_group(7))

    with django_capture_on_commit_callbacks(execute=True):
        services.emit("system.restart", "info", "Restarted.")

    domain_7.assert_nothing_pending()


def test_emit_rollback_leaves_no_row_and_no_push(listen, django_capture_on_commit_callbacks):
    listener = listen(ALL_ALERTS_GROUP)

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.emit("doomed", "critical", "Never happened.", domain_id=3)
        raise RuntimeError("the caller failed")

    assert not Alert.objects.filter(kind="doomed").exists()
    assert callbacks == []
    listener.assert_nothing_pending()


@pytest.mark.parametrize("level", ["fatal", "WARNING", "", None])
def test_emit_rejects_invalid_level(db, level):
    with pytest.raises(ValueError, match="unknown alert level"):
        services.emit("x.bad", level, "Bad level.")

    assert not Alert.objects.exists()


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
)
def test_emit_survives_unreachable_channel_layer(django_capture_on_commit_callbacks, caplog):
    with (
        caplog.at_level(logging.ERROR, logger="apps.core.realtime"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        alert = services.emit("x.offline", "info", "Pushed nowhere.")

    assert Alert.objects.filter(pk=alert.pk).exists()
    assert any("realtime broadcast to alerts.all failed" in r.getMessage() for r in caplog.records)


def test_alert_acknowledge_keeps_first_time(db):
    alert = services.emit("x.ack", "info", "Ack me.")
    with time_machine.travel("2030-05-01 10:00:00+00:00", tick=False) as traveller:
        services.alert_acknowledge(alert=alert)
        first = Alert.objects.get(pk=alert.pk).acknowledged_at
        traveller.shift(timedelta(hours=1))
        services.alert_acknowledge(alert=Alert.objects.get(pk=alert.pk))

    assert first is not None
    assert Alert.objects.get(pk=alert.pk).acknowledged_at == first


@override_settings(A3_ALERT_RETENTION_DAYS=30)
def test_alerts_prune_deletes_alerts_older_than_retention(db):
    now = timezone.now()
    old = services.emit("x.old", "info", "Old.")
    recent = services.emit("x.recent", "info", "Recent.")
    Alert.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=31))
    Alert.objects.filter(pk=recent.pk).update(created_at=now - timedelta(days=29))

    assert services.alerts_prune() == 1

    assert list(Alert.objects.values_list("kind", flat=True)) == ["x.recent"]


def test_alerts_prune_accepts_explicit_age(db):
    now = timezone.now()
    alerts = [services.emit(f"x.{days}", "info", "Aged.") for days in (1, 5, 10)]
    for alert, days in zip(alerts, (1, 5, 10), strict=True):
        Alert.objects.filter(pk=alert.pk).update(created_at=now - timedelta(days=days))

    assert services.alerts_prune(older_than_days=3) == 2

    assert list(Alert.objects.values_list("kind", flat=True)) == ["x.1"]
    assert services.alerts_prune(older_than_days=3) == 0
