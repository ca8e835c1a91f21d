"""The outbound queue's admin adapters: the REST API (/api/v1/queue/) and the dashboard
pages (/relay/queue/). Scope, filters, the summary, actions, and error shapes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Message
from apps.relay import services
from apps.relay.models import DeliveryAttempt, QueueItem, QueueRecipient

pytestmark = pytest.mark.django_db

API = "/api/v1/queue"
PAGE = "/relay/queue"
HX = {"HTTP_HX_REQUEST": "true"}
ERROR_KEYS = {"code", "detail", "fields"}
REPLY = "451 4.7.1 Greylisted by mx.remote.test, try again later"
LIST_QUERY_CAP = 5  # token lookup and its last_used_at, admin domains, count, page


def enqueue(
    *, submitted_by=None, sender: str = "alice@alpha.test", to: tuple[str, ...] = ("bob@remote.test",)
) -> QueueItem:
    raw = f"From: {sender}\r\nSubject: Quarterly report\r\n\r\nbody\r\n".encode()
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from=sender,
        recipients=(),
        raw=raw,
        submitted_by_id=submitted_by.pk if submitted_by else None,
    )
    with transaction.atomic():
        (message,) = mail_services.messages_accept(incoming=[incoming])
        (item,) = services.queue_items_create(
            message=message, sender=sender, recipients=[(a, "") for a in to]
        )
    return item


def defer(item: QueueItem) -> QueueItem:
    now = timezone.now()
    QueueRecipient.objects.filter(item=item).update(
        state=QueueRecipient.State.DEFERRED, reply=REPLY, reply_code=451, remote_host="mx.remote.test"
    )
    DeliveryAttempt.objects.create(
        item=item,
        started_at=now - timedelta(seconds=2),
        finished_at=now,
        host="mx.remote.test",
        port=25,
        tls=True,
        outcome=DeliveryAttempt.Outcome.DEFERRED,
        reply_code=451,
        reply=REPLY,
        detail={
            "recipients": {
                a: {"code": 451, "reply": REPLY} for a in item.recipients.values_list("address", flat=True)
            },
            "tried": ["mx1.remote.test [192.0.2.1]: connection refused", "mx.remote.test [192.0.2.2]"],
        },
    )
    QueueItem.objects.filter(pk=item.pk).update(
        state=QueueItem.State.DEFERRED,
        attempts=1,
        last_attempt_at=now,
        last_reply=REPLY,
        next_attempt_at=now + timedelta(minutes=10),
    )
    item.refresh_from_db()
    return item


def assert_error(response, status: int, code: str | None = None, *, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    if code is not None:
        assert body["code"] == code, body
    if field is not None:
        assert body["fields"].get(field), body
    return body


@pytest.fixture
def world(mailbox_a, mailbox_b):
    """alpha: one deferred item, one queued; beta: one queued item of bob's."""
    return {
        "deferred": defer(enqueue(submitted_by=mailbox_a, to=("bob@remote.test", "dan@remote.test"))),
        "queued": enqueue(submitted_by=mailbox_a, to=("eve@other.test",)),
        "beta": enqueue(submitted_by=mailbox_b, sender="bob@beta.test", to=("zed@remote.test",)),
    }


@pytest.fixture
def as_super(api_client_for, superadmin):
    return api_client_for(superadmin)


@pytest.fixture
def as_admin_a(api_client_for, admin_a):
    return api_client_for(admin_a)


@pytest.fixture
def as_admin_b(api_client_for, admin_b):
    return api_client_for(admin_b)


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


# --- API: list, filters, scope ----------------------------------------------------------


def test_list_is_paginated_and_scoped(world, as_super, as_admin_a, as_admin_b):
    body = as_super.get(API + "/").json()
    assert body["count"] == 3 and set(body) >= {"count", "next", "previous", "results"}
    assert ids(as_admin_a.get(API + "/")) == {world["deferred"].pk, world["queued"].pk}
    assert ids(as_admin_b.get(API + "/")) == {world["beta"].pk}


