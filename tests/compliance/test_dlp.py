"""Outbound DLP: policies applied at submission (hold, alert, thresholds, internal mail),
and the policy / hit / classification API with its scoping."""

from __future__ import annotations

import pytest

from apps.alerts.models import Alert
from apps.compliance.models import DlpHit, DlpPolicy, MessageClassification
from apps.mailboxes import services as mail_services
from apps.relay import services as relay_services
from apps.relay.models import QueueItem
from tests.factories import TEST_PASSWORD, MailboxFactory

pytestmark = pytest.mark.django_db

ALICE = "alice@alpha.test"
CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117"]


def card_mail(cards: list[str], *, to: str = "bob@remote.test") -> bytes:
    """A message with the card numbers in a CSV attachment."""
    csv = "name,card\r\n" + "".join(f"customer {i},{card}\r\n" for i, card in enumerate(cards))
    return (
        f"From: <{ALICE}>\r\nTo: <{to}>\r\nSubject: export\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe list you asked for.\r\n"
        '--b1\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="cards.csv"\r\n\r\n'
        f"{csv}--b1--\r\n"
    ).encode()


def submit(raw: bytes, recipients: list[str]):
    sender = relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD)
    return relay_services.submission_accept(
        sender=sender,
        mail_from=ALICE,
        recipients=recipients,
        raw=raw,
        trace=b"",
        queue_id=mail_services.new_queue_id(),
    )


@pytest.fixture
def card_policy(domain_a):
    return DlpPolicy.objects.create(domain=domain_a, category="payment_card", threshold=2, action="hold")


def test_submission_over_threshold_is_held_with_hit_and_alert(mailbox_a, card_policy):
    message = submit(card_mail(CARDS[:3]), ["bob@remote.test"])

    item = QueueItem.objects.get(message=message)
    assert item.on_hold is True
    hit = DlpHit.objects.get(message=message)
    assert (hit.policy_id, hit.category, hit.count, hit.action) == (card_policy.pk, "payment_card", 3, "hold")
    alert = Alert.objects.get(kind="compliance.dlp_hit")
    assert alert.level == "warning" and alert.domain_id == mailbox_a.domain_id
    assert alert.data["queue_id"] == message.queue_id
    assert MessageClassification.objects.get(message=message).categories == {"payment_card": 3}


def test_submission_at_threshold_is_not_held(mailbox_a, card_policy):
    message = submit(card_mail(CARDS[:2]), ["bob@remote.test"])

    assert QueueItem.objects.get(message=message).on_hold is False
    assert not DlpHit.objects.exists()
    assert not Alert.objects.filter(kind="compliance.dlp_hit").exists()


def test_internal_only_submission_is_not_checked(domain_a, mailbox_a, card_policy):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")

    message = submit(card_mail(CARDS, to="carol@alpha.test"), ["carol@alpha.test"])

    assert not QueueItem.objects.filter(message=message).exists()
    assert not DlpHit.objects.exists()


def test_alert_action_records_hit_without_holding(mailbox_a, card_policy):
    card_policy.action = DlpPolicy.Action.ALERT
    card_policy.save()

    message = submit(card_mail(CARDS), ["bob@remote.test", "eve@elsewhere.test"])

    assert list(QueueItem.objects.filter(message=message).values_list("on_hold", flat=True)) == [False, False]
    assert DlpHit.objects.get(message=message).action == "alert"
    assert Alert.objects.filter(kind="compliance.dlp_hit").count() == 1


def test_inactive_policy_and_other_domains_policy_do_not_apply(domain_b, mailbox_a, card_policy):
    card_policy.is_active = False
    card_policy.save()
    DlpPolicy.objects.create(domain=domain_b, category="payment_card", threshold=0, action="hold")

    message = submit(card_mail(CARDS), ["bob@remote.test"])

    assert QueueItem.objects.get(message=message).on_hold is False
    assert not DlpHit.objects.exists()


def test_every_queue_item_of_a_held_message_is_held(mailbox_a, card_policy):
    message = submit(card_mail(CARDS), ["bob@remote.test", "eve@elsewhere.test"])

    assert set(QueueItem.objects.filter(message=message).values_list("on_hold", flat=True)) == {True}


