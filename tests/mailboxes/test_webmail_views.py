"""Webmail pages: full page vs HTMX partial, scoping, actions and the sandboxed body."""

from __future__ import annotations

import logging

import pytest

from apps.mailboxes.models import Mailbox, MailItem, Message
from tests.mailboxes.test_messages_api import REMOTE_IMAGE, build_mail, deliver, deliver_sample_mail, item_of

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def mail(domain_a, domain_b, mailbox_a, mailbox_b):
    return deliver_sample_mail()


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def text(response) -> str:
    return response.content.decode()


def mailbox_url(mailbox: Mailbox, query: str = "") -> str:
    return f"/mail/webmail/{mailbox.pk}/{query}"


def message_url(item: MailItem, suffix: str = "") -> str:
    return f"/mail/webmail/messages/{item.pk}/{suffix}"


# --- Picking a mailbox -----------------------------------------------------------------


def test_webmail_index_takes_a_user_straight_into_their_mailbox(mail, login, user_a, mailbox_a):
    response = login(user_a).get("/mail/webmail/")
    assert response.status_code == 302 and response["Location"] == mailbox_url(mailbox_a)


def test_webmail_index_lists_mailboxes_in_an_admins_scope(mail, login, admin_a, mailbox_a, mailbox_b):
    response = login(admin_a).get("/mail/webmail/")
    body = text(response)
    assert response.status_code == 200 and "<html" in body
    assert f'href="{mailbox_url(mailbox_a)}"' in body and "alice@alpha.test" in body
    assert "bob@beta.test" not in body and mailbox_url(mailbox_b) not in body


def test_webmail_index_search_as_htmx_partial(mail, login, superadmin):
    response = login(superadmin).get("/mail/webmail/", {"q": "bob@"}, **HX)
    body = text(response)
    assert "<html" not in body and body.lstrip().startswith('<div id="webmail-mailboxes">')
    assert "bob@beta.test" in body and "alice@alpha.test" not in body


def test_mailbox_list_page_links_to_webmail(mail, login, admin_a, mailbox_a):
    body = text(login(admin_a).get("/mail/mailboxes/"))
    assert f'<a href="{mailbox_url(mailbox_a)}">Open</a>' in body


def test_navigation_has_a_webmail_link(mail, login, user_a):
    body = text(login(user_a).get("/mail/mailboxes/"))
    nav = body.split('<nav class="sidebar"', 1)[1].split("</nav>", 1)[0]
    assert 'href="/mail/webmail/"' in nav and ">Webmail</a>" in nav


# --- A folder --------------------------------------------------------------------------


def test_mailbox_page_shows_folders_unread_counts_usage_and_messages(mail, login, user_a, mailbox_a):
    response = login(user_a).get(mailbox_url(mailbox_a))
    body = text(response)
    assert response.status_code == 200 and "<html" in body
    assert "<h1>INBOX</h1>" in body
    inbox_link = body.split('data-folder="INBOX"', 1)[1].split("</a>", 1)[0]
    assert '<span class="count" title="3 unread of 3">3</span>' in inbox_link
    assert 'data-folder="Junk"' in body and 'data-folder="Trash"' in body
    used = Mailbox.objects.get(pk=mailbox_a.pk).used_bytes
    assert f'value="{round(100 * used / 1024**3, 1)}"' in body and "of 1.0 GiB" in body
    order = [body.index(subject) for subject in ("Files for you", "Quarterly report", "Lunch on Friday")]
    assert order == sorted(order)  # newest first
    assert body.count('class="mail-row unread') == 3
    assert f'href="{message_url(mail["plain"])}"' in body
    assert "Beta secrets" not in body


def test_mailbox_page_search_full_page_and_htmx_partial(mail, login, user_a, mailbox_a):
    client = login(user_a)
    full = text(client.get(mailbox_url(mailbox_a), {"q": "noon"}))
    assert "<html" in full and 'value="noon"' in full
    assert "Lunch on Friday" in full and "Quarterly report" not in full
    partial = text(client.get(mailbox_url(mailbox_a), {"q": "quarterly", "folder": "INBOX"}, **HX))
    assert "<html" not in partial and partial.lstrip().startswith('<div id="message-list">')
    assert "Quarterly report" in partial and "Lunch on Friday" not in partial
    assert 'class="folder-list"' not in partial
    nothing = text(client.get(mailbox_url(mailbox_a), {"q": "zebra"}, **HX))
    assert "No messages match “zebra”." in nothing