def test_list_row_shape(world, as_admin_a):
    row = next(r for r in as_admin_a.get(API + "/").json()["results"] if r["id"] == world["deferred"].pk)
    assert row["queue_id"] == world["deferred"].message.queue_id
    assert row["state"] == "deferred" and row["kind"] == "submission" and row["on_hold"] is False
    assert row["sender"] == "alice@alpha.test" and row["domain"] == "remote.test"
    assert row["recipient_count"] == 2 and row["attempts"] == 1 and row["last_reply"] == REPLY
    assert "recipients" not in row and "attempt_log" not in row


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=deferred", {"deferred"}),
        ("state=queued", {"queued", "beta", "held"}),
        ("domain=OTHER.test", {"queued"}),
        ("sender=BETA", {"beta"}),
        ("on_hold=true", {"held"}),
        ("on_hold=false", {"deferred", "queued", "beta"}),
        ("kind=submission", {"deferred", "queued", "beta", "held"}),
        ("kind=bounce", set()),
    ],
)
def test_list_filters(world, as_super, superadmin, mailbox_a, query, expected):
    held = services.queue_item_hold(
        actor=superadmin, item=enqueue(submitted_by=mailbox_a, to=("h@held.test",))
    )
    names = {**{name: item.pk for name, item in world.items()}, "held": held.pk}
    assert ids(as_super.get(f"{API}/?{query}")) == {names[name] for name in expected}


def test_list_filter_by_queue_id_and_ordering(world, as_super):
    queue_id = world["queued"].message.queue_id
    assert ids(as_super.get(f"{API}/?queue_id={queue_id.lower()}")) == {world["queued"].pk}
    body = as_super.get(f"{API}/?ordering=-next_attempt_at").json()
    assert body["results"][0]["id"] == world["deferred"].pk  # due in ten minutes: the latest


def test_list_rejects_an_unknown_state(world, as_super):
    assert_error(as_super.get(f"{API}/?state=lost"), 400, "invalid", field="state")


def test_list_query_count_is_capped(world, as_admin_a, mailbox_a, django_assert_max_num_queries):
    for n in range(10):
        enqueue(submitted_by=mailbox_a, to=(f"r{n}@many.test",))
    with django_assert_max_num_queries(LIST_QUERY_CAP):
        response = as_admin_a.get(API + "/")
    assert response.json()["count"] == 12


def test_mailbox_users_and_anonymous_callers_are_refused(world, api_client_for, user_a):
    as_user = api_client_for(user_a)
    item = world["deferred"]
    for method, url in [
        ("get", API + "/"),
        ("get", f"{API}/summary/"),
        ("get", f"{API}/{item.pk}/"),
        ("post", f"{API}/{item.pk}/retry/"),
        ("post", f"{API}/{item.pk}/delete/"),
        ("delete", f"{API}/{item.pk}/"),
    ]:
        assert_error(getattr(as_user, method)(url), 403, "permission_denied")
        anonymous = getattr(api_client_for(), method)(url)
        assert anonymous.status_code in (401, 403) and set(anonymous.json()) == ERROR_KEYS
    assert QueueItem.objects.filter(pk=item.pk, state=QueueItem.State.DEFERRED).exists()


def test_another_domains_item_is_not_found(world, as_admin_b):
    item = world["deferred"]
    assert_error(as_admin_b.get(f"{API}/{item.pk}/"), 404, "not_found")
    for action in ("retry", "hold", "release", "delete"):
        assert_error(as_admin_b.post(f"{API}/{item.pk}/{action}/", {}, format="json"), 404, "not_found")
    assert_error(as_admin_b.delete(f"{API}/{item.pk}/"), 404, "not_found")
    item.refresh_from_db()
    assert (item.state, item.on_hold) == (QueueItem.State.DEFERRED, False)


# --- API: detail and summary ------------------------------------------------------------


def test_detail_tells_the_whole_story(world, as_admin_a):
    item = world["deferred"]
    body = as_admin_a.get(f"{API}/{item.pk}/").json()
    assert body["message"]["queue_id"] == item.message.queue_id
    assert body["message"]["size"] == item.message.size
    assert set(body["message"]) == {"queue_id", "subject", "from_header", "size", "received_at"}
    assert [(r["address"], r["state"], r["reply"]) for r in body["recipients"]] == [
        ("bob@remote.test", "deferred", REPLY),
        ("dan@remote.test", "deferred", REPLY),
    ]
    (attempt,) = body["attempt_log"]
    assert attempt["host"] == "mx.remote.test" and attempt["port"] == 25 and attempt["tls"] is True
    assert attempt["outcome"] == "deferred" and attempt["reply_code"] == 451 and attempt["reply"] == REPLY
    assert attempt["tried"][0] == "mx1.remote.test [192.0.2.1]: connection refused"
    assert attempt["recipient_replies"] == {"bob@remote.test": REPLY, "dan@remote.test": REPLY}
    assert attempt["started_at"] and attempt["finished_at"]


def test_summary_counts_the_callers_queue(world, as_admin_a, as_super):
    body = as_admin_a.get(f"{API}/summary/").json()
    assert (body["queued"], body["deferred"], body["waiting"], body["on_hold"]) == (1, 1, 2, 0)
    assert body["top_deferred_domains"] == [{"domain": "remote.test", "count": 1}]
    assert body["oldest_deferred_age_seconds"] >= 0
    assert as_super.get(f"{API}/summary/").json()["waiting"] == 3


