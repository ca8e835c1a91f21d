"""The threat API: the quarantine and its review, allow/block lists, content rules and
domain policies, through DRF's client with real bearer tokens.

Quarantined mail is made the way the server makes it: a message is accepted and
delivered through the real pipeline, with A3_SCAN_STAGES set to one stage defined here
that reads its verdict from the subject line."""

from __future__ import annotations

import time

import pytest

from apps.compliance.models import AuditEvent
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Folder, Mailbox, MailItem
from apps.mailboxes.services import IncomingMessage
from apps.threats.models import (
    BayesTraining,
    ContentRule,
    DomainPolicy,
    ListEntry,
    QuarantineItem,
    QuarantineRecipient,
)
from apps.threats.pipeline import StageOutcome, scan_stage
from tests.factories import DomainFactory, MailboxFactory

pytestmark = pytest.mark.django_db

ERROR_KEYS = {"code", "detail", "fields"}
ALICE = "alice@alpha.test"
BOB = "bob@beta.test"


@scan_stage("testverdict")
def verdict_stage(context) -> StageOutcome:
    """A verdict chosen by the subject: [malware], [spam] or [policy]."""
    subject = " ".join(context.header_values("Subject"))
    if "[malware]" in subject:
        return StageOutcome(category="malware", reasons=["Test.Signature found in invoice.zip"])
    if "[policy]" in subject:
        return StageOutcome(category="policy", reasons=["blocked attachment type: run.exe"])
    if "[spam]" in subject:
        return StageOutcome(score=42.0, reasons=["looks like a lottery scam"])
    return StageOutcome()


@pytest.fixture(autouse=True)
def pipeline(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    settings.A3_SCAN_STAGES = ["tests.threats.test_api.verdict_stage"]


def hold(subject: str, recipients=(ALICE,), sender: str = "carol@remote.example") -> QuarantineItem:
    """Accept and deliver a message; return the quarantine item it became."""
    raw = (
        f"From: Carol <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.monotonic_ns()}@remote.example>\r\n\r\nPlease open the attachment.\r\n"
    ).encode()
    incoming = IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from=sender,
        recipients=tuple(recipients),
        raw=raw,
        peer_ip="198.51.100.20",
        helo="mx.remote.example",
    )
    [message] = mail_services.messages_accept(incoming=[incoming])
    mail_services.message_deliver(message_id=message.pk)
    return QuarantineItem.objects.get(message=message)


def inbox_of(mailbox: Mailbox, item: QuarantineItem) -> list[str]:
    return list(
        MailItem.objects.filter(mailbox=mailbox, message_id=item.message_id).values_list(
            "folder__special_use", flat=True
        )
    )