def test_mailbox_page_folders_and_show_filters(mail, login, user_a, mailbox_a):
    from apps.mailboxes import services

    services.mail_item_move(actor=user_a, item=mail["plain"], folder_name="Junk")
    services.mail_item_set_flags(actor=user_a, item=mail["files"], flagged=True)
    client = login(user_a)
    junk = text(client.get(mailbox_url(mailbox_a), {"folder": "Junk"}))
    assert "<h1>Junk</h1>" in junk and "Lunch on Friday" in junk and "Files for you" not in junk
    flagged = text(client.get(mailbox_url(mailbox_a), {"show": "flagged"}, **HX))
    assert "Files for you" in flagged and "Quarterly report" not in flagged and "★" in flagged
    empty = text(client.get(mailbox_url(mailbox_a), {"folder": "Trash"}))
    assert "Trash is empty." in empty


def test_mailbox_page_pages_with_htmx(domain_a, mailbox_a, user_a, login):
    for number in range(53):
        deliver(build_mail(subject=f"Message {number:02d}"), "alice@alpha.test")
    client = login(user_a)
    first = text(client.get(mailbox_url(mailbox_a)))
    assert first.count('class="mail-row') == 50 and "Message 52" in first and "Message 02" not in first
    assert "Page 1 of 2 · 53 total" in first and 'hx-get="?page=2"' in first
    second = text(client.get(mailbox_url(mailbox_a), {"page": 2}, **HX))
    assert "<html" not in second and second.count('class="mail-row') == 3
    assert all(f"Message 0{n}" in second for n in range(3)) and "Message 03" not in second


def test_mailbox_page_query_count_is_capped(
    domain_a, mailbox_a, user_a, login, django_assert_max_num_queries
):
    for number in range(20):
        deliver(build_mail(subject=f"Bulk {number}"), "alice@alpha.test")
    client = login(user_a)
    client.get("/")  # the session's first request records it; the cap is for every later page
    with django_assert_max_num_queries(11):  # one of them: is the mailbox under legal hold?
        body = text(client.get(mailbox_url(mailbox_a)))
    assert body.count('class="mail-row') == 20


def test_mailbox_page_unknown_folder_is_404(mail, login, user_a, mailbox_a):
    response = login(user_a).get(mailbox_url(mailbox_a), {"folder": "Secret"})
    assert response.status_code == 404 and "Lunch on Friday" not in text(response)


# --- A message -------------------------------------------------------------------------


def test_message_page_shows_headers_actions_and_sandboxed_body_and_marks_seen(mail, login, user_a):
    item = mail["hostile"]
    response = login(user_a).get(message_url(item))
    body = text(response)
    assert response.status_code == 200 and "<html" in body
    assert '<h1 class="message-subject">Quarterly report</h1>' in body
    assert "<dd>Sender &lt;sender@remote.test&gt;</dd>" in body
    assert '<details class="message-headers">' in body and '<th scope="row">Message-ID</th>' in body
    iframe = body.split("<iframe", 1)[1].split(">", 1)[0]
    assert f'src="{message_url(item, "body/")}"' in iframe
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in iframe
    assert "allow-scripts" not in iframe and "allow-same-origin" not in iframe
    assert "2 remote images blocked" in body and f'href="{message_url(item)}?remote_images=1"' in body
    # The mail's own HTML is never part of our page.
    assert "Quarterly <b>numbers</b>" not in body and "alert(" not in body
    assert "Mark unread" in body and "Move to…" in body and f'href="/api/v1/messages/{item.pk}/raw"' in body
    item.refresh_from_db()
    assert item.seen is True


def test_message_page_htmx_partial_and_remote_images(mail, login, user_a):
    item = mail["hostile"]
    response = login(user_a).get(message_url(item), {"remote_images": "1"}, **HX)
    body = text(response)
    assert "<html" not in body and body.lstrip().startswith('<article id="message-pane"')
    assert f'src="{message_url(item, "body/")}?remote_images=1"' in body
    assert "Remote images are shown." in body and "remote image blocked" not in body


