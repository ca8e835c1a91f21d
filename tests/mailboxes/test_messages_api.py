"""The message store over REST: /api/v1/messages/ and a mailbox's folders and expunge."""

from __future__ import annotations

import logging
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import pytest
from django.utils import timezone

from apps.mailboxes import services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Mailbox, MailItem, Message
from apps.mailboxes.services import IncomingMessage

pytestmark = pytest.mark.django_db

REMOTE_IMAGE = "https://tracker.example.net/pixel.png"
HOSTILE_HTML = (
    "<p>Quarterly <b>numbers</b> inside.</p>"
    "<script>alert(1)</script>"
    '<img src="x" onerror="alert(2)">'
    '<a href="javascript:alert(3)">click</a>'
    f'<img src="{REMOTE_IMAGE}" alt="pixel">'
)


# --- Helpers (also used by test_webmail_views) -----------------------------------------


def build_mail(
    *,
    subject: str,
    text: str = "Hello there.",
    html: str | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    sender: str = "Sender <sender@remote.test>",
    to: str = "alice@alpha.test",
) -> bytes:
    """An RFC 5322 message as bytes with CRLF line endings."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = format_datetime(timezone.now())
    mail["Message-ID"] = make_msgid(domain="remote.test")
    mail.set_content(text)
    if html is not None:
        mail.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes(policy=policy.SMTP)


def deliver(raw: bytes, *recipients: str) -> Message:
    """Accept a message as SMTP would, then run its delivery (as the task would)."""
    [message] = services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=services.new_queue_id(),
                mail_from="sender@remote.test",
                recipients=recipients,
                raw=raw,
                peer_ip="192.0.2.7",
                helo="mx.remote.test",
            )
        ]
    )
    services.message_deliver(message_id=message.pk)
    message.refresh_from_db()  # scanning stored a copy with its headers: a new hash
    return message


def item_of(message: Message, address: str) -> MailItem:
    return MailItem.objects.select_related("folder", "mailbox").get(message=message, mailbox__address=address)


def assert_error(response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "detail", "fields"} and body["detail"]
    if code:
        assert body["code"] == code
    if field:
        assert field in body["fields"], body
    return body


# --- Fixtures --------------------------------------------------------------------------


def deliver_sample_mail() -> dict:
    """alice@alpha.test: a plain message, an HTML one with hostile markup and a remote
    image, and one with attachments. bob@beta.test: one message. (Needs both mailboxes.)

    One attachment name hides its extension behind a right-to-left override, which the
    scanner's attachment policy holds; here the viewer's own handling of such a name is
    under test, so that stage is left out."""
    from django.conf import settings

    stages = settings.A3_SCAN_STAGES
    settings.A3_SCAN_STAGES = [path for path in stages if not path.endswith(".attachments_stage")]
    try:
        return _deliver_sample_mail()
    finally:
        settings.A3_SCAN_STAGES = stages


def _deliver_sample_mail() -> dict:
    plain_raw = build_mail(subject="Lunch on Friday", text="Shall we meet at noon?")
    hostile_raw = build_mail(subject="Quarterly report", text="See the HTML part.", html=HOSTILE_HTML)
    files_raw = build_mail(
        subject="Files for you",
        text="Two files attached.",
        attachments=(
            ("notes.txt", "text/plain", b"plain notes\n"),
            ("../../etc/pass\u202ewd\x07.html", "text/html", b"<script>alert(4)</script>"),
            ("Bericht für Jürgen.pdf", "application/pdf", b"%PDF-1.4 not really"),
        ),
    )
    bob_raw = build_mail(subject="Beta secrets", text="Only for bob.", to="bob@beta.test")
    plain = deliver(plain_raw, "alice@alpha.test")
    hostile = deliver(hostile_raw, "alice@alpha.test")
    files = deliver(files_raw, "alice@alpha.test")
    bob = deliver(bob_raw, "bob@beta.test")
    return {
        "plain": item_of(plain, "alice@alpha.test"),
        "hostile": item_of(hostile, "alice@alpha.test"),
        "files": item_of(files, "alice@alpha.test"),
        "bob": item_of(bob, "bob@beta.test"),
        "raw": {"plain": plain_raw, "hostile": hostile_raw, "files": files_raw, "bob": bob_raw},
    }


@pytest.fixture
def mail(domain_a, domain_b, mailbox_a, mailbox_b):
    return deliver_sample_mail()


@pytest.fixture
def as_alice(user_a, api_client_for):
    return api_client_for(user_a)


@pytest.fixture
def as_admin_a(admin_a, api_client_for):
    return api_client_for(admin_a)


@pytest.fixture
def as_admin_b(admin_b, api_client_for):
    return api_client_for(admin_b)


@pytest.fixture
def as_root(superadmin, api_client_for):
    return api_client_for(superadmin)


def subjects(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["subject"] for row in response.json()["results"]]


# --- List ------------------------------------------------------------------------------


def test_message_list_returns_inbox_newest_first(mail, as_alice):
    response = as_alice.get("/api/v1/messages/", {"mailbox": "alice@alpha.test", "folder": "INBOX"})
    assert subjects(response) == ["Files for you", "Quarterly report", "Lunch on Friday"]
    body = response.json()
    assert body["count"] == 3
    first = body["results"][0]
    assert first["id"] == mail["files"].pk
    assert first["mailbox"] == "alice@alpha.test" and first["folder"] == "INBOX"
    assert first["from_header"] == "Sender <sender@remote.test>"
    assert first["to_header"] == "alice@alpha.test"
    assert first["has_attachments"] is True
    assert first["seen"] is False and first["flagged"] is False and first["deleted"] is False
    assert first["size"] == len(mail["raw"]["files"])
    assert first["uid"] == mail["files"].uid and first["message_id"].endswith("@remote.test>")


def test_message_list_without_mailbox_is_everything_in_scope(mail, as_alice, as_root, as_admin_b):
    assert sorted(subjects(as_alice.get("/api/v1/messages/"))) == [
        "Files for you",
        "Lunch on Friday",
        "Quarterly report",
    ]
    assert len(subjects(as_root.get("/api/v1/messages/"))) == 4
    assert subjects(as_admin_b.get("/api/v1/messages/")) == ["Beta secrets"]


def test_message_list_filters_unread_and_flagged(mail, as_alice):
    services.mail_item_set_flags(
        actor=mail["plain"].mailbox.owner, item=mail["plain"], seen=True, flagged=True
    )
    base = {"mailbox": "alice@alpha.test", "folder": "inbox"}
    assert subjects(as_alice.get("/api/v1/messages/", {**base, "unread": "true"})) == [
        "Files for you",
        "Quarterly report",
    ]
    assert subjects(as_alice.get("/api/v1/messages/", {**base, "unread": "false"})) == ["Lunch on Friday"]
    assert subjects(as_alice.get("/api/v1/messages/", {**base, "flagged": "1"})) == ["Lunch on Friday"]
    assert len(subjects(as_alice.get("/api/v1/messages/", {**base, "flagged": "0"}))) == 2


def test_message_list_full_text_search_matches_body_subject_and_sender(mail, as_alice):
    url = "/api/v1/messages/"
    assert subjects(as_alice.get(url, {"mailbox": "alice@alpha.test", "search": "noon"})) == [
        "Lunch on Friday"
    ]
    assert subjects(as_alice.get(url, {"search": "quarterly"})) == ["Quarterly report"]
    assert len(subjects(as_alice.get(url, {"search": "sender@remote.test"}))) == 3
    assert subjects(as_alice.get(url, {"search": "nothing-like-this"})) == []
    # Another tenant's mail never matches, even for a word only it contains.
    assert subjects(as_alice.get(url, {"search": "secrets"})) == []


def test_message_list_folder_filter_follows_moves(mail, as_alice):
    services.mail_item_move(actor=mail["plain"].mailbox.owner, item=mail["plain"], folder_name="Junk")
    junk = as_alice.get("/api/v1/messages/", {"mailbox": "alice@alpha.test", "folder": "Junk"})
    assert subjects(junk) == ["Lunch on Friday"]
    inbox = as_alice.get("/api/v1/messages/", {"mailbox": "alice@alpha.test", "folder": "INBOX"})
    assert "Lunch on Friday" not in subjects(inbox)


def test_message_list_paginates(mail, as_alice):
    first = as_alice.get("/api/v1/messages/", {"mailbox": "alice@alpha.test", "page_size": 2})
    body = first.json()
    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"] and body["previous"] is None
    second = as_alice.get(body["next"])
    assert subjects(second) == ["Lunch on Friday"]
    assert second.json()["next"] is None


def test_message_list_query_count_is_capped(
    domain_a, mailbox_a, user_a, as_alice, django_assert_max_num_queries
):
    for number in range(20):
        deliver(build_mail(subject=f"Bulk {number}", text=f"body {number}"), "alice@alpha.test")
    with django_assert_max_num_queries(7):  # token, mailbox, folder, count, page
        response = as_alice.get("/api/v1/messages/", {"mailbox": "alice@alpha.test", "folder": "INBOX"})
    assert subjects(response) == [f"Bulk {number}" for number in range(19, -1, -1)]
    with django_assert_max_num_queries(5):
        response = as_alice.get("/api/v1/messages/", {"search": "body"})
    assert len(subjects(response)) == 20


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"unread": "maybe"}, "unread"),
        ({"flagged": "2"}, "flagged"),
        ({"folder": "INBOX"}, "folder"),
        ({"search": "x" * 501}, "search"),
        ({"mailbox": "a" * 400}, "mailbox"),
    ],
)
def test_message_list_rejects_bad_filters_with_400(mail, as_alice, params, field):
    assert_error(as_alice.get("/api/v1/messages/", params), 400, "invalid", field)


@pytest.mark.parametrize(
    "params",
    [
        {"mailbox": "bob@beta.test"},
        {"mailbox": "nobody@alpha.test"},
        {"mailbox": "not an address"},
        {"mailbox": "alice@alpha.test", "folder": "Nope"},
        {"page": "99"},
    ],
)
def test_message_list_unknown_or_foreign_mailbox_folder_or_page_is_404(mail, as_alice, params):
    assert_error(as_alice.get("/api/v1/messages/", params), 404)


# --- Detail ----------------------------------------------------------------------------


def test_message_detail_has_headers_text_sanitised_html_and_envelope(mail, as_alice):
    item = mail["hostile"]
    response = as_alice.get(f"/api/v1/messages/{item.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == item.pk and body["subject"] == "Quarterly report"
    assert ["Subject", "Quarterly report"] in body["headers"]
    assert ["To", "alice@alpha.test"] in body["headers"]
    # The scanner's headers come first (X-Spam-*), then the message's own, in order.
    names = [
        name for name, _ in body["headers"] if not name.startswith(("X-Spam-", "Authentication-Results"))
    ]
    assert names[:2] == ["From", "To"]
    assert body["text"].strip() == "See the HTML part."
    html = body["html"]
    assert "Quarterly <b>numbers</b> inside." in html
    for hostile in ("<script", "alert(1)", "onerror", "javascript:", REMOTE_IMAGE):
        assert hostile not in html
    assert body["blocked_images"] == 2 and body["remote_images"] is False
    assert '<img src="data:image/svg+xml;utf8,' in html and 'alt="pixel"' in html  # the placeholder
    assert body["attachments"] == []
    assert body["envelope"]["mail_from"] == "sender@remote.test"
    assert body["envelope"]["helo"] == "mx.remote.test"
    assert body["envelope"]["peer_ip"] == "192.0.2.7"
    assert body["envelope"]["queue_id"] == item.message.queue_id
    assert body["raw_url"] == f"http://testserver/api/v1/messages/{item.pk}/raw"
    item.refresh_from_db()
    assert item.seen is False  # reading through the API never sets \Seen


def test_message_detail_remote_images_only_when_asked(mail, as_alice):
    item = mail["hostile"]
    body = as_alice.get(f"/api/v1/messages/{item.pk}/", {"remote_images": "1"}).json()
    assert REMOTE_IMAGE in body["html"]
    assert body["blocked_images"] == 0 and body["remote_images"] is True
    assert "<script" not in body["html"] and "onerror" not in body["html"]


def test_message_detail_lists_attachments_with_download_urls(mail, as_alice):
    item = mail["files"]
    body = as_alice.get(f"/api/v1/messages/{item.pk}/").json()
    assert body["html"] is None and body["text"].strip() == "Two files attached."
    names = [(row["filename"], row["content_type"], row["size"]) for row in body["attachments"]]
    assert names[0] == ("notes.txt", "text/plain", len(b"plain notes\n"))
    # The name is shown as it will be saved: no path, no bidi override, no control character.
    assert names[1] == ("passwd.html", "text/html", len(b"<script>alert(4)</script>"))
    index = body["attachments"][0]["index"]
    assert body["attachments"][0]["url"] == f"http://testserver/api/v1/messages/{item.pk}/attachments/{index}"


def test_message_detail_rejects_bad_remote_images_value(mail, as_alice):
    assert_error(
        as_alice.get(f"/api/v1/messages/{mail['plain'].pk}/", {"remote_images": "yes please"}),
        400,
        "invalid",
        "remote_images",
    )


def test_message_detail_missing_blob_is_404_not_500(mail, as_alice):
    blob_store().delete(mail["plain"].message.blob_sha256)
    assert_error(as_alice.get(f"/api/v1/messages/{mail['plain'].pk}/"), 404, "content_missing")
    assert_error(as_alice.get(f"/api/v1/messages/{mail['plain'].pk}/raw"), 404, "content_missing")


# --- Raw and attachments ---------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "message/rfc822", "application/json", "*/*"])
def test_message_raw_is_byte_identical_to_the_stored_blob(mail, as_alice, accept):
    item = mail["hostile"]
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = as_alice.get(f"/api/v1/messages/{item.pk}/raw", **headers)
    assert response.status_code == 200
    assert response["Content-Type"] == "message/rfc822"
    content = b"".join(response.streaming_content)
    item.message.refresh_from_db()
    assert content == blob_store().read(item.message.blob_sha256)
    # As received, below the headers the scanner added on top.
    assert content.endswith(mail["raw"]["hostile"]) and content.startswith(b"Authentication-Results: ")
    assert int(response["Content-Length"]) == len(content)
    assert response["Content-Disposition"] == f'attachment; filename="message-{item.pk}.eml"'
    assert response["X-Content-Type-Options"] == "nosniff"


def test_attachment_download_returns_decoded_bytes(mail, as_alice):
    item = mail["files"]
    first = as_alice.get(f"/api/v1/messages/{item.pk}/").json()["attachments"][0]
    response = as_alice.get(first["url"])
    assert response.status_code == 200
    assert response.content == b"plain notes\n"
    assert response["Content-Type"] == "text/plain"
    assert response["Content-Disposition"] == 'attachment; filename="notes.txt"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]


def test_attachment_download_neutralises_hostile_name_and_type(mail, as_alice):
    item = mail["files"]
    hostile = as_alice.get(f"/api/v1/messages/{item.pk}/").json()["attachments"][1]
    response = as_alice.get(hostile["url"])
    assert response.status_code == 200
    assert response.content == b"<script>alert(4)</script>"
    # Served as opaque bytes, never as HTML in our origin.
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == 'attachment; filename="passwd.html"'


def test_attachment_download_keeps_a_unicode_name(mail, as_alice):
    item = mail["files"]
    pdf = as_alice.get(f"/api/v1/messages/{item.pk}/").json()["attachments"][2]
    assert pdf["filename"] == "Bericht für Jürgen.pdf"
    response = as_alice.get(pdf["url"])
    assert response.content == b"%PDF-1.4 not really"
    assert response["Content-Type"] == "application/pdf"
    assert (
        response["Content-Disposition"] == "attachment; filename*=utf-8''Bericht%20f%C3%BCr%20J%C3%BCrgen.pdf"
    )


@pytest.mark.parametrize("index", ["999", "-1", "abc", "0", "1"])
def test_attachment_unknown_index_is_404_json(mail, as_alice, index):
    # Parts 0 and 1 exist (the multipart container and the text body) but are not attachments.
    assert_error(as_alice.get(f"/api/v1/messages/{mail['files'].pk}/attachments/{index}"), 404, "not_found")


# --- Flags, move, delete, expunge ------------------------------------------------------


def test_message_patch_sets_only_the_given_flags(mail, as_alice):
    item = mail["plain"]
    response = as_alice.patch(f"/api/v1/messages/{item.pk}/", {"seen": True, "flagged": True}, format="json")
    assert response.status_code == 200
    assert response.json()["seen"] is True and response.json()["flagged"] is True
    item.refresh_from_db()
    assert (item.seen, item.flagged, item.answered, item.deleted) == (True, True, False, False)
    as_alice.patch(f"/api/v1/messages/{item.pk}/", {"flagged": False, "answered": True}, format="json")
    item.refresh_from_db()
    assert (item.seen, item.flagged, item.answered, item.deleted) == (True, False, True, False)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "non_field_errors"),
        ({"seen": "sometimes"}, "seen"),
        ({"seen": True, "important": True}, "important"),
        ([True], "non_field_errors"),
    ],
)
def test_message_patch_rejects_bad_input(mail, as_alice, payload, field):
    item = mail["plain"]
    assert_error(
        as_alice.patch(f"/api/v1/messages/{item.pk}/", payload, format="json"), 400, "invalid", field
    )
    item.refresh_from_db()
    assert item.seen is False


def test_message_patch_rejects_malformed_json(mail, as_alice):
    response = as_alice.generic(
        "PATCH", f"/api/v1/messages/{mail['plain'].pk}/", b"{not json", content_type="application/json"
    )
    assert_error(response, 400, "parse_error")


def test_message_move_to_junk(mail, as_alice):
    item = mail["plain"]
    response = as_alice.post(f"/api/v1/messages/{item.pk}/move/", {"folder": "Junk"}, format="json")
    assert response.status_code == 200
    assert response.json()["folder"] == "Junk"
    item.refresh_from_db()
    assert item.folder.name == "Junk" and response.json()["uid"] == item.uid


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"folder": "Nowhere"}, "unknown_folder", "folder"),
        ({}, "invalid", "folder"),
        ({"folder": ""}, "invalid", "folder"),
        ({"folder": "Junk", "copy": True}, "invalid", "copy"),
    ],
)
def test_message_move_rejects_bad_input(mail, as_alice, payload, code, field):
    item = mail["plain"]
    assert_error(as_alice.post(f"/api/v1/messages/{item.pk}/move/", payload, format="json"), 400, code, field)
    item.refresh_from_db()
    assert item.folder.name == "INBOX"


def test_message_delete_moves_to_trash_then_removes_and_frees_quota(mail, as_alice, mailbox_a):
    item = mail["plain"]
    size = len(mail["raw"]["plain"])
    used_before = Mailbox.objects.get(pk=mailbox_a.pk).used_bytes
    assert used_before == sum(len(mail["raw"][key]) for key in ("plain", "hostile", "files"))

    first = as_alice.delete(f"/api/v1/messages/{item.pk}/")
    assert first.status_code == 200 and first.json()["folder"] == "Trash"
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == used_before  # Trash still counts

    second = as_alice.delete(f"/api/v1/messages/{item.pk}/")
    assert second.status_code == 204 and second.content == b""
    assert not MailItem.objects.filter(pk=item.pk).exists()
    assert not Message.objects.filter(pk=item.message_id).exists()
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == used_before - size
    assert_error(as_alice.get(f"/api/v1/messages/{item.pk}/"), 404)


def test_mailbox_expunge_removes_deleted_flagged_and_frees_quota(mail, as_alice, mailbox_a):
    item = mail["hostile"]
    used_before = Mailbox.objects.get(pk=mailbox_a.pk).used_bytes
    as_alice.patch(f"/api/v1/messages/{item.pk}/", {"deleted": True}, format="json")
    listed = as_alice.get("/api/v1/messages/", {"mailbox": "alice@alpha.test", "folder": "INBOX"})
    assert "Quarterly report" not in subjects(listed)  # \Deleted is hidden from lists

    response = as_alice.post(f"/api/v1/mailboxes/{mailbox_a.pk}/expunge/", {"folder": "INBOX"}, format="json")
    assert response.status_code == 200
    expected_used = used_before - len(mail["raw"]["hostile"])
    assert response.json() == {"folder": "INBOX", "expunged": 1, "used_bytes": expected_used}
    assert not MailItem.objects.filter(pk=item.pk).exists()
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == expected_used
    again = as_alice.post(f"/api/v1/mailboxes/{mailbox_a.pk}/expunge/", {"folder": "INBOX"}, format="json")
    assert again.json()["expunged"] == 0


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"folder": "Nowhere"}, 404, "not_found"),
        ({}, 400, "invalid"),
        ({"folder": 3, "x": 1}, 400, "invalid"),
    ],
)
def test_mailbox_expunge_rejects_bad_input(mail, as_alice, mailbox_a, payload, status, code):
    response = as_alice.post(f"/api/v1/mailboxes/{mailbox_a.pk}/expunge/", payload, format="json")
    assert_error(response, status, code)


def test_mailbox_folders_have_counts_and_quota(mail, as_alice, mailbox_a):
    services.mail_item_set_flags(actor=mailbox_a.owner, item=mail["plain"], seen=True)
    services.mail_item_move(actor=mailbox_a.owner, item=mail["files"], folder_name="Junk")
    response = as_alice.get(f"/api/v1/mailboxes/{mailbox_a.pk}/folders/")
    assert response.status_code == 200
    body = response.json()
    used = sum(len(mail["raw"][key]) for key in ("plain", "hostile", "files"))
    assert body["mailbox"] == mailbox_a.pk and body["address"] == "alice@alpha.test"
    assert body["used_bytes"] == used and body["quota_bytes"] == 1024**3
    assert body["quota_percent"] == round(100 * used / 1024**3, 1)
    counts = {row["name"]: (row["special_use"], row["total"], row["unread"]) for row in body["folders"]}
    assert counts == {
        "INBOX": ("inbox", 2, 1),
        "Sent": ("sent", 0, 0),
        "Drafts": ("drafts", 0, 0),
        "Junk": ("junk", 1, 1),
        "Trash": ("trash", 0, 0),
    }


# --- Scoping and authentication --------------------------------------------------------


def message_endpoints(item_id: int, mailbox_id: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", f"/api/v1/messages/{item_id}/", None),
        ("get", f"/api/v1/messages/{item_id}/raw", None),
        ("get", f"/api/v1/messages/{item_id}/attachments/2", None),
        ("patch", f"/api/v1/messages/{item_id}/", {"seen": True}),
        ("post", f"/api/v1/messages/{item_id}/move/", {"folder": "Junk"}),
        ("delete", f"/api/v1/messages/{item_id}/", None),
        ("get", f"/api/v1/mailboxes/{mailbox_id}/folders/", None),
        ("post", f"/api/v1/mailboxes/{mailbox_id}/expunge/", {"folder": "INBOX"}),
    ]


@pytest.mark.parametrize("caller", ["as_alice", "as_admin_a"])
def test_another_tenants_message_is_404_everywhere(mail, request, caller, mailbox_b):
    client = request.getfixturevalue(caller)
    bob = mail["bob"]
    for method, url, payload in message_endpoints(bob.pk, mailbox_b.pk):
        response = getattr(client, method)(url, payload, format="json")
        assert_error(response, 404, "not_found")
    bob.refresh_from_db()
    assert (bob.folder.name, bob.seen) == ("INBOX", False)
    assert MailItem.objects.filter(pk=bob.pk).exists()


def test_mailbox_user_cannot_see_a_colleagues_mail(mail, domain_a, api_client_for):
    from tests.factories import MailboxFactory

    carol = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    client = api_client_for(carol.owner)
    assert subjects(client.get("/api/v1/messages/")) == []
    assert_error(client.get(f"/api/v1/messages/{mail['plain'].pk}/"), 404)
    assert_error(client.get("/api/v1/messages/", {"mailbox": "alice@alpha.test"}), 404)


def test_domain_admin_reads_and_files_mail_in_own_domain_and_it_is_recorded(mail, as_admin_a, caplog):
    item = mail["plain"]
    with caplog.at_level(logging.INFO, logger="apps.mailboxes.services.mailitems"):
        detail = as_admin_a.get(f"/api/v1/messages/{item.pk}/")
        moved = as_admin_a.post(f"/api/v1/messages/{item.pk}/move/", {"folder": "Junk"}, format="json")
    assert detail.json()["subject"] == "Lunch on Friday" and moved.json()["folder"] == "Junk"
    actions = [
        (record.actor, record.mailbox, record.action)
        for record in caplog.records
        if record.getMessage() == "admin mailbox access"
    ]
    assert ("admin@alpha.test", "alice@alpha.test", "read") in actions
    assert ("admin@alpha.test", "alice@alpha.test", "move") in actions


def test_owner_reading_own_mail_is_not_recorded(mail, as_alice, caplog):
    with caplog.at_level(logging.INFO, logger="apps.mailboxes.services.mailitems"):
        as_alice.get(f"/api/v1/messages/{mail['plain'].pk}/")
        as_alice.get("/api/v1/messages/")
    assert not [r for r in caplog.records if r.getMessage() == "admin mailbox access"]


def test_superadmin_sees_every_tenant(mail, as_root, mailbox_b):
    assert as_root.get(f"/api/v1/messages/{mail['bob'].pk}/").json()["subject"] == "Beta secrets"
    folders = as_root.get(f"/api/v1/mailboxes/{mailbox_b.pk}/folders/").json()
    assert {row["name"]: row["total"] for row in folders["folders"]}["INBOX"] == 1


def test_unauthenticated_calls_get_401_json(mail, api_client_for, mailbox_a):
    client = api_client_for()
    item = mail["plain"]
    endpoints = [("get", "/api/v1/messages/", None), *message_endpoints(item.pk, mailbox_a.pk)]
    for method, url, payload in endpoints:
        response = getattr(client, method)(url, payload, format="json")
        assert_error(response, 401, "not_authenticated")
    item.refresh_from_db()
    assert (item.folder.name, item.seen) == ("INBOX", False)


@pytest.mark.parametrize("item_id", ["abc", "99999", "1.5", "-1"])
def test_unknown_or_malformed_message_id_is_404_json(mail, as_alice, item_id):
    assert_error(as_alice.get(f"/api/v1/messages/{item_id}/"), 404)
    assert_error(as_alice.get(f"/api/v1/messages/{item_id}/raw"), 404)