# --- API: actions -----------------------------------------------------------------------


def test_retry_hold_release(world, as_admin_a):
    item = world["deferred"]
    body = as_admin_a.post(f"{API}/{item.pk}/retry/").json()
    assert body["state"] == "queued" and body["id"] == item.pk

    body = as_admin_a.post(f"{API}/{item.pk}/hold/").json()
    assert body["on_hold"] is True
    assert_error(as_admin_a.post(f"{API}/{item.pk}/retry/"), 409, "queue_item_held")

    body = as_admin_a.post(f"{API}/{item.pk}/release/").json()
    assert body["on_hold"] is False
    assert QueueItem.objects.get(pk=item.pk).on_hold is False


def test_retry_of_a_sent_item_is_a_conflict(world, as_admin_a):
    item = world["queued"]
    QueueItem.objects.filter(pk=item.pk).update(state=QueueItem.State.SENT)
    body = assert_error(as_admin_a.post(f"{API}/{item.pk}/retry/"), 409, "queue_item_final")
    assert "sent" in body["detail"]


def test_post_delete_with_bounce_reports_to_the_sender(world, as_admin_a):
    item = world["deferred"]
    response = as_admin_a.post(f"{API}/{item.pk}/delete/", {"bounce": True}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "id": item.pk,
        "queue_id": item.message.queue_id,
        "deleted": False,
        "bounced": ["bob@remote.test", "dan@remote.test"],
    }
    assert QueueItem.objects.get(pk=item.pk).state == QueueItem.State.BOUNCED
    assert Message.objects.filter(mail_from="", recipients__address="alice@alpha.test").count() == 1


def test_post_delete_without_bounce_and_http_delete_remove_the_item(world, as_admin_a):
    first, second = world["deferred"], world["queued"]
    body = as_admin_a.post(f"{API}/{first.pk}/delete/", {}, format="json").json()
    assert body["deleted"] is True and body["bounced"] == []
    response = as_admin_a.delete(f"{API}/{second.pk}/")
    assert response.status_code == 204
    assert not QueueItem.objects.filter(pk__in=[first.pk, second.pk]).exists()
    assert not Message.objects.filter(mail_from="").exists()


@pytest.mark.parametrize(
    ("payload", "field"), [({"bounce": "perhaps"}, "bounce"), ({"bounce": True, "notify": True}, "notify")]
)
def test_delete_rejects_bad_payloads(world, as_admin_a, payload, field):
    item = world["deferred"]
    assert_error(
        as_admin_a.post(f"{API}/{item.pk}/delete/", payload, format="json"), 400, "invalid", field=field
    )
    assert QueueItem.objects.get(pk=item.pk).state == QueueItem.State.DEFERRED


# --- Pages ------------------------------------------------------------------------------


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def test_queue_page_shows_summary_filters_and_rows(world, login, admin_a):
    response = login(admin_a).get(PAGE + "/")
    body = response.content.decode()
    assert response.status_code == 200 and "<html" in body
    assert 'id="queue-summary"' in body and 'id="queue-table"' in body and 'name="state"' in body
    assert world["deferred"].message.queue_id in body and world["queued"].message.queue_id in body
    assert world["beta"].message.queue_id not in body
    assert "Greylisted by mx.remote.test" in body


def test_queue_page_filters_with_htmx_partial(world, login, admin_a):
    response = login(admin_a).get(PAGE + "/?state=deferred&domain=&sender=&held=", **HX)
    body = response.content.decode()
    assert "<html" not in body and body.lstrip().startswith('<div id="queue-table">')
    assert world["deferred"].message.queue_id in body
    assert world["queued"].message.queue_id not in body


def test_queue_page_ignores_an_invalid_filter(world, login, admin_a):
    body = login(admin_a).get(PAGE + "/?state=lost&held=maybe").content.decode()
    assert world["deferred"].message.queue_id in body and world["queued"].message.queue_id in body


