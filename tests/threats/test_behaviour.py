"""Behaviour analysis: a sending spike over the real submission path suspends the mailbox
(550 5.7.1 from then on, a critical alert, an audit event) until an administrator of its
domain restores it; bounces count; sign-in anomalies raise alerts."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client, RequestFactory
from django.utils import timezone

from apps.accounts import lockout
from apps.accounts import services as account_services
from apps.accounts.exceptions import AuthenticationFailed
from apps.alerts.models import Alert
from apps.compliance.models import AuditEvent
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Message
from apps.relay import services as relay_services
from apps.relay.models import QueueRecipient
from apps.relay.services.bounces import DsnRecipient, dsn_build
from apps.threats.models import KnownRecipient, LoginNetwork, SendingActivity, SubmissionSuspension
from apps.threats.services.behaviour import (
    auth_anomaly_check,
    login_network,
    recipient_hash,
    suspension_create,
    suspension_lift,
)
from tests.factories import TEST_PASSWORD, MailboxFactory
from tests.relay import test_submission as submission_tests

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.threats.urls_digest")]

# The submission listener over real sockets, and its message helpers.
listener = submission_tests.listener
message = submission_tests.message
send = submission_tests.send

ALICE = "alice@alpha.test"


@pytest.fixture
def mid_hour():
    """Run at ten past the hour, so a burst never straddles two hours' counters."""
    with time_machine.travel(timezone.now().replace(minute=10, second=0), tick=True):
        yield


@pytest.fixture
def low_floor(settings):
    settings.A3_BEHAVIOUR_MIN_MESSAGES = 5
    return settings


def _submit(count: int, *, recipients_per_message: int = 1, start: int = 0) -> None:
    """Accept `count` messages from alice through submission_accept, as the listener does."""
    sender = relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD)
    for n in range(start, start + count):
        to = [f"r{n}-{i}@remote.test" for i in range(recipients_per_message)]
        relay_services.submission_accept(
            sender=sender,
            mail_from=ALICE,
            recipients=to,
            raw=message(to=to[0]),
            trace=b"",
            queue_id=mail_services.new_queue_id(),
        )


# --- Spike over SMTP -----------------------------------------------------------------------------


def test_burst_over_smtp_suspends_until_an_admin_lifts_it(
    listener,
    mailbox_a,
    admin_a,
    admin_b,
    api_client_for,
    low_floor,
    mid_hour,
):
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    for n in range(6):  # one over the floor of 5 an hour for an account without history
        code, reply = send(client, ALICE, [f"friend{n}@remote.test"], message(to=f"friend{n}@remote.test"))
        assert code == 250, reply

    code, reply = client.mail(ALICE)
    assert code == 550 and b"5.7.1" in reply and b"suspended" in reply
    client.quit()
    suspension = SubmissionSuspension.objects.get(mailbox=mailbox_a, lifted_at__isnull=True)
    assert "6 messages this hour" in suspension.reason
    alert = Alert.objects.get(kind="threats.account_suspended")
    assert alert.level == "critical" and alert.domain_id == mailbox_a.domain_id
    assert AuditEvent.objects.filter(action="threats.account_suspended").exists()
    activity = SendingActivity.objects.get(mailbox=mailbox_a)
    assert (activity.messages, activity.recipients, activity.new_recipients) == (6, 6, 6)

    # An administrator of another domain cannot see it, let alone lift it.
    other = api_client_for(admin_b).post(f"/api/v1/suspensions/{suspension.pk}/lift/")
    assert other.status_code == 404
    assert SubmissionSuspension.objects.get(pk=suspension.pk).lifted_at is None

    lifted = api_client_for(admin_a).post(f"/api/v1/suspensions/{suspension.pk}/lift/")
    assert lifted.status_code == 200 and lifted.json()["is_active"] is False
    assert lifted.json()["lifted_by"] == admin_a.email
    assert Alert.objects.filter(kind="threats.suspension_lifted", level="info").exists()
    assert AuditEvent.objects.filter(action="threats.suspension_lift", actor_display=admin_a.email).exists()

    # Sending works again, and the burst that caused the suspension does not count twice.
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    code, reply = send(client, ALICE, ["friend0@remote.test"], message(to="friend0@remote.test"))
    assert code == 250, reply
    client.quit()
    assert not SubmissionSuspension.objects.filter(mailbox=mailbox_a, lifted_at__isnull=True).exists()
    assert api_client_for(admin_a).post(f"/api/v1/suspensions/{suspension.pk}/lift/").status_code == 409


def test_a_new_burst_after_lifting_suspends_again(mailbox_a, superadmin, low_floor, mid_hour):
    _submit(6)
    first = SubmissionSuspension.objects.get(mailbox=mailbox_a)
    suspension_lift(actor=superadmin, suspension=first)
    _submit(5, start=100)
    assert not SubmissionSuspension.objects.filter(lifted_at__isnull=True).exists()

    _submit(1, start=200)

    second = SubmissionSuspension.objects.get(mailbox=mailbox_a, lifted_at__isnull=True)
    assert second.pk != first.pk
    sender = relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD)
    assert relay_services.rate_limit_problem(sender=sender).startswith("550 5.7.1")