def assert_error(response, status: int, code: str | None = None, *, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == ERROR_KEYS
    if code is not None:
        assert body["code"] == code
    if field is not None:
        assert body["fields"].get(field), body
    return body


@pytest.fixture
def as_super(api_client_for, superadmin):
    return api_client_for(superadmin)


@pytest.fixture
def as_admin_a(api_client_for, admin_a):
    return api_client_for(admin_a)


@pytest.fixture
def as_admin_b(api_client_for, admin_b):
    return api_client_for(admin_b)


@pytest.fixture
def as_alice(api_client_for, user_a):
    return api_client_for(user_a)


@pytest.fixture
def held(mailbox_a, mailbox_b):
    """Malware for both alice and bob, spam for alice, policy for bob only."""
    return {
        "shared": hold("[malware] Your invoice", recipients=(ALICE, BOB)),
        "spam": hold("[spam] You won a lottery"),
        "beta": hold("[policy] Run this", recipients=(BOB,)),
    }


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


# --- The pipeline made what the tests rely on -------------------------------------------------


def test_quarantined_messages_are_held_not_filed(held, mailbox_a, mailbox_b):
    shared = held["shared"]
    assert shared.category == "malware"
    assert sorted(shared.recipients.values_list("mailbox__address", "state")) == [
        (ALICE, "held"),
        (BOB, "held"),
    ]
    assert inbox_of(mailbox_a, shared) == [] and inbox_of(mailbox_b, shared) == []
    assert held["spam"].category == "spam" and held["spam"].score == 42.0


# --- Scoping ----------------------------------------------------------------------------------


def test_anonymous_callers_are_refused(held, api_client_for):
    client = api_client_for()
    item = held["spam"].pk
    for response in (
        client.get("/api/v1/quarantine/"),
        client.get(f"/api/v1/quarantine/{item}/"),
        client.post(f"/api/v1/quarantine/{item}/release/", {}, format="json"),
        client.get("/api/v1/quarantine/summary/"),
        client.get("/api/v1/threat-lists/"),
        client.get("/api/v1/content-rules/"),
        client.get("/api/v1/threat-policies/"),
    ):
        assert response.status_code == 401
        assert set(response.json()) == ERROR_KEYS
    assert held["spam"].recipients.get().state == "held"


def test_list_is_scoped_per_role(held, as_super, as_admin_a, as_admin_b, as_alice):
    shared, spam, beta = held["shared"].pk, held["spam"].pk, held["beta"].pk
    assert ids(as_super.get("/api/v1/quarantine/")) == {shared, spam, beta}
    assert ids(as_admin_a.get("/api/v1/quarantine/")) == {shared, spam}
    assert ids(as_admin_b.get("/api/v1/quarantine/")) == {shared, beta}
    assert ids(as_alice.get("/api/v1/quarantine/")) == {shared, spam}


def test_list_shows_only_the_callers_recipients(held, as_super, as_admin_a, as_admin_b):
    def recipients(client) -> list[str]:
        [row] = [
            r for r in client.get("/api/v1/quarantine/").json()["results"] if r["id"] == held["shared"].pk
        ]
        return [r["address"] for r in row["recipients"]]

    assert recipients(as_super) == [ALICE, BOB]
    assert recipients(as_admin_a) == [ALICE]
    assert recipients(as_admin_b) == [BOB]


def test_another_domains_item_is_not_found(held, as_admin_a, as_alice, mailbox_b):
    beta = held["beta"]
    for client in (as_admin_a, as_alice):
        assert_error(client.get(f"/api/v1/quarantine/{beta.pk}/"), 404, "not_found")
        assert_error(client.get(f"/api/v1/quarantine/{beta.pk}/raw/"), 404, "not_found")
        for verb in ("release", "delete", "request-release"):
            assert_error(
                client.post(f"/api/v1/quarantine/{beta.pk}/{verb}/", {}, format="json"), 404, "not_found"
            )
        assert_error(
            client.post(f"/api/v1/quarantine/{beta.pk}/decide-request/", {"approve": True}, format="json"),
            404,
        )
        assert_error(
            client.post(f"/api/v1/quarantine/{beta.pk}/report/", {"is_spam": True}, format="json"), 404
        )
    assert_error(as_admin_a.get("/api/v1/quarantine/not-a-number/"), 404)
    assert beta.recipients.get().state == "held"
    assert inbox_of(mailbox_b, beta) == []


def test_an_admin_cannot_act_for_another_domains_recipient(held, as_admin_a, mailbox_a, mailbox_b):
    shared = held["shared"]
    body = assert_error(
        as_admin_a.post(
            f"/api/v1/quarantine/{shared.pk}/release/", {"mailboxes": [mailbox_b.pk]}, format="json"
        ),
        400,
    )
    assert "nothing to release" in body["detail"]
    assert shared.recipients.get(mailbox=mailbox_b).state == "held"
    assert inbox_of(mailbox_b, shared) == []


# --- Detail -----------------------------------------------------------------------------------


def test_detail_shows_the_full_verdict(held, as_super):
    item = held["shared"]
    body = as_super.get(f"/api/v1/quarantine/{item.pk}/").json()
    assert (body["id"], body["category"], body["state"], body["score"]) == (item.pk, "malware", "held", 0.0)
    assert "Test.Signature found in invoice.zip" in body["reason"]
    assert body["sender"] == "carol@remote.example"
    assert body["subject"] == "[malware] Your invoice"
    [stage] = body["stages"]
    assert stage["stage"] == "testverdict"
    assert stage["reasons"] == ["Test.Signature found in invoice.zip"]
    assert (stage["status"], stage["category"], stage["score"]) == ("ok", "malware", 0)
    assert stage["ms"] >= 0
    assert [(r["address"], r["state"]) for r in body["recipients"]] == [(ALICE, "held"), (BOB, "held")]
    headers = {h["name"]: h["value"] for h in body["headers"]}
    assert headers["Subject"] == "[malware] Your invoice"
    assert headers["X-Spam-Score"] == "0.0"  # the scanner's stamp is in the stored copy
    assert body["may_release"] is True
    assert body["permissions"] == {
        "may_release": True,
        "may_request_release": False,
        "may_decide_request": False,
        "may_download": True,
    }


def test_detail_for_a_mailbox_user(held, as_alice, mailbox_a):
    malware = as_alice.get(f"/api/v1/quarantine/{held['shared'].pk}/").json()
    assert [r["address"] for r in malware["recipients"]] == [ALICE]
    assert malware["permissions"] == {
        "may_release": False,
        "may_request_release": True,
        "may_decide_request": False,
        "may_download": False,
    }
    spam = as_alice.get(f"/api/v1/quarantine/{held['spam'].pk}/").json()
    assert spam["may_release"] is True and spam["permissions"]["may_request_release"] is False


# --- Release, request, approve ----------------------------------------------------------------


def test_user_cannot_release_malware_but_requests_and_admin_approves(
    held, as_alice, as_admin_a, mailbox_a, mailbox_b, user_a
):
    shared = held["shared"]
    url = f"/api/v1/quarantine/{shared.pk}"
    assert_error(as_alice.post(f"{url}/release/", {}, format="json"), 403, "permission_denied")
    assert_error(as_alice.get(f"{url}/raw/"), 403, "permission_denied")
    assert inbox_of(mailbox_a, shared) == []

    response = as_alice.post(f"{url}/request-release/", {"note": "I expect this invoice"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"id": shared.pk, "changed": 1, "delivered": False}
    row = shared.recipients.get(mailbox=mailbox_a)
    assert (row.state, row.request_note) == ("requested", "I expect this invoice")
    # A user does not decide their own request.
    assert_error(as_alice.post(f"{url}/decide-request/", {"approve": True}, format="json"), 403)

    assert as_admin_a.get("/api/v1/quarantine/summary/").json()["requested"] == 1
    assert ids(as_admin_a.get("/api/v1/quarantine/?requested=1")) == {shared.pk}
    detail = as_admin_a.get(f"{url}/").json()
    assert detail["permissions"]["may_decide_request"] is True
    assert detail["recipients"][0]["request_note"] == "I expect this invoice"

    response = as_admin_a.post(f"{url}/decide-request/", {"approve": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["delivered"] is True
    assert inbox_of(mailbox_a, shared) == [Folder.SpecialUse.INBOX]
    assert inbox_of(mailbox_b, shared) == []  # bob's copy stays held
    row.refresh_from_db()
    assert row.state == "released"
    assert shared.recipients.get(mailbox=mailbox_b).state == "held"
    shared.refresh_from_db()
    assert shared.state == "held"


def test_denied_request_stays_held(held, as_alice, as_admin_a, mailbox_a):
    shared = held["shared"]
    as_alice.post(f"/api/v1/quarantine/{shared.pk}/request-release/", {}, format="json")
    response = as_admin_a.post(
        f"/api/v1/quarantine/{shared.pk}/decide-request/", {"approve": False}, format="json"
    )
    assert response.status_code == 200, response.content
    assert shared.recipients.get(mailbox=mailbox_a).state == "held"
    assert inbox_of(mailbox_a, shared) == []
    assert_error(
        as_admin_a.post(f"/api/v1/quarantine/{shared.pk}/decide-request/", {"approve": True}, format="json"),
        400,
    )


def test_user_releases_own_spam_and_allows_the_sender(held, as_alice, mailbox_a):
    spam = held["spam"]
    response = as_alice.post(f"/api/v1/quarantine/{spam.pk}/release/", {"allow_sender": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"id": spam.pk, "changed": 1, "delivered": True}
    assert inbox_of(mailbox_a, spam) == [Folder.SpecialUse.INBOX]
    spam.refresh_from_db()
    assert spam.state == "resolved"
    entry = ListEntry.objects.get(mailbox=mailbox_a)
    assert (entry.kind, entry.match, entry.value) == ("allow", "sender", "carol@remote.example")
    # Resolved items leave the default (held) list, but state=all still shows them.
    assert spam.pk not in ids(as_alice.get("/api/v1/quarantine/"))
    assert spam.pk in ids(as_alice.get("/api/v1/quarantine/?state=all"))
    # Releasing twice finds nothing left to release.
    assert_error(as_alice.post(f"/api/v1/quarantine/{spam.pk}/release/", {}, format="json"), 400)


def test_admin_releases_one_recipient_and_deletes_the_other(held, as_super, mailbox_a, mailbox_b):
    shared = held["shared"]
    url = f"/api/v1/quarantine/{shared.pk}"
    response = as_super.post(f"{url}/release/", {"mailboxes": [mailbox_b.pk]}, format="json")
    assert response.json()["changed"] == 1
    assert inbox_of(mailbox_b, shared) == [Folder.SpecialUse.INBOX]
    assert inbox_of(mailbox_a, shared) == []
    response = as_super.post(f"{url}/delete/", {}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["changed"] == 1
    assert shared.recipients.get(mailbox=mailbox_a).state == "deleted"
    assert inbox_of(mailbox_a, shared) == []
    shared.refresh_from_db()
    assert shared.state == "resolved"


@pytest.mark.parametrize(
    ("verb", "payload", "field"),
    [
        ("release", {"mailboxes": "all"}, "mailboxes"),
        ("release", {"mailboxes": []}, "mailboxes"),
        ("release", {"allow_sender": "perhaps"}, "allow_sender"),
        ("release", {"everyone": True}, "everyone"),
        ("delete", {"mailboxes": [0]}, "mailboxes"),
        ("report", {}, "is_spam"),
        ("decide-request", {}, "approve"),
        ("request-release", {"note": "x" * 501}, "note"),
    ],
)
def test_action_payloads_are_validated(held, as_super, verb, payload, field):
    item = held["shared"]
    assert_error(
        as_super.post(f"/api/v1/quarantine/{item.pk}/{verb}/", payload, format="json"), 400, field=field
    )
    assert set(item.recipients.values_list("state", flat=True)) == {"held"}


def test_report_as_not_spam_trains_the_domain_classifier(held, as_alice, domain_a):
    spam = held["spam"]
    response = as_alice.post(f"/api/v1/quarantine/{spam.pk}/report/", {"is_spam": False}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"id": spam.pk, "trained": 1}
    training = BayesTraining.objects.get(message_id=spam.message_id)
    assert (training.domain_id, training.is_spam) == (domain_a.pk, False)
    assert spam.recipients.get().state == "held"  # reporting is not releasing


# --- Raw download -----------------------------------------------------------------------------


def test_raw_download(held, as_admin_a, as_alice, admin_a, mailbox_a):
    shared = held["shared"]
    response = as_admin_a.get(f"/api/v1/quarantine/{shared.pk}/raw/", HTTP_ACCEPT="message/rfc822")
    assert response.status_code == 200
    assert response["Content-Type"] == "message/rfc822"
    assert "attachment" in response["Content-Disposition"]
    assert b"Subject: [malware] Your invoice" in response.content
    assert b"X-Spam-Score: 0.0" in response.content
    access = AuditEvent.objects.filter(action="mailbox.access", actor=admin_a).first()
    assert access is not None and access.target_id == str(mailbox_a.pk)

    spam = as_alice.get(f"/api/v1/quarantine/{held['spam'].pk}/raw/")
    assert spam.status_code == 200 and b"You won a lottery" in spam.content


# --- Filters, summary, query count ------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("category=malware", {"shared"}),
        ("category=policy", {"beta"}),
        ("q=lottery", {"spam"}),
        ("q=CAROL@remote", {"shared", "spam", "beta"}),
        (f"mailbox={BOB}", {"shared", "beta"}),
        ("requested=1", set()),
        ("state=resolved", set()),
    ],
)
def test_list_filters(held, as_super, query, expected):
    assert ids(as_super.get(f"/api/v1/quarantine/?{query}")) == {held[name].pk for name in expected}


def test_list_rejects_bad_filters(held, as_super):
    assert_error(as_super.get("/api/v1/quarantine/?category=virus"), 400, field="category")
    assert_error(as_super.get("/api/v1/quarantine/?state=lost"), 400, field="state")


def test_summary_counts_the_callers_scope(held, as_super, as_admin_a, as_alice):
    assert as_super.get("/api/v1/quarantine/summary/").json() == {
        "spam": 1,
        "malware": 1,
        "policy": 1,
        "unscannable": 0,
        "requested": 0,
    }
    assert as_admin_a.get("/api/v1/quarantine/summary/").json() == {
        "spam": 1,
        "malware": 1,
        "policy": 0,
        "unscannable": 0,
        "requested": 0,
    }
    as_alice.post(f"/api/v1/quarantine/{held['shared'].pk}/request-release/", {}, format="json")
    assert as_alice.get("/api/v1/quarantine/summary/").json()["requested"] == 1


def test_list_query_count_is_capped(held, as_admin_a, django_assert_max_num_queries):
    for n in range(5):
        hold(f"[spam] offer {n}", recipients=(ALICE, BOB))
    with django_assert_max_num_queries(8):
        response = as_admin_a.get("/api/v1/quarantine/")
    assert len(response.json()["results"]) == 7


# --- Allow and block lists --------------------------------------------------------------------


def test_user_keeps_their_own_list(as_alice, mailbox_a, mailbox_b):
    response = as_alice.post(
        "/api/v1/threat-lists/",
        {"kind": "block", "match": "sender", "value": "Pest@Example.COM", "mailbox": mailbox_a.pk},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["value"], body["scope"], body["mailbox_address"]) == ("pest@example.com", "mailbox", ALICE)
    assert ListEntry.objects.get(pk=body["id"]).mailbox == mailbox_a
    assert [row["id"] for row in as_alice.get("/api/v1/threat-lists/").json()["results"]] == [body["id"]]
    # Server-wide and domain entries are for administrators.
    assert_error(
        as_alice.post(
            "/api/v1/threat-lists/", {"kind": "block", "match": "ip", "value": "192.0.2.1"}, format="json"
        ),
        403,
        "permission_denied",
    )
    assert_error(
        as_alice.post(
            "/api/v1/threat-lists/",
            {"kind": "block", "match": "ip", "value": "192.0.2.1", "domain": mailbox_a.domain_id},
            format="json",
        ),
        403,
    )
    # Someone else's mailbox is not there at all.
    assert_error(
        as_alice.post(
            "/api/v1/threat-lists/",
            {"kind": "block", "match": "ip", "value": "192.0.2.1", "mailbox": mailbox_b.pk},
            format="json",
        ),
        400,
        field="mailbox",
    )
    assert as_alice.delete(f"/api/v1/threat-lists/{body['id']}/").status_code == 204
    assert not ListEntry.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "block", "match": "ip", "value": "10.0.0.300"}, "value"),
        ({"kind": "block", "match": "sender", "value": "not-an-address"}, "value"),
        ({"kind": "block", "match": "domain", "value": "-bad-.example"}, "value"),
        ({"kind": "deny", "match": "ip", "value": "192.0.2.1"}, "kind"),
        ({"kind": "block", "match": "asn", "value": "64496"}, "match"),
        ({"kind": "block", "match": "ip"}, "value"),
        ({"kind": "block", "match": "ip", "value": "192.0.2.1", "colour": "red"}, "colour"),
    ],
)
def test_list_entry_validation(as_admin_a, domain_a, payload, field):
    payload = {"domain": domain_a.pk, **payload}
    assert_error(as_admin_a.post("/api/v1/threat-lists/", payload, format="json"), 400, field=field)
    assert not ListEntry.objects.exists()


