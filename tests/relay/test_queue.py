"""The outbound queue against real SMTP servers on loopback: sent, deferred and retried
on a controlled clock, bounced with a report, timeouts, MX order and the sweep."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Message
from apps.relay import services
from apps.relay.models import DeliveryAttempt, QueueItem, QueueRecipient, TransportRule
from tests.support.remote_mta import Behaviour, RemoteMta, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def rfc5322(
    *, sender: str = "alice@alpha.test", to: str = "bob@remote.test", body: str = "Hello Bob."
) -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: Hi\r\n"
        f"Message-ID: <m1@alpha.test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


@pytest.fixture
def remotes():
    started: list[RemoteMta] = []

    def start(behaviour: Behaviour | None = None, **kwargs) -> RemoteMta:
        mta = RemoteMta(behaviour, **kwargs).start()
        started.append(mta)
        return mta

    yield start
    for mta in started:
        mta.stop()


@pytest.fixture(autouse=True)
def fast_timeouts(settings):
    settings.A3_RELAY_COMMAND_TIMEOUT_SECONDS = 2
    settings.A3_RELAY_CONNECT_TIMEOUT_SECONDS = 2


def route(domain: str, mta: RemoteMta, tls: str = "opportunistic") -> TransportRule:
    return services.transport_rule_create(domain=domain, host=mta.host, port=mta.port, tls=tls)


def enqueue(raw: bytes, *, sender: str = "alice@alpha.test", recipients: list[str]) -> list[QueueItem]:
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(), mail_from=sender, recipients=(), raw=raw
    )
    with transaction.atomic():
        (message,) = mail_services.messages_accept(incoming=[incoming])
        return services.queue_items_create(
            message=message, sender=sender, recipients=[(r, "") for r in recipients]
        )


def deliver(item: QueueItem) -> QueueItem:
    services.queue_deliver(item_id=item.pk)
    item.refresh_from_db()
    return item


def states(item: QueueItem) -> dict[str, str]:
    return dict(QueueRecipient.objects.filter(item=item).values_list("address", "state"))


def reports_to(address: str) -> list[bytes]:
    messages = Message.objects.filter(mail_from="", recipients__address=address).order_by("id")
    return [blob_store().read(m.blob_sha256) for m in messages]


def test_items_are_split_per_recipient_domain(db):
    items = enqueue(rfc5322(), recipients=["a@one.test", "b@two.test", "c@one.test"])
    assert sorted((i.domain, sorted(states(i))) for i in items) == [
        ("one.test", ["a@one.test", "c@one.test"]),
        ("two.test", ["b@two.test"]),
    ]
    assert all(i.state == QueueItem.State.QUEUED and i.report_to == "alice@alpha.test" for i in items)


def test_accepting_server_gets_exact_message_over_starttls(remotes):
    mta = remotes()
    route("remote.test", mta)
    raw = rfc5322()
    (item,) = enqueue(raw, recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.SENT and item.finished_at is not None
    (got,) = mta.received
    assert got.mail_from == "alice@alpha.test" and got.recipients == ["bob@remote.test"]
    assert got.tls is True
    assert got.content.endswith(raw)
    attempt = DeliveryAttempt.objects.get(item=item)
    assert attempt.outcome == "sent" and attempt.tls and attempt.reply_code == 250
    assert "queued as R1" in attempt.reply
    assert states(item) == {"bob@remote.test": "sent"}


def test_plain_text_rule_does_not_starttls(remotes):
    mta = remotes()
    route("remote.test", mta, tls="none")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.SENT
    assert mta.received[0].tls is False


def test_required_tls_without_starttls_defers(remotes):
    mta = remotes(starttls=False)
    route("remote.test", mta, tls="required")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.DEFERRED
    assert mta.received == []
    assert "STARTTLS" in item.last_reply


def test_temporary_failure_is_retried_with_backoff_until_sent(remotes, settings):
    mta = remotes(Behaviour(rcpt_default="451 4.3.0 Greylisted, try later"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    with time_machine.travel(timezone.now(), tick=False) as clock:
        item = deliver(item)
        assert item.state == QueueItem.State.DEFERRED
        assert item.next_attempt_at == timezone.now() + timedelta(seconds=settings.A3_RELAY_RETRY_MIN_SECONDS)
        assert "451 4.3.0 Greylisted" in item.last_reply
        # Not due yet: a pass now does nothing.
        assert services.queue_deliver(item_id=item.pk) == 0
        clock.shift(timedelta(seconds=settings.A3_RELAY_RETRY_MIN_SECONDS))
        item = deliver(item)
        assert item.state == QueueItem.State.DEFERRED
        assert item.next_attempt_at - timezone.now() == timedelta(
            seconds=2 * settings.A3_RELAY_RETRY_MIN_SECONDS
        )
        mta.behaviour.rcpt_default = ""
        clock.shift(timedelta(seconds=2 * settings.A3_RELAY_RETRY_MIN_SECONDS))
        item = deliver(item)
    assert item.state == QueueItem.State.SENT and item.attempts == 3
    assert len(mta.received) == 1
    assert list(DeliveryAttempt.objects.filter(item=item).values_list("outcome", flat=True)) == [
        "deferred",
        "deferred",
        "sent",
    ]


def test_backoff_is_exponential_and_capped(settings):
    settings.A3_RELAY_RETRY_MIN_SECONDS = 300
    settings.A3_RELAY_RETRY_MAX_SECONDS = 3600
    assert [services.retry_delay(n).total_seconds() for n in range(1, 7)] == [
        300,
        600,
        1200,
        2400,
        3600,
        3600,
    ]


def test_permanent_failure_bounces_at_once_with_report_to_local_sender(remotes, mailbox_a):
    mta = remotes(Behaviour(rcpt_default="550 5.1.1 <bob@remote.test>: no such user"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.BOUNCED and item.attempts == 1
    recipient = QueueRecipient.objects.get(item=item)
    assert recipient.reply_code == 550 and "no such user" in recipient.reply
    (report,) = reports_to("alice@alpha.test")
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert "550 5.1.1" in report.decode(errors="replace")
    assert "bob@remote.test" in report.decode(errors="replace")


def test_partial_failure_sends_to_good_recipients_and_reports_bad_one(remotes, mailbox_a):
    mta = remotes(Behaviour(rcpt_reply={"bad@remote.test": "550 5.1.1 unknown"}))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["good@remote.test", "bad@remote.test"])
    item = deliver(item)
    assert states(item) == {"good@remote.test": "sent", "bad@remote.test": "bounced"}
    assert item.state == QueueItem.State.BOUNCED
    assert mta.received[0].recipients == ["good@remote.test"]
    assert DeliveryAttempt.objects.get(item=item).outcome == "partial"
    (report,) = reports_to("alice@alpha.test")
    assert b"bad@remote.test" in report and b"Final-Recipient: rfc822; good@remote.test" not in report


def test_null_sender_never_gets_a_report(remotes, mailbox_a):
    mta = remotes(Behaviour(rcpt_default="550 5.1.1 unknown"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), sender="", recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.BOUNCED
    assert not Message.objects.filter(mail_from="").exclude(pk=item.message_id).exists()


def test_mail_too_old_bounces_with_expiry_status(remotes, settings, mailbox_a):
    mta = remotes(Behaviour(rcpt_default="421 4.7.0 busy"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.A3_RELAY_MAX_AGE_SECONDS + 1)):
        QueueItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
        item = deliver(item)
    assert item.state == QueueItem.State.BOUNCED
    assert "4.4.7" in QueueRecipient.objects.get(item=item).reply
    (report,) = reports_to("alice@alpha.test")
    assert b"4.4.7" in report


def test_delay_warning_is_sent_once(remotes, settings, mailbox_a):
    mta = remotes(Behaviour(rcpt_default="451 4.3.0 later"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    with time_machine.travel(
        timezone.now() + timedelta(seconds=settings.A3_RELAY_DELAY_WARNING_SECONDS + 5)
    ) as clock:
        QueueItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
        item = deliver(item)
        assert item.state == QueueItem.State.DEFERRED and item.delay_warned_at is not None
        clock.shift(item.next_attempt_at - timezone.now())
        deliver(item)
    (warning,) = reports_to("alice@alpha.test")
    assert b"Action: delayed" in warning
    assert b"Will-Retry-Until" in warning


def test_stalled_server_defers_within_the_timeout(remotes):
    mta = remotes(Behaviour(stall="data"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    started = timezone.now()
    item = deliver(item)
    assert item.state == QueueItem.State.DEFERRED
    assert (timezone.now() - started).total_seconds() < 15
    assert "4.4.2" in item.last_reply


def test_connection_dropped_in_data_defers_never_loses(remotes):
    mta = remotes(Behaviour(drop_in_data=True))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.DEFERRED
    assert states(item) == {"bob@remote.test": "deferred"}


def test_connection_refused_defers(settings):
    services.transport_rule_create(domain="remote.test", host="127.0.0.1", port=free_port())
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.DEFERRED
    assert "4.4.1" in item.last_reply


def test_mx_hosts_are_tried_in_preference_order(remotes, dns_zone, settings):
    mta = remotes()
    settings.A3_RELAY_MX_PORT = mta.port
    dns_zone.add("remote.test", "MX", "10 mx1.remote.test.", "20 mx2.remote.test.")
    dns_zone.add("mx1.remote.test", "A", "127.0.0.2")  # nothing listens there
    dns_zone.add("mx2.remote.test", "A", "127.0.0.1")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.SENT
    attempt = DeliveryAttempt.objects.get(item=item)
    assert attempt.host == "mx2.remote.test"
    assert any("mx1.remote.test[127.0.0.2]" in note for note in attempt.detail["tried"])


def test_null_mx_bounces(dns_zone, mailbox_a):
    dns_zone.add("remote.test", "MX", "0 .")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    item = deliver(item)
    assert item.state == QueueItem.State.BOUNCED
    assert "5.1.10" in QueueRecipient.objects.get(item=item).reply


def test_nonexistent_domain_bounces(dns_zone, mailbox_a):
    dns_zone.add("other.test", "A", "127.0.0.1")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.BOUNCED
    assert "5.1.2" in QueueRecipient.objects.get(item=item).reply


def test_dns_failure_defers(dns_zone):
    dns_zone.servfail.add("remote.test")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.DEFERRED


def test_implicit_mx_is_the_domain_itself(remotes, dns_zone, settings):
    mta = remotes()
    settings.A3_RELAY_MX_PORT = mta.port
    dns_zone.add("remote.test", "A", "127.0.0.1")
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.SENT


def test_eight_bit_message_is_downgraded_for_a_server_without_8bitmime(remotes):
    mta = remotes(Behaviour(no_8bitmime=True))
    route("remote.test", mta)
    raw = (
        b"From: alice@alpha.test\r\nTo: bob@remote.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nCaf\xc3\xa9 cr\xc3\xa8me\r\n"
    )
    (item,) = enqueue(raw, recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.SENT
    got = mta.received[0].content
    assert got.isascii()
    body = email.message_from_bytes(got, policy=email.policy.default)
    assert body.get_content().strip() == "Café crème"
    assert "BODY=8BITMIME" not in mta.received[0].mail_options


def test_eight_bit_message_uses_8bitmime_when_offered(remotes):
    mta = remotes()
    route("remote.test", mta)
    raw = b"From: alice@alpha.test\r\nTo: bob@remote.test\r\nSubject: x\r\n\r\nCaf\xc3\xa9\r\n"
    (item,) = enqueue(raw, recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.SENT
    assert mta.received[0].content.endswith(raw)
    assert "BODY=8BITMIME" in mta.received[0].mail_options


def test_utf8_address_to_server_without_smtputf8_bounces_with_reason(remotes, mailbox_a):
    mta = remotes(Behaviour(no_smtputf8=True))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["jürgen@remote.test"])
    assert deliver(item).state == QueueItem.State.BOUNCED
    assert "5.6.7" in QueueRecipient.objects.get(item=item).reply


def test_message_over_remote_size_limit_bounces(remotes, mailbox_a):
    mta = remotes(Behaviour(size_limit=300))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(body=("x" * 70 + "\r\n") * 20), recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.BOUNCED
    assert "5.3.4" in QueueRecipient.objects.get(item=item).reply


def test_one_pass_reuses_the_connection_for_the_domain(remotes):
    mta = remotes()
    route("remote.test", mta)
    items = [enqueue(rfc5322(body=f"n{n}"), recipients=[f"u{n}@remote.test"])[0] for n in range(3)]
    assert services.queue_deliver(item_id=items[0].pk) == 3
    assert len(mta.received) == 3
    assert all(QueueItem.objects.get(pk=i.pk).state == QueueItem.State.SENT for i in items)


def test_held_item_is_not_delivered(remotes):
    mta = remotes()
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    QueueItem.objects.filter(pk=item.pk).update(on_hold=True)
    assert services.queue_deliver(item_id=item.pk) == 0
    assert mta.received == []


def test_destination_concurrency_limit_leaves_items_queued(settings, remotes):
    settings.A3_RELAY_DESTINATION_CONCURRENCY = 1
    mta = remotes()
    route("remote.test", mta)
    first, second = (enqueue(rfc5322(), recipients=[f"u{n}@remote.test"])[0] for n in range(2))
    QueueItem.objects.filter(pk=first.pk).update(state=QueueItem.State.SENDING, lease_token="busy")
    assert services.queue_deliver(item_id=second.pk) == 0
    assert QueueItem.objects.get(pk=second.pk).state == QueueItem.State.QUEUED


def test_sweep_returns_dead_leases_and_wakes_due_items(settings):
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    long_ago = timezone.now() - timedelta(hours=2)
    QueueItem.objects.filter(pk=item.pk).update(
        state=QueueItem.State.SENDING, lease_token="dead", leased_at=long_ago, next_attempt_at=long_ago
    )
    assert services.queue_requeue_stalled() == 1
    assert QueueItem.objects.get(pk=item.pk).state == QueueItem.State.QUEUED


def test_queue_watch_alerts_on_size_and_long_deferral(settings):
    from apps.alerts.models import Alert

    settings.A3_RELAY_QUEUE_ALERT_THRESHOLD = 2
    items = [enqueue(rfc5322(), recipients=[f"u{n}@slow.test"])[0] for n in range(2)]
    QueueItem.objects.filter(pk=items[0].pk).update(
        state=QueueItem.State.DEFERRED, created_at=timezone.now() - timedelta(hours=3)
    )
    raised = services.queue_watch()
    assert "relay.queue_size" in raised and "relay.destination_deferred:slow.test" in raised
    assert services.queue_watch() == []  # once an hour, not every run
    assert Alert.objects.filter(kind="relay.destination_deferred").count() == 1


def test_transport_rule_password_is_encrypted(db):
    rule = services.transport_rule_create(
        domain="remote.test", host="smtp.example", port=587, password="s3cret"
    )
    stored = TransportRule.objects.get(pk=rule.pk).password
    assert stored.startswith("enc:") and "s3cret" not in stored
    assert services.route_for_domain("remote.test").password == "s3cret"


def test_smarthost_setting_routes_everything(settings, db):
    settings.A3_SMARTHOST = "relay.example:2525"
    route_ = services.route_for_domain("anywhere.test")
    assert (route_.host, route_.port, route_.source) == ("relay.example", 2525, "smarthost")
    services.transport_rule_create(domain="anywhere.test", host="direct.example", port=25)
    assert services.route_for_domain("anywhere.test").host == "direct.example"


def test_missing_blob_bounces_instead_of_looping(remotes, mailbox_a):
    mta = remotes()
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    blob_store().delete(item.message.blob_sha256)
    assert deliver(item).state == QueueItem.State.BOUNCED


def test_malformed_eight_bit_message_does_not_block_its_destination(remotes):
    mta = remotes(Behaviour(no_8bitmime=True))
    route("remote.test", mta)
    broken = (
        b"From: alice@alpha.test\r\nTo: bob@remote.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf\xc3\xa9 \xff\xfe\r\n"
    )
    (bad,) = enqueue(broken, recipients=["bob@remote.test"])
    (good,) = enqueue(rfc5322(body="fine"), recipients=["carol@remote.test"])
    services.queue_deliver(item_id=bad.pk)
    assert QueueItem.objects.get(pk=good.pk).state == QueueItem.State.SENT
    bad.refresh_from_db()
    assert bad.state == QueueItem.State.BOUNCED  # cannot be sent to a host without 8BITMIME
    assert [r.recipients for r in mta.received] == [["carol@remote.test"]]


def test_reply_text_that_cannot_be_stored_is_cleaned(remotes):
    mta = remotes(Behaviour(data_reply="250 2.0.0 Ok\x00 queued"))
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    assert deliver(item).state == QueueItem.State.SENT
    assert "\x00" not in item.last_reply
    assert services.clean_text("f\udcfcr Zustellung\x00") == "f\ufffdr Zustellung"


def test_a_pass_that_fails_counts_an_attempt_and_backs_off(remotes, monkeypatch):
    mta = remotes()
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])

    def explode(*args, **kwargs):
        raise RuntimeError("routing table unreadable")

    monkeypatch.setattr("apps.relay.services.queue.route_for_domain", explode)
    assert services.queue_deliver(item_id=item.pk) == 0
    item.refresh_from_db()
    assert (item.state, item.attempts, item.lease_token) == (QueueItem.State.DEFERRED, 1, "")
    assert item.next_attempt_at > timezone.now()


def test_result_of_a_pass_whose_lease_was_taken_over_is_not_recorded(remotes):
    mta = remotes()
    route("remote.test", mta)
    (item,) = enqueue(rfc5322(), recipients=["bob@remote.test"])
    leased = services.queue._lease(item.pk)
    QueueItem.objects.filter(pk=item.pk).update(lease_token="someone-else")
    result = services.queue.JobResult(
        recipients={"bob@remote.test": services.queue.RecipientResult(250, "250 ok")}
    )
    services.queue._record(leased[0], result, timezone.now())
    assert not DeliveryAttempt.objects.filter(item=item).exists()