# --- API ---------------------------------------------------------------------------------


def test_api_policy_create_list_update_delete_by_domain_admin(api_client_for, admin_a, domain_a):
    client = api_client_for(admin_a)

    created = client.post(
        "/api/v1/dlp-policies/",
        {"domain_id": domain_a.pk, "category": "iban", "threshold": 5, "action": "alert"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    policy_id = created.json()["id"]
    assert created.json()["domain_name"] == "alpha.test"

    listed = client.get("/api/v1/dlp-policies/").json()
    assert [row["id"] for row in listed["results"]] == [policy_id]

    patched = client.patch(f"/api/v1/dlp-policies/{policy_id}/", {"threshold": 9}, format="json")
    assert patched.status_code == 200 and patched.json()["threshold"] == 9

    duplicate = client.post(
        "/api/v1/dlp-policies/", {"domain_id": domain_a.pk, "category": "iban"}, format="json"
    )
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "dlp_policy_exists"

    assert client.delete(f"/api/v1/dlp-policies/{policy_id}/").status_code == 204
    assert not DlpPolicy.objects.exists()


def test_api_policy_validation_error_shape(api_client_for, superadmin, domain_a):
    response = api_client_for(superadmin).post(
        "/api/v1/dlp-policies/", {"domain_id": domain_a.pk, "category": "horoscope"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and "category" in response.json()["fields"]


def test_api_policy_of_another_domain_is_not_found(api_client_for, admin_b, domain_a, card_policy):
    client = api_client_for(admin_b)

    assert client.get(f"/api/v1/dlp-policies/{card_policy.pk}/").status_code == 404
    assert client.delete(f"/api/v1/dlp-policies/{card_policy.pk}/").status_code == 404
    created = client.post(
        "/api/v1/dlp-policies/", {"domain_id": domain_a.pk, "category": "iban"}, format="json"
    )
    assert created.status_code == 404
    assert client.get("/api/v1/dlp-policies/").json()["results"] == []
    assert DlpPolicy.objects.count() == 1


def test_api_policies_and_hits_refuse_mailbox_users_and_anonymous(api_client_for, user_a, card_policy):
    for url in ("/api/v1/dlp-policies/", "/api/v1/dlp-hits/"):
        assert api_client_for(user_a).get(url).status_code == 403
        assert api_client_for().get(url).status_code in (401, 403)


def test_api_hits_are_scoped_to_the_sending_domain(api_client_for, admin_a, admin_b, mailbox_a, card_policy):
    message = submit(card_mail(CARDS), ["bob@remote.test"])

    own = api_client_for(admin_a).get("/api/v1/dlp-hits/").json()["results"]
    assert [(row["queue_id"], row["category"], row["count"]) for row in own] == [
        (message.queue_id, "payment_card", 4)
    ]
    assert api_client_for(admin_b).get("/api/v1/dlp-hits/").json()["results"] == []


def test_api_classification_visible_to_the_sender_only(
    api_client_for, user_a, mailbox_b, mailbox_a, card_policy
):
    message = submit(card_mail(CARDS), ["bob@remote.test"])

    rows = api_client_for(user_a).get(f"/api/v1/dlp-classifications/?message={message.pk}").json()["results"]
    assert [row["categories"] for row in rows] == [{"payment_card": 4}]
    other = api_client_for(mailbox_b.owner).get(f"/api/v1/dlp-classifications/?queue_id={message.queue_id}")
    assert other.json()["results"] == []


def test_api_policy_list_query_count(
    api_client_for, superadmin, domain_a, domain_b, django_assert_max_num_queries
):
    for domain in (domain_a, domain_b):
        for category in ("payment_card", "iban", "us_ssn"):
            DlpPolicy.objects.create(domain=domain, category=category)
    client = api_client_for(superadmin)
    with django_assert_max_num_queries(8):
        response = client.get("/api/v1/dlp-policies/")
    assert response.json()["count"] == 6