def test_message_page_plain_text_and_attachments(mail, login, user_a):
    item = mail["files"]
    body = text(login(user_a).get(message_url(item)))
    assert '<pre class="message-text">Two files attached.' in body and "<iframe" not in body
    assert f'<a href="/api/v1/messages/{item.pk}/attachments/2" download>notes.txt</a>' in body
    assert ">passwd.html</a>" in body and "\u202e" not in body
    assert "remote-bar" not in body


def test_message_page_by_admin_of_the_domain_is_recorded(mail, login, admin_a, caplog):
    item = mail["plain"]
    with caplog.at_level(logging.INFO, logger="apps.mailboxes.services.mailitems"):
        login(admin_a).get(message_url(item))
        login(admin_a).get(mailbox_url(item.mailbox))
    actions = {
        (record.actor, record.mailbox, record.action)
        for record in caplog.records
        if record.getMessage() == "admin mailbox access"
    }
    assert ("admin@alpha.test", "alice@alpha.test", "read") in actions
    assert ("admin@alpha.test", "alice@alpha.test", "open") in actions


# --- The body document -----------------------------------------------------------------


def csp_of(response) -> dict[str, str]:
    policy = response["Content-Security-Policy"]
    return {part.strip().split(" ", 1)[0]: part.strip() for part in policy.split(";") if part.strip()}


def test_message_body_is_sanitised_with_its_own_strict_policy(mail, login, user_a):
    item = mail["hostile"]
    response = login(user_a).get(message_url(item, "body/"))
    assert response.status_code == 200
    body = text(response)
    assert "Quarterly <b>numbers</b> inside." in body
    for hostile in ("<script", "alert(", "onerror", "javascript:", REMOTE_IMAGE):
        assert hostile not in body
    policy = csp_of(response)
    assert policy["default-src"] == "default-src 'none'"
    assert policy["img-src"].split()[1:] == ["data:", "cid:"]  # no remote images
    assert policy["style-src"] == "style-src 'unsafe-inline'"
    assert policy["frame-ancestors"] == "frame-ancestors 'self'"
    assert "script-src" not in policy  # falls back to default-src 'none'
    assert policy["sandbox"] == "sandbox allow-popups allow-popups-to-escape-sandbox"
    assert response["X-Frame-Options"] == "SAMEORIGIN"
    assert response["Referrer-Policy"] == "no-referrer"


def test_message_body_with_remote_images_allows_only_images_from_afar(mail, login, user_a):
    response = login(user_a).get(message_url(mail["hostile"], "body/"), {"remote_images": "1"})
    assert REMOTE_IMAGE in text(response) and "<script" not in text(response)
    policy = csp_of(response)
    assert sorted(policy["img-src"].split()[1:]) == sorted(["data:", "cid:", "https:", "http:"])
    assert policy["default-src"] == "default-src 'none'"


def test_message_body_of_plain_text_mail_is_escaped_text(domain_a, mailbox_a, user_a, login):
    message = deliver(build_mail(subject="Angle", text="a <b>not bold</b> & more"), "alice@alpha.test")
    body = text(login(user_a).get(message_url(item_of(message, "alice@alpha.test"), "body/")))
    assert "<pre>a &lt;b&gt;not bold&lt;/b&gt; &amp; more" in body


def test_other_pages_still_may_not_be_framed(mail, login, user_a):
    response = login(user_a).get(message_url(mail["hostile"]))
    assert response["X-Frame-Options"] == "DENY"
    assert csp_of(response)["frame-ancestors"] == "frame-ancestors 'none'"


# --- Actions ---------------------------------------------------------------------------


def test_mark_unread_returns_to_the_folder_without_js(mail, login, user_a, mailbox_a):
    item = mail["plain"]
    client = login(user_a)
    client.get(message_url(item))
    response = client.post(message_url(item, "flags/"), {"seen": "0"}, follow=True)
    assert response.redirect_chain == [(mailbox_url(mailbox_a), 302)]
    assert "Marked as unread." in text(response)
    item.refresh_from_db()
    assert item.seen is False


def test_flag_with_htmx_returns_the_new_action_bar(mail, login, user_a):
    item = mail["plain"]
    response = login(user_a).post(message_url(item, "flags/"), {"flagged": "1"}, **HX)
    body = text(response)
    assert body.lstrip().startswith('<div id="message-actions"') and "★ Flagged" in body
    assert 'aria-pressed="true"' in body
    item.refresh_from_db()
    assert item.flagged is True and item.seen is False