def test_usual_volume_raises_the_bar(mailbox_a, low_floor, mid_hour):
    """An account that usually sends 3 an hour is judged against 10 times 3, not the floor."""
    now = timezone.now()
    for days in range(1, 4):
        SendingActivity.objects.create(
            mailbox=mailbox_a,
            hour=(now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0),
            messages=3,
            recipients=3,
        )
    _submit(30)
    assert not SubmissionSuspension.objects.exists()
    _submit(1, start=30)
    assert SubmissionSuspension.objects.filter(mailbox=mailbox_a, lifted_at__isnull=True).exists()


def test_many_new_recipients_suspend(mailbox_a, settings, mid_hour):
    settings.A3_BEHAVIOUR_NEW_RECIPIENTS = 20
    _submit(1, recipients_per_message=20)
    assert not SubmissionSuspension.objects.exists()
    _submit(1, recipients_per_message=2, start=1)

    suspension = SubmissionSuspension.objects.get(mailbox=mailbox_a)
    assert "never-before-seen recipients" in suspension.reason


def test_known_recipients_are_stored_as_keyed_hashes(mailbox_a, mid_hour):
    _submit(1)
    _submit(1)  # the same address again: not new
    activity = SendingActivity.objects.get(mailbox=mailbox_a)
    assert (activity.messages, activity.new_recipients) == (2, 1)
    (known,) = KnownRecipient.objects.filter(mailbox=mailbox_a)
    assert known.address_hash == recipient_hash("r0-0@remote.test") and "remote" not in known.address_hash


def test_bounces_over_half_of_twenty_recipients_suspend(mailbox_a, mid_hour):
    _submit(1, recipients_per_message=20)
    sent = Message.objects.get(submitted_by=mailbox_a)
    mail_services.message_deliver(message_id=sent.pk)  # the Sent copy
    # The relay handed every recipient to the remote server...
    QueueRecipient.objects.filter(item__message=sent).update(state=QueueRecipient.State.SENT)
    addresses = sorted(QueueRecipient.objects.filter(item__message=sent).values_list("address", flat=True))
    assert len(addresses) == 20

    # ...and delivery reports come back to alice, one per failed recipient.
    for count, address in enumerate(addresses[:10], start=1):
        report = dsn_build(
            original=blob_store().read(sent.blob_sha256),
            report_to=ALICE,
            recipients=[
                DsnRecipient(
                    address=address, action="failed", status="5.1.1", diagnostic="550 5.1.1 No such user"
                )
            ],
            queue_id=sent.queue_id,
            arrival=sent.received_at,
        )
        (inbound,) = mail_services.messages_accept(
            incoming=[
                mail_services.IncomingMessage(
                    queue_id=mail_services.new_queue_id(), mail_from="", recipients=(ALICE,), raw=report
                )
            ]
        )
        mail_services.message_deliver(message_id=inbound.pk)
        if count == 9:
            assert SendingActivity.objects.get(mailbox=mailbox_a).bounces == 9
            assert not SubmissionSuspension.objects.exists()

    assert QueueRecipient.objects.filter(item__message=sent, state=QueueRecipient.State.BOUNCED).count() == 10
    suspension = SubmissionSuspension.objects.get(mailbox=mailbox_a)
    assert "10 of 20 recipients bounced" in suspension.reason


# --- The suspensions page -----------------------------------------------------------------


def test_suspensions_page_lists_and_restores(mailbox_a, mailbox_b, admin_a, low_floor, mid_hour):
    _submit(6)
    suspension = SubmissionSuspension.objects.get(mailbox=mailbox_a)
    client = Client()
    client.force_login(admin_a)

    page = client.get("/quarantine/suspensions/")
    assert page.status_code == 200
    body = page.content.decode()
    assert ALICE in body and "Restore sending" in body

    response = client.post(f"/quarantine/suspensions/{suspension.pk}/lift/", follow=True)
    assert "Sending restored for alice@alpha.test" in response.content.decode()
    assert SubmissionSuspension.objects.get(pk=suspension.pk).lifted_by == admin_a


def test_suspensions_page_is_for_admins_of_the_domain(mailbox_a, admin_b, user_a, low_floor, mid_hour):
    _submit(6)
    suspension = SubmissionSuspension.objects.get(mailbox=mailbox_a)
    other_admin = Client()
    other_admin.force_login(admin_b)
    assert ALICE not in other_admin.get("/quarantine/suspensions/").content.decode()
    assert other_admin.post(f"/quarantine/suspensions/{suspension.pk}/lift/").status_code == 404
    owner = Client()
    owner.force_login(user_a)
    assert owner.get("/quarantine/suspensions/").status_code == 404
    assert SubmissionSuspension.objects.get(pk=suspension.pk).lifted_at is None