def test_admin_lists_are_scoped(as_admin_a, as_admin_b, as_super, domain_a, domain_b, superadmin):
    created = as_admin_a.post(
        "/api/v1/threat-lists/",
        {
            "kind": "block",
            "match": "ip",
            "value": "198.51.100.7/24",
            "domain": domain_a.pk,
            "comment": "botnet",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    entry_id = created.json()["id"]
    assert created.json()["value"] == "198.51.100.0/24"
    duplicate = as_admin_a.post(
        "/api/v1/threat-lists/",
        {"kind": "block", "match": "ip", "value": "198.51.100.0/24", "domain": domain_a.pk},
        format="json",
    )
    assert_error(duplicate, 409, "conflict")
    # Another domain's id in the body: as if it did not exist.
    assert_error(
        as_admin_a.post(
            "/api/v1/threat-lists/",
            {"kind": "block", "match": "ip", "value": "192.0.2.1", "domain": domain_b.pk},
            format="json",
        ),
        400,
        field="domain",
    )
    server = as_super.post(
        "/api/v1/threat-lists/",
        {"kind": "allow", "match": "domain", "value": "Partner.Example"},
        format="json",
    )
    assert server.status_code == 201 and server.json()["scope"] == "server"

    assert [row["id"] for row in as_admin_a.get("/api/v1/threat-lists/").json()["results"]] == [entry_id]
    assert as_admin_b.get("/api/v1/threat-lists/").json()["results"] == []
    assert_error(as_admin_b.get(f"/api/v1/threat-lists/{entry_id}/"), 404)
    assert_error(as_admin_b.delete(f"/api/v1/threat-lists/{entry_id}/"), 404)
    assert_error(as_admin_a.delete(f"/api/v1/threat-lists/{server.json()['id']}/"), 404)
    assert ids(as_super.get("/api/v1/threat-lists/?scope=server")) == {server.json()["id"]}
    assert ids(as_super.get("/api/v1/threat-lists/?kind=block")) == {entry_id}
    assert ListEntry.objects.count() == 2
    event = AuditEvent.objects.filter(action="threats.list_add", actor=superadmin).get()
    assert event.target_id == str(server.json()["id"])


def test_a_block_entry_made_through_the_api_quarantines_mail(as_alice, mailbox_a):
    as_alice.post(
        "/api/v1/threat-lists/",
        {"kind": "block", "match": "domain", "value": "remote.example", "mailbox": mailbox_a.pk},
        format="json",
    )
    item = hold("An ordinary newsletter")
    assert item.category == "spam"
    assert "block-listed" in item.reason
    assert inbox_of(mailbox_a, item) == []


# --- Content rules ----------------------------------------------------------------------------


def test_content_rules_are_for_administrators(as_alice, as_admin_a, domain_a):
    assert_error(as_alice.get("/api/v1/content-rules/"), 403)
    assert_error(
        as_alice.post(
            "/api/v1/content-rules/",
            {"name": "x", "target": "body", "pattern": "x", "score": 1, "domain": domain_a.pk},
            format="json",
        ),
        403,
    )
    # Server-wide rules: superadmins only.
    assert_error(
        as_admin_a.post(
            "/api/v1/content-rules/",
            {"name": "x", "target": "body", "pattern": "x", "score": 1},
            format="json",
        ),
        403,
        "permission_denied",
    )
    assert not ContentRule.objects.exists()


def test_content_rule_crud(as_admin_a, as_admin_b, domain_a):
    created = as_admin_a.post(
        "/api/v1/content-rules/",
        {
            "name": "Mailer",
            "target": "header",
            "header_name": "X-Mailer",
            "pattern": r"bulk\s*send",
            "score": 3.5,
            "domain": domain_a.pk,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    rule = created.json()
    assert (rule["target"], rule["header_name"], rule["domain_name"], rule["is_active"]) == (
        "header",
        "X-Mailer",
        "alpha.test",
        True,
    )
    url = f"/api/v1/content-rules/{rule['id']}/"
    assert as_admin_a.get(url).json()["pattern"] == r"bulk\s*send"
    assert_error(as_admin_b.get(url), 404)
    assert_error(as_admin_b.patch(url, {"score": 9}, format="json"), 404)
    assert as_admin_b.get("/api/v1/content-rules/").json()["results"] == []

    patched = as_admin_a.patch(url, {"score": -2, "is_active": False}, format="json")
    assert patched.status_code == 200, patched.content
    assert (patched.json()["score"], patched.json()["is_active"]) == (-2.0, False)
    assert_error(as_admin_a.patch(url, {"domain": None}, format="json"), 403)
    stored = ContentRule.objects.get(pk=rule["id"])
    assert (stored.score, stored.domain_id) == (-2.0, domain_a.pk)

    assert_error(as_admin_b.delete(url), 404)
    assert as_admin_a.delete(url).status_code == 204
    assert not ContentRule.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"pattern": "(unclosed"}, "pattern"),
        ({"pattern": "a*"}, "pattern"),  # matches empty text: every message
        ({"target": "header"}, "header_name"),
        ({"target": "everything"}, "target"),
        ({"score": "lots"}, "score"),
        ({"name": ""}, "name"),
    ],
)
def test_content_rule_validation(as_admin_a, domain_a, payload, field):
    values = {
        "name": "r",
        "target": "body",
        "pattern": "casino",
        "score": 2,
        "domain": domain_a.pk,
        **payload,
    }
    assert_error(as_admin_a.post("/api/v1/content-rules/", values, format="json"), 400, field=field)
    assert not ContentRule.objects.exists()