def test_flag_without_js_returns_to_the_message(mail, login, user_a):
    item = mail["plain"]
    response = login(user_a).post(message_url(item, "flags/"), {"flagged": "1"})
    assert response.status_code == 302 and response["Location"] == message_url(item)
    item.refresh_from_db()
    assert item.flagged is True


def test_flags_reject_bad_values(mail, login, user_a):
    item = mail["plain"]
    response = login(user_a).post(message_url(item, "flags/"), {"flagged": "maybe"})
    assert response.status_code == 400 and text(response) == "Bad flags."
    item.refresh_from_db()
    assert item.flagged is False


def test_move_without_js_redirects_to_the_origin_folder(mail, login, user_a, mailbox_a):
    item = mail["plain"]
    response = login(user_a).post(message_url(item, "move/"), {"folder": "Junk"}, follow=True)
    assert response.redirect_chain == [(mailbox_url(mailbox_a), 302)]
    assert "Moved to Junk." in text(response)
    item.refresh_from_db()
    assert item.folder.name == "Junk"


def test_move_with_htmx_answers_with_a_client_redirect(mail, login, user_a, mailbox_a):
    from apps.mailboxes import services

    item = services.mail_item_move(actor=user_a, item=mail["plain"], folder_name="Junk")
    response = login(user_a).post(message_url(item, "move/"), {"folder": "INBOX"}, **HX)
    assert response["HX-Redirect"] == mailbox_url(mailbox_a, "?folder=Junk")
    item.refresh_from_db()
    assert item.folder.name == "INBOX"


def test_move_to_unknown_folder_is_refused(mail, login, user_a):
    item = mail["plain"]
    response = login(user_a).post(message_url(item, "move/"), {"folder": "Nowhere"})
    assert response.status_code == 400 and "There is no folder Nowhere" in text(response)
    item.refresh_from_db()
    assert item.folder.name == "INBOX"


def test_delete_moves_to_trash_then_removes_for_good(mail, login, user_a, mailbox_a):
    item = mail["plain"]
    client = login(user_a)
    used = Mailbox.objects.get(pk=mailbox_a.pk).used_bytes
    first = client.post(message_url(item, "delete/"), follow=True)
    assert "Moved to Trash." in text(first)
    item.refresh_from_db()
    assert item.folder.name == "Trash"
    page = text(client.get(message_url(item)))
    assert "Delete for good" in page
    second = client.post(message_url(item, "delete/"), **HX)
    assert second["HX-Redirect"] == mailbox_url(mailbox_a, "?folder=Trash")
    assert not MailItem.objects.filter(pk=item.pk).exists()
    assert not Message.objects.filter(pk=item.message_id).exists()
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == used - item.size


@pytest.mark.parametrize("suffix", ["flags/", "move/", "delete/"])
def test_actions_need_post(mail, login, user_a, suffix):
    response = login(user_a).get(message_url(mail["plain"], suffix))
    assert response.status_code == 405
    assert MailItem.objects.get(pk=mail["plain"].pk).folder.name == "INBOX"


# --- Scoping ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["user_a", "admin_a"])
def test_another_tenants_mail_is_404_on_every_page(mail, login, request, who, mailbox_b):
    client = login(request.getfixturevalue(who))
    bob = mail["bob"]
    for url in (mailbox_url(mailbox_b), message_url(bob), message_url(bob, "body/")):
        response = client.get(url)
        assert response.status_code == 404 and "Beta secrets" not in text(response)
    for suffix, data in (("flags/", {"seen": "1"}), ("move/", {"folder": "Junk"}), ("delete/", {})):
        assert client.post(message_url(bob, suffix), data).status_code == 404
    bob.refresh_from_db()
    assert (bob.folder.name, bob.seen) == ("INBOX", False)


def test_anonymous_visitors_are_sent_to_sign_in(mail, client, mailbox_a):
    for url in ("/mail/webmail/", mailbox_url(mailbox_a), message_url(mail["plain"], "body/")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    response = client.post(message_url(mail["plain"], "delete/"))
    assert response.status_code == 302
    assert MailItem.objects.get(pk=mail["plain"].pk).folder.name == "INBOX"