def test_detail_page_renders_the_attempt_log(world, login, admin_a):
    item = world["deferred"]
    response = login(admin_a).get(f"{PAGE}/{item.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="attempt-log"' in body and "mx.remote.test:25" in body
    assert REPLY in body and "mx1.remote.test [192.0.2.1]: connection refused" in body
    assert f'action="/relay/queue/{item.pk}/retry/"' in body and "csrfmiddlewaretoken" in body
    assert f"/relay/queue/{item.pk}/delete/?bounce=1" in body


def test_detail_page_lists_replies_per_recipient_when_they_differ(world, login, admin_a):
    item = world["deferred"]
    DeliveryAttempt.objects.filter(item=item).update(
        detail={
            "recipients": {
                "bob@remote.test": {"code": 250, "reply": "250 2.0.0 Ok: queued as R1"},
                "dan@remote.test": {"code": 452, "reply": "452 4.2.2 Mailbox full"},
            },
            "tried": [],
        }
    )
    body = login(admin_a).get(f"{PAGE}/{item.pk}/").content.decode()
    assert "dan@remote.test: <code>452 4.2.2 Mailbox full</code>" in body
    assert "bob@remote.test: <code>250 2.0.0 Ok: queued as R1</code>" in body


def test_page_actions_change_the_item(world, login, admin_a):
    client = login(admin_a)
    item = world["deferred"]
    response = client.post(f"{PAGE}/{item.pk}/hold/")
    assert response.status_code == 302 and response["Location"] == f"{PAGE}/{item.pk}/"
    assert QueueItem.objects.get(pk=item.pk).on_hold is True
    client.post(f"{PAGE}/{item.pk}/release/")
    client.post(f"{PAGE}/{item.pk}/retry/")
    item.refresh_from_db()
    assert (item.on_hold, item.state) == (False, QueueItem.State.QUEUED)
    assert client.get(f"{PAGE}/{item.pk}/retry/").status_code == 405


def test_page_refusal_is_shown_as_a_message(world, login, admin_a):
    client = login(admin_a)
    item = world["queued"]
    QueueItem.objects.filter(pk=item.pk).update(state=QueueItem.State.SENT)
    body = client.post(f"{PAGE}/{item.pk}/retry/", follow=True).content.decode()
    assert "nothing is left to deliver" in body


def test_page_delete_asks_first_then_bounces(world, login, admin_a):
    client = login(admin_a)
    item = world["deferred"]
    confirm = client.get(f"{PAGE}/{item.pk}/delete/?bounce=1").content.decode()
    assert "delivery report" in confirm and 'name="bounce" value="1"' in confirm
    assert QueueItem.objects.get(pk=item.pk).state == QueueItem.State.DEFERRED  # GET changes nothing

    response = client.post(f"{PAGE}/{item.pk}/delete/", {"bounce": "1"})
    assert response.status_code == 302
    assert QueueItem.objects.get(pk=item.pk).state == QueueItem.State.BOUNCED
    assert Message.objects.filter(mail_from="", recipients__address="alice@alpha.test").exists()

    other = world["queued"]
    response = client.post(f"{PAGE}/{other.pk}/delete/", {"bounce": "0"})
    assert response["Location"] == PAGE + "/"
    assert not QueueItem.objects.filter(pk=other.pk).exists()


def test_page_bulk_hold_and_confirmed_bulk_delete(world, login, admin_a):
    client = login(admin_a)
    chosen = [world["deferred"].pk, world["queued"].pk, world["beta"].pk]
    response = client.post(
        f"{PAGE}/bulk/", {"action": "hold", "items": chosen, "next": "/relay/queue/?state="}
    )
    assert response.status_code == 302 and response["Location"] == "/relay/queue/?state="
    assert set(QueueItem.objects.filter(on_hold=True).values_list("pk", flat=True)) == set(chosen[:2])

    confirm = client.post(f"{PAGE}/bulk/", {"action": "delete", "items": chosen[:2]})
    assert confirm.status_code == 200 and 'name="confirmed"' in confirm.content.decode()
    assert QueueItem.objects.filter(pk__in=chosen[:2]).count() == 2

    response = client.post(
        f"{PAGE}/bulk/", {"action": "delete", "items": chosen, "confirmed": "1", "next": "https://evil.test/"}
    )
    assert response["Location"] == PAGE + "/"  # never off-site
    assert list(QueueItem.objects.values_list("pk", flat=True)) == [world["beta"].pk]


def test_pages_are_not_found_for_mailbox_users_and_other_domains(world, login, client, user_a, admin_b):
    item = world["deferred"]
    assert client.get(PAGE + "/").status_code == 302  # signed out: to the login page
    login(user_a)
    assert client.get(PAGE + "/").status_code == 404
    assert client.post(f"{PAGE}/{item.pk}/hold/").status_code == 404
    login(admin_b)
    assert client.get(f"{PAGE}/{item.pk}/").status_code == 404
    assert client.post(f"{PAGE}/{item.pk}/delete/", {"bounce": "1"}).status_code == 404
    assert QueueItem.objects.get(pk=item.pk).state == QueueItem.State.DEFERRED