def test_content_rule_domain_must_be_in_scope(as_admin_a, domain_b):
    values = {"name": "r", "target": "body", "pattern": "casino", "score": 2, "domain": domain_b.pk}
    assert_error(as_admin_a.post("/api/v1/content-rules/", values, format="json"), 400, field="domain")


# --- Domain policies --------------------------------------------------------------------------


def test_policy_defaults_without_a_row(as_admin_a, domain_a, settings):
    settings.A3_SPAM_QUARANTINE_SCORE = 12.0
    response = as_admin_a.get(f"/api/v1/threat-policies/{domain_a.pk}/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["domain"], body["domain_name"], body["is_default"]) == (domain_a.pk, "alpha.test", True)
    assert (body["quarantine_score"], body["quarantine_days"], body["updated_at"]) == (12.0, 30, None)
    assert not DomainPolicy.objects.exists()


def test_policy_scope(as_admin_a, as_alice, as_super, domain_a, domain_b):
    assert_error(as_admin_a.get(f"/api/v1/threat-policies/{domain_b.pk}/"), 404)
    assert_error(
        as_admin_a.patch(f"/api/v1/threat-policies/{domain_b.pk}/", {"junk_score": 7}, format="json"), 404
    )
    assert_error(as_admin_a.get("/api/v1/threat-policies/nope/"), 404)
    assert_error(as_alice.get(f"/api/v1/threat-policies/{domain_a.pk}/"), 403)
    assert_error(as_alice.get("/api/v1/threat-policies/"), 403)
    assert [row["domain_name"] for row in as_admin_a.get("/api/v1/threat-policies/").json()["results"]] == [
        "alpha.test"
    ]
    assert [row["domain_name"] for row in as_super.get("/api/v1/threat-policies/").json()["results"]] == [
        "alpha.test",
        "beta.test",
    ]
    assert not DomainPolicy.objects.exists()


def test_policy_patch_creates_then_put_replaces(as_admin_a, domain_a):
    url = f"/api/v1/threat-policies/{domain_a.pk}/"
    patched = as_admin_a.patch(url, {"junk_score": 7.5, "quarantine_days": 90}, format="json")
    assert patched.status_code == 200, patched.content
    assert (
        patched.json()["is_default"],
        patched.json()["junk_score"],
        patched.json()["quarantine_days"],
    ) == (False, 7.5, 90)
    policy = DomainPolicy.objects.get(domain=domain_a)
    assert (policy.junk_score, policy.quarantine_days, policy.header_score) == (7.5, 90, 5.0)

    full = {
        "header_score": 3,
        "junk_score": 4,
        "quarantine_score": 8,
        "reject_score": 30,
        "unscannable_action": "junk",
        "scanner_failure": "closed",
        "quarantine_days": 14,
        "digest_default": "weekly",
        "bayes_enabled": False,
    }
    assert_error(as_admin_a.put(url, {"junk_score": 4}, format="json"), 400, field="header_score")
    replaced = as_admin_a.put(url, full, format="json")
    assert replaced.status_code == 200, replaced.content
    policy.refresh_from_db()
    assert (policy.quarantine_score, policy.scanner_failure, policy.bayes_enabled) == (8, "closed", False)
    assert as_admin_a.get("/api/v1/threat-policies/").json()["results"][0]["digest_default"] == "weekly"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"junk_score": 4}, "junk_score"),  # below the default header threshold (5)
        ({"quarantine_score": 20}, "reject_score"),  # above the default reject threshold (15)
        ({"quarantine_days": 0}, "quarantine_days"),
        ({"quarantine_days": 4000}, "quarantine_days"),
        ({"scanner_failure": "maybe"}, "scanner_failure"),
        ({"header_score": "high"}, "header_score"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_policy_validation(as_admin_a, domain_a, payload, field):
    response = as_admin_a.patch(f"/api/v1/threat-policies/{domain_a.pk}/", payload, format="json")
    assert_error(response, 400, field=field)
    assert not DomainPolicy.objects.exists()


def test_a_stricter_policy_changes_where_mail_goes(as_admin_a, domain_a, mailbox_a):
    """The policy saved through the API is the one delivery uses: a score of 42 under a
    raised quarantine threshold files to Junk instead of the quarantine."""
    as_admin_a.patch(
        f"/api/v1/threat-policies/{domain_a.pk}/",
        {"quarantine_score": 50, "reject_score": 60},
        format="json",
    )
    raw = b"From: c@remote.example\r\nTo: alice@alpha.test\r\nSubject: [spam] deal\r\n\r\nbuy\r\n"
    [message] = mail_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from="c@remote.example",
                recipients=(ALICE,),
                raw=raw,
                peer_ip="198.51.100.20",
            )
        ]
    )
    mail_services.message_deliver(message_id=message.pk)
    assert not QuarantineItem.objects.filter(message=message).exists()
    assert list(MailItem.objects.filter(message=message).values_list("folder__special_use", flat=True)) == [
        "junk"
    ]