def test_suspensions_api_lists_within_scope(
    mailbox_a, admin_a, admin_b, user_a, api_client_for, low_floor, mid_hour
):
    _submit(6)
    mine = api_client_for(admin_a).get("/api/v1/suspensions/?active=true")
    assert mine.status_code == 200
    assert [row["mailbox_address"] for row in mine.json()["results"]] == [ALICE]
    assert api_client_for(admin_b).get("/api/v1/suspensions/").json()["results"] == []
    assert api_client_for(user_a).get("/api/v1/suspensions/").status_code == 403
    assert api_client_for().get("/api/v1/suspensions/").status_code in (401, 403)


# --- Sign-in anomalies ----------------------------------------------------------------------


def _web_failure(email: str, ip: str) -> None:
    request = RequestFactory().post("/accounts/login/", REMOTE_ADDR=ip)
    with pytest.raises(AuthenticationFailed):
        account_services.credentials_verify(request=request, email=email, password="guess", channel="web")


def test_failures_from_many_addresses_raise_one_auth_anomaly_alert(user_a):
    for n in range(5):
        for _ in range(2):
            _web_failure(user_a.email, f"192.0.2.{n + 10}")

    assert auth_anomaly_check() == 1
    alert = Alert.objects.get(kind="threats.auth_anomaly")
    assert alert.level == "warning" and alert.data["account"] == user_a.email
    assert alert.data["addresses"] == 5 and alert.data["failures"] == 10
    assert alert.domain_id == user_a.mailboxes.get().domain_id
    assert auth_anomaly_check() == 0  # once per account and hour


def test_failures_from_one_address_are_not_an_anomaly(user_a):
    for _ in range(10):
        _web_failure(user_a.email, "192.0.2.10")
    assert auth_anomaly_check() == 0
    assert not Alert.objects.filter(kind="threats.auth_anomaly").exists()


def test_smtp_auth_failures_count_too(mailbox_a, settings):
    settings.A3_BEHAVIOUR_AUTH_FAILURES = 4
    settings.A3_BEHAVIOUR_AUTH_IPS = 4
    for n in range(4):  # below the lockout, as SMTP AUTH records them
        lockout.lockout_record_failure(username=ALICE, ip=f"198.51.100.{n + 1}", channel="smtp")

    assert auth_anomaly_check() == 1
    assert Alert.objects.get(kind="threats.auth_anomaly").data["account"] == ALICE


def test_login_networks_are_recorded_on_web_and_smtp_sign_in(user_a, mailbox_a):
    client = Client(REMOTE_ADDR="198.51.100.7")
    response = client.post("/accounts/login/", {"email": user_a.email, "password": TEST_PASSWORD})
    assert response.status_code == 302
    relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD, ip="2001:db8:1:2::5")

    networks = set(LoginNetwork.objects.filter(user=user_a).values_list("network", flat=True))
    assert networks == {"198.51.100.0/24", "2001:db8:1::/48"}
    assert login_network("::ffff:203.0.113.9") == "203.0.113.0/24"


def test_spike_after_sign_in_from_a_new_network_is_critical(user_a, mailbox_a, low_floor, mid_hour):
    with time_machine.travel(timezone.now() - timedelta(days=3), tick=False):
        Client(REMOTE_ADDR="198.51.100.7").post(
            "/accounts/login/", {"email": user_a.email, "password": TEST_PASSWORD}
        )
    relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD, ip="203.0.113.9")

    _submit(6)

    alert = Alert.objects.get(kind="threats.auth_anomaly")
    assert alert.level == "critical" and alert.data["network"] == "203.0.113.0/24"
    assert alert.domain_id == mailbox_a.domain_id
    suspension = SubmissionSuspension.objects.get(mailbox=mailbox_a)
    assert suspension.details["new_network"] == "203.0.113.0/24"


def test_spike_from_known_networks_only_is_not_an_auth_anomaly(user_a, mailbox_a, low_floor, mid_hour):
    with time_machine.travel(timezone.now() - timedelta(days=3), tick=False):
        relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD, ip="203.0.113.9")
    relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD, ip="203.0.113.10")

    _submit(6)

    assert SubmissionSuspension.objects.filter(mailbox=mailbox_a).exists()
    assert not Alert.objects.filter(kind="threats.auth_anomaly").exists()


def test_suspensions_api_list_query_count_is_capped(
    domain_a, admin_a, api_client_for, django_assert_max_num_queries
):
    for n in range(5):
        mailbox = MailboxFactory(domain=domain_a, local_part=f"user{n}")
        suspension_create(mailbox=mailbox, reason="test", details={"hour": "x"})
    client = api_client_for(admin_a)
    with django_assert_max_num_queries(8):
        response = client.get("/api/v1/suspensions/")
    assert len(response.json()["results"]) == 5