def test_other_mailbox_owned_by_a_domain_admin(api_client_for, admin_a, domain_b):
    """A domain admin who also owns a mailbox elsewhere reviews that mailbox's quarantine."""
    own = MailboxFactory(
        domain=domain_b, local_part="moonlight", address="moonlight@beta.test", owner=admin_a
    )
    item = hold("[spam] side job", recipients=(own.address,))
    client = api_client_for(admin_a)
    assert ids(client.get("/api/v1/quarantine/")) == {item.pk}
    response = client.post(f"/api/v1/quarantine/{item.pk}/release/", {}, format="json")
    assert response.status_code == 200, response.content
    assert QuarantineRecipient.objects.get(item=item).state == "released"


@pytest.mark.parametrize("resource", ["threat-lists", "content-rules", "threat-policies", "quarantine"])
def test_malformed_and_unknown_ids_are_json_404s(as_super, domain_a, resource):
    for bad in ("abc", "999999"):
        assert_error(as_super.get(f"/api/v1/{resource}/{bad}/"), 404)


def test_list_and_policy_query_counts_are_capped(
    as_admin_a, admin_a, domain_a, mailbox_a, django_assert_max_num_queries
):
    from apps.threats.services import rules

    for n in range(6):
        rules.list_entry_create(
            actor=admin_a, kind="block", match="ip", value=f"192.0.2.{n}", domain=domain_a
        )
        rules.list_entry_create(
            actor=admin_a, kind="allow", match="sender", value=f"friend{n}@example.org", mailbox=mailbox_a
        )
        rules.content_rule_create(
            actor=admin_a, name=f"rule {n}", target="body", pattern=f"word{n}", score=1, domain=domain_a
        )
    for n in range(4):
        domain = DomainFactory(name=f"extra{n}.test")
        domain.admins.add(admin_a)
        if n % 2:
            rules.domain_policy_update(actor=admin_a, domain=domain, junk_score=7)
    for url, rows in (
        ("/api/v1/threat-lists/", 12),
        ("/api/v1/content-rules/", 6),
        ("/api/v1/threat-policies/", 5),
    ):
        with django_assert_max_num_queries(6):
            response = as_admin_a.get(url)
        assert len(response.json()["results"]) == rows, url
    customised = {
        row["domain_name"]: row["is_default"]
        for row in as_admin_a.get("/api/v1/threat-policies/").json()["results"]
    }
    assert customised == {
        "alpha.test": True,
        "extra0.test": True,
        "extra1.test": False,
        "extra2.test": True,
        "extra3.test": False,
    }
