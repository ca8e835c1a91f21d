"""Quarantine review pages: scoping, release into the INBOX, requests and approvals, the
preview's safety, bulk actions, the rules page and a user's own lists.

Held messages arrive the real way: accepted, scanned by the real pipeline and delivered
by the real delivery stages; only the stage list is the test's (a stage that reads its
verdict from an X-Test-Verdict header)."""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest
from django.contrib.messages import get_messages

from apps.mailboxes.models import Folder, MailItem
from apps.mailboxes.services import IncomingMessage, message_deliver, messages_accept, new_queue_id
from apps.threats.models import (
    BayesTraining,
    ContentRule,
    DomainPolicy,
    ListEntry,
    QuarantineItem,
    QuarantinePreference,
    QuarantineRecipient,
)
from apps.threats.pipeline import StageOutcome, scan_stage
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

HOSTILE_HTML = (
    "<h2>Invoice</h2><p>Please pay <b>today</b>.</p>"
    "<script>alert(1)</script>"
    "<img src=x onerror=alert(2)>"
    '<a href="javascript:alert(3)">Open the invoice</a>'
    "<svg onload=alert(4)><circle r=1></circle></svg>"
    '<a href="https://evil.test/login?next=1">https://bank.test/login</a>'
    '<img src="https://tracker.test/pixel.png">'
    '<p style="background:url(https://tracker.test/bg.png)" onclick="alert(5)">styled</p>'
    '<iframe src="https://evil.test/frame"></iframe><form action="https://evil.test/"><input name=x></form>'
)


@scan_stage("test-verdict")
def verdict_stage(context) -> StageOutcome:
    """The verdict the message asks for: "X-Test-Verdict: <category> <score>"; a spam
    verdict is a score only (the policy's thresholds decide), the others a category."""
    values = context.header_values("X-Test-Verdict")
    if not values:
        return StageOutcome(reasons=["nothing suspicious"])
    category, _, score = values[0].strip().partition(" ")
    return StageOutcome(
        score=float(score or 0),
        reasons=[f"the test verdict says {category}"],
        category="" if category == "spam" else category,
    )


@pytest.fixture(autouse=True)
def _test_stages(settings):
    settings.A3_SCAN_STAGES = ["tests.threats.test_views.verdict_stage"]


def held(
    *recipients: str,
    verdict: str = "spam 20",
    subject: str = "Cheap watches",
    html: str | None = None,
    text: str = "Buy now.",
    sender: str = "mallory@evil.test",
) -> QuarantineItem:
    """Accept and deliver a message the way SMTP does; return its quarantine item."""
    mail = EmailMessage()
    mail["From"] = f"Mallory <{sender}>"
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = subject
    mail["X-Test-Verdict"] = verdict
    mail.set_content(text)
    if html is not None:
        mail.add_alternative(html, subtype="html")
    incoming = IncomingMessage(
        queue_id=new_queue_id(),
        mail_from=sender,
        recipients=tuple(recipients),
        raw=mail.as_bytes().replace(b"\n", b"\r\n"),
        peer_ip="192.0.2.7",
    )
    (message,) = messages_accept(incoming=[incoming])
    message_deliver(message_id=message.pk)
    return QuarantineItem.objects.get(message=message)


def inbox_has(mailbox, item: QuarantineItem) -> bool:
    return MailItem.objects.filter(
        mailbox=mailbox, message_id=item.message_id, folder__special_use=Folder.SpecialUse.INBOX
    ).exists()


def flashes(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def row_state(item: QuarantineItem, mailbox) -> str:
    return QuarantineRecipient.objects.get(item=item, mailbox=mailbox).state


# --- Scoping -----------------------------------------------------------------------------------


def test_quarantine_list_shows_each_viewer_their_scope(
    client, superadmin, admin_a, user_a, mailbox_a, mailbox_b
):
    other_in_a = MailboxFactory(domain=mailbox_a.domain, local_part="carol", address="carol@alpha.test")
    held(mailbox_a.address, subject="For Alice")
    held(other_in_a.address, subject="For Carol", verdict="malware 0")
    held(mailbox_b.address, subject="For Bob")
    seen = {}
    for user in (user_a, admin_a, superadmin):
        client.force_login(user)
        body = client.get("/quarantine/").content.decode()
        seen[user.email] = {name for name in ("For Alice", "For Carol", "For Bob") if name in body}

    assert seen[user_a.email] == {"For Alice"}
    assert seen[admin_a.email] == {"For Alice", "For Carol"}
    assert seen[superadmin.email] == {"For Alice", "For Carol", "For Bob"}


def test_quarantine_summary_cards_count_the_viewers_items(client, admin_a, mailbox_a, mailbox_b):
    held(mailbox_a.address)
    held(mailbox_a.address, verdict="malware 0")
    held(mailbox_a.address, verdict="policy 0")
    held(mailbox_b.address, verdict="malware 0")
    client.force_login(admin_a)

    body = client.get("/quarantine/").content.decode()

    assert '<span class="stat-value" id="count-spam">1</span>' in body
    assert '<span class="stat-value" id="count-malware">1</span>' in body
    assert '<span class="stat-value" id="count-policy">1</span>' in body
    assert '<span class="stat-value" id="count-requested">0</span>' in body


def test_quarantine_item_of_another_domain_is_not_found(client, admin_a, mailbox_b):
    item = held(mailbox_b.address, subject="Beta only")
    client.force_login(admin_a)

    pages = [client.get(f"/quarantine/{item.pk}/"), client.get(f"/quarantine/{item.pk}/preview/")]
    release = client.post(f"/quarantine/{item.pk}/release/", {"mailboxes": [mailbox_b.pk]})
    delete = client.post(f"/quarantine/{item.pk}/delete/")

    assert [page.status_code for page in pages] == [404, 404]
    assert (release.status_code, delete.status_code) == (404, 404)
    assert "Beta only" not in pages[0].content.decode()
    assert row_state(item, mailbox_b) == QuarantineRecipient.State.HELD
    assert not inbox_has(mailbox_b, item)


def test_quarantine_detail_shows_only_the_viewers_recipients(client, user_a, mailbox_a, mailbox_b):
    item = held(mailbox_a.address, mailbox_b.address)
    client.force_login(user_a)

    body = client.get(f"/quarantine/{item.pk}/").content.decode()

    recipients = body[body.index('id="recipients"') : body.index('id="preview"')]
    assert mailbox_a.address in recipients
    assert mailbox_b.address not in recipients  # (the To header still names both)
    assert f'name="mailboxes" value="{mailbox_b.pk}"' not in body


def test_quarantine_pages_need_a_sign_in(client, mailbox_a):
    item = held(mailbox_a.address)

    responses = [client.get(url) for url in ("/quarantine/", f"/quarantine/{item.pk}/", "/quarantine/lists/")]

    assert all(r.status_code == 302 and "/accounts/login/" in r["Location"] for r in responses)


# --- The list: filters and HTMX ----------------------------------------------------------------


def test_quarantine_list_filters_by_category_text_and_requests(client, admin_a, user_a, mailbox_a):
    held(mailbox_a.address, subject="Spammy offer")
    malware = held(mailbox_a.address, subject="Invoice with a virus", verdict="malware 0")
    client.force_login(user_a)
    client.post(f"/quarantine/{malware.pk}/request/", {"note": "I need it"})
    client.force_login(admin_a)

    by_category = client.get("/quarantine/?category=malware").content.decode()
    by_text = client.get("/quarantine/?q=offer").content.decode()
    requests_only = client.get("/quarantine/?requested=on").content.decode()

    assert "Invoice with a virus" in by_category and "Spammy offer" not in by_category
    assert "Spammy offer" in by_text and "Invoice with a virus" not in by_text
    assert "Invoice with a virus" in requests_only and "Spammy offer" not in requests_only


def test_quarantine_list_htmx_gets_the_table_with_live_refresh_and_fresh_cards(client, admin_a, mailbox_a):
    held(mailbox_a.address, subject="Fresh spam")
    client.force_login(admin_a)

    full = client.get("/quarantine/").content.decode()
    partial = client.get("/quarantine/?category=spam", HTTP_HX_REQUEST="true").content.decode()

    assert "<html" in full and "<html" not in partial
    assert partial.lstrip().startswith("{#") is False and 'id="quarantine-table"' in partial
    assert 'hx-trigger="a3:quarantine-changed from:body, every 30s"' in partial
    assert 'hx-get="/quarantine/?category=spam"' in partial  # the refresh keeps the filters
    assert 'id="quarantine-summary" hx-swap-oob="true"' in partial
    assert "Fresh spam" in partial


def test_quarantine_list_pages(client, admin_a, mailbox_a):
    for number in range(27):
        held(mailbox_a.address, subject=f"Spam number {number:02d}")
    client.force_login(admin_a)

    first = client.get("/quarantine/").content.decode()
    second = client.get("/quarantine/?page=2", HTTP_HX_REQUEST="true").content.decode()

    assert "Spam number 26" in first and "Spam number 00" not in first
    assert "Spam number 00" in second and "Spam number 26" not in second
    assert "Page 2 of 2" in second


def test_quarantine_list_queries_do_not_grow_with_the_page(
    client, admin_a, mailbox_a, django_assert_max_num_queries
):
    for _ in range(10):
        held(mailbox_a.address)
    client.force_login(admin_a)

    with django_assert_max_num_queries(12):
        response = client.get("/quarantine/")

    assert response.content.decode().count('name="items"') == 10


# --- Release, delete, report -------------------------------------------------------------------


def test_release_from_the_page_files_the_message_into_the_inbox(client, user_a, mailbox_a):
    item = held(mailbox_a.address, subject="Actually wanted")
    assert not inbox_has(mailbox_a, item)
    client.force_login(user_a)

    response = client.post(
        f"/quarantine/{item.pk}/release/", {"mailboxes": [mailbox_a.pk], "allow_sender": "on"}
    )

    assert response.status_code == 302 and response["Location"] == f"/quarantine/{item.pk}/"
    assert inbox_has(mailbox_a, item)
    item.refresh_from_db()
    assert item.state == QuarantineItem.State.RESOLVED
    assert row_state(item, mailbox_a) == QuarantineRecipient.State.RELEASED
    assert ListEntry.objects.filter(
        kind="allow", match="sender", value="mallory@evil.test", mailbox=mailbox_a
    ).exists()
    assert any("in their inbox" in text for text in flashes(response))


def test_release_only_to_the_selected_recipients(client, admin_a, mailbox_a):
    carol = MailboxFactory(domain=mailbox_a.domain, local_part="carol", address="carol@alpha.test")
    item = held(mailbox_a.address, carol.address)
    client.force_login(admin_a)

    client.post(f"/quarantine/{item.pk}/release/", {"mailboxes": [carol.pk]})

    assert inbox_has(carol, item) and not inbox_has(mailbox_a, item)
    assert row_state(item, mailbox_a) == QuarantineRecipient.State.HELD
    assert not ListEntry.objects.exists()  # "also allow this sender" was not ticked


def test_release_without_a_selected_recipient_is_refused(client, user_a, mailbox_a):
    item = held(mailbox_a.address)
    client.force_login(user_a)

    response = client.post(f"/quarantine/{item.pk}/release/", {})

    assert "Select the recipients" in " ".join(flashes(response))
    assert row_state(item, mailbox_a) == QuarantineRecipient.State.HELD


def test_user_cannot_release_malware_but_can_request_and_the_admin_approves(
    client, user_a, admin_a, mailbox_a
):
    item = held(mailbox_a.address, subject="Payroll.exe", verdict="malware 0")
    client.force_login(user_a)

    page = client.get(f"/quarantine/{item.pk}/").content.decode()
    refused = client.post(f"/quarantine/{item.pk}/release/", {"mailboxes": [mailbox_a.pk]})
    asked = client.post(f"/quarantine/{item.pk}/request/", {"note": "It is my payslip"})

    assert "Release to the inbox" not in page and "Request release" in page
    assert "Release requested: an administrator will decide." in flashes(asked)
    assert refused.status_code == 302
    assert any("only be released by an administrator" in text for text in flashes(refused))
    assert not inbox_has(mailbox_a, item)
    row = QuarantineRecipient.objects.get(item=item, mailbox=mailbox_a)
    assert (row.state, row.request_note) == (QuarantineRecipient.State.RELEASE_REQUESTED, "It is my payslip")

    client.force_login(admin_a)
    admin_page = client.get(f"/quarantine/{item.pk}/").content.decode()
    approved = client.post(f"/quarantine/{item.pk}/decide/", {"approve": "1"})

    assert "Approve release request" in admin_page and "It is my payslip" in admin_page
    assert any("Request approved" in text for text in flashes(approved))
    assert inbox_has(mailbox_a, item)
    assert row_state(item, mailbox_a) == QuarantineRecipient.State.RELEASED


def test_admin_denies_a_release_request_and_the_message_stays_held(client, user_a, admin_a, mailbox_a):
    item = held(mailbox_a.address, verdict="policy 0")
    client.force_login(user_a)
    client.post(f"/quarantine/{item.pk}/request/", {"note": ""})
    client.force_login(admin_a)

    client.post(f"/quarantine/{item.pk}/decide/", {"approve": "0"})

    assert row_state(item, mailbox_a) == QuarantineRecipient.State.HELD
    assert not inbox_has(mailbox_a, item)


def test_user_cannot_decide_release_requests(client, user_a, mailbox_a):
    item = held(mailbox_a.address, verdict="malware 0")
    client.force_login(user_a)
    client.post(f"/quarantine/{item.pk}/request/", {"note": ""})

    response = client.post(f"/quarantine/{item.pk}/decide/", {"approve": "1"})

    assert any("only an administrator" in text for text in flashes(response))
    assert row_state(item, mailbox_a) == QuarantineRecipient.State.RELEASE_REQUESTED


def test_delete_from_the_page(client, user_a, mailbox_a):
    item = held(mailbox_a.address)
    client.force_login(user_a)

    client.post(f"/quarantine/{item.pk}/delete/", {"mailboxes": [mailbox_a.pk]})

    # Nobody else held it: the message is gone, with its quarantine rows.
    assert not QuarantineRecipient.objects.filter(item_id=item.pk).exists()
    assert not MailItem.objects.filter(message_id=item.message_id).exists()


def test_report_false_positive_trains_the_domains_filter(client, user_a, mailbox_a):
    item = held(mailbox_a.address)
    client.force_login(user_a)

    response = client.post(f"/quarantine/{item.pk}/report/", {"as": "ham"})

    assert any("Reported as not spam" in text for text in flashes(response))
    training = BayesTraining.objects.get(message_id=item.message_id)
    assert (training.domain_id, training.is_spam) == (mailbox_a.domain_id, False)


# --- The detail page and the preview -----------------------------------------------------------


def test_detail_explains_why_the_message_was_held(client, user_a, mailbox_a):
    item = held(mailbox_a.address, verdict="spam 12.5", html="<p>hello</p>")
    client.force_login(user_a)

    body = client.get(f"/quarantine/{item.pk}/").content.decode()

    assert "Why was this held?" in body
    assert "the test verdict says spam" in body
    assert "<code>test-verdict</code>" in body
    assert re.search(r'<meter min="0" max="12.5" value="12.5"', body)
    assert "Total score <strong>12.5</strong>" in body
    assert "X-Test-Verdict" in body  # raw headers
    assert f'src="/quarantine/{item.pk}/preview/" sandbox=""' in body


def test_preview_is_sanitised_and_served_under_its_own_csp(client, user_a, mailbox_a):
    item = held(mailbox_a.address, html=HOSTILE_HTML)
    client.force_login(user_a)

    response = client.get(f"/quarantine/{item.pk}/preview/")
    detail = client.get(f"/quarantine/{item.pk}/").content.decode()

    body = response.content.decode()
    policy = response["Content-Security-Policy"]
    assert response.status_code == 200
    assert "default-src 'none'" in policy and "img-src data:" in policy
    assert "style-src 'unsafe-inline'" in policy and "script-src" not in policy
    assert response["X-Frame-Options"] == "SAMEORIGIN"
    assert "Please pay <b>today</b>." in body
    assert "<script" not in body.lower()
    assert not re.search(r"\son[a-z]+\s*=", body, re.IGNORECASE)
    assert "javascript:" not in body.lower()
    assert "<a " not in body and "<svg" not in body and "<iframe" not in body and "<form" not in body
    assert "tracker.test" not in body  # remote images and styles are gone
    # Links are inert text followed by their real target.
    assert "<span>https://bank.test/login</span> <small>[→ https://evil.test/login?next=1]</small>" in body
    assert "<span>Open the invoice</span>" in body
    # ... and listed beside the preview on the detail page.
    assert "<code>https://evil.test/login?next=1</code>" in detail


def test_preview_of_a_plain_text_message_is_escaped(client, user_a, mailbox_a):
    item = held(mailbox_a.address, text="<script>alert(1)</script> & <b>bold</b>")
    client.force_login(user_a)

    body = client.get(f"/quarantine/{item.pk}/preview/").content.decode()

    assert "<pre>&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in body
    assert "<script" not in body


# --- Bulk actions ------------------------------------------------------------------------------


def test_bulk_release_reports_refused_items_and_releases_the_rest(client, user_a, mailbox_a):
    spam = held(mailbox_a.address, subject="Plain spam")
    malware = held(mailbox_a.address, subject="Nasty attachment", verdict="malware 0")
    client.force_login(user_a)

    response = client.post(
        "/quarantine/bulk/", {"action": "release", "items": [spam.pk, malware.pk], "next": "/quarantine/?q=a"}
    )

    assert response.status_code == 302 and response["Location"] == "/quarantine/?q=a"
    texts = flashes(response)
    assert "1 message(s) released." in texts
    assert any("1 message(s) skipped" in text and "Nasty attachment" in text for text in texts)
    assert inbox_has(mailbox_a, spam) and not inbox_has(mailbox_a, malware)


def test_bulk_delete_and_report_spam(client, admin_a, mailbox_a, mailbox_b):
    first = held(mailbox_a.address)
    second = held(mailbox_a.address)
    foreign = held(mailbox_b.address)
    client.force_login(admin_a)

    deleted = client.post("/quarantine/bulk/", {"action": "delete", "items": [first.pk, foreign.pk]})
    reported = client.post("/quarantine/bulk/", {"action": "spam", "items": [second.pk]})

    assert "1 message(s) deleted." in flashes(deleted)
    assert not QuarantineRecipient.objects.filter(item_id=first.pk).exists()  # gone with its message
    assert row_state(foreign, mailbox_b) == QuarantineRecipient.State.HELD  # not in scope: untouched
    assert "1 message(s) reported as spam." in flashes(reported)
    assert BayesTraining.objects.get(message_id=second.message_id).is_spam is True


def test_bulk_without_selection_says_so(client, user_a, mailbox_a):
    client.force_login(user_a)

    response = client.post("/quarantine/bulk/", {"action": "release"})

    assert "Select messages and an action." in flashes(response)


# --- Threat rules (administrators) -------------------------------------------------------------


def test_rules_page_is_for_administrators_only(client, user_a, admin_a):
    client.force_login(user_a)
    assert client.get("/quarantine/rules/").status_code == 404
    client.force_login(admin_a)
    body = client.get("/quarantine/rules/").content.decode()
    assert "Allow and block lists" in body and "Content rules" in body and "Domain policy" in body
    assert "alpha.test" in body and "beta.test" not in body


def test_admin_adds_and_removes_a_domain_block_entry(client, admin_a, domain_a):
    client.force_login(admin_a)

    added = client.post(
        "/quarantine/rules/lists/",
        {"kind": "block", "match": "domain", "value": "@Spam.Example", "scope": str(domain_a.pk)},
    )
    entry = ListEntry.objects.get()
    removed = client.post(f"/quarantine/lists/entries/{entry.pk}/delete/", {"next": "/quarantine/rules/"})

    assert added.status_code == 302
    assert (entry.kind, entry.match, entry.value, entry.domain_id) == (
        "block",
        "domain",
        "spam.example",
        domain_a.pk,
    )
    assert removed["Location"] == "/quarantine/rules/"
    assert not ListEntry.objects.exists()


def test_invalid_list_entry_shows_the_services_error_on_the_field(client, admin_a, domain_a):
    client.force_login(admin_a)

    response = client.post(
        "/quarantine/rules/lists/",
        {"kind": "block", "match": "ip", "value": "not-an-ip", "scope": str(domain_a.pk)},
    )

    assert response.status_code == 400
    assert "is not an IP address or network" in response.content.decode()
    assert not ListEntry.objects.exists()


def test_domain_admin_cannot_add_server_wide_entries(client, admin_a):
    client.force_login(admin_a)

    response = client.post(
        "/quarantine/rules/lists/", {"kind": "block", "match": "sender", "value": "x@y.test"}
    )

    assert response.status_code == 400
    assert "Only a superadmin" in response.content.decode()
    assert not ListEntry.objects.exists()


def test_admin_adds_and_deletes_a_content_rule(client, admin_a, domain_a, admin_b, domain_b):
    client.force_login(admin_a)

    client.post(
        "/quarantine/rules/content/",
        {
            "name": "Lottery",
            "target": "subject",
            "pattern": r"you (have )?won",
            "score": "4.5",
            "scope": str(domain_a.pk),
            "is_active": "on",
        },
    )
    rule = ContentRule.objects.get()
    client.force_login(admin_b)
    foreign = client.post(f"/quarantine/rules/content/{rule.pk}/delete/")
    client.force_login(admin_a)
    client.post(f"/quarantine/rules/content/{rule.pk}/delete/")

    assert (rule.name, rule.score, rule.domain_id, rule.is_active) == ("Lottery", 4.5, domain_a.pk, True)
    assert foreign.status_code == 404
    assert not ContentRule.objects.exists()


def test_admin_saves_the_domain_policy(client, admin_a, domain_a, domain_b):
    client.force_login(admin_a)
    data = {
        "header_score": "3",
        "junk_score": "5",
        "quarantine_score": "8",
        "reject_score": "20",
        "unscannable_action": "junk",
        "scanner_failure": "closed",
        "quarantine_days": "14",
        "digest_default": "weekly",
    }

    saved = client.post(f"/quarantine/rules/policy/{domain_a.pk}/", data)
    foreign = client.post(f"/quarantine/rules/policy/{domain_b.pk}/", data)
    invalid = client.post(f"/quarantine/rules/policy/{domain_a.pk}/", {**data, "junk_score": "1"})

    policy = DomainPolicy.objects.get(domain=domain_a)
    assert saved["Location"] == f"/quarantine/rules/?domain={domain_a.pk}#policy"
    assert (policy.quarantine_score, policy.scanner_failure, policy.quarantine_days) == (8.0, "closed", 14)
    assert (policy.digest_default, policy.bayes_enabled) == ("weekly", False)
    assert foreign.status_code == 404 and not DomainPolicy.objects.filter(domain=domain_b).exists()
    assert invalid.status_code == 400 and "Must be at least the header threshold" in invalid.content.decode()
    assert DomainPolicy.objects.get(domain=domain_a).junk_score == 5.0


# --- A user's own lists and digest -------------------------------------------------------------


def test_user_manages_their_own_list_and_digest(client, user_a, mailbox_a):
    client.force_login(user_a)

    page = client.get("/quarantine/lists/").content.decode()
    client.post(
        f"/quarantine/lists/{mailbox_a.pk}/entries/",
        {"kind": "allow", "match": "sender", "value": "Friend@Ok.Test"},
    )
    client.post(f"/quarantine/lists/{mailbox_a.pk}/digest/", {"digest": "weekly"})

    assert "Lists of alice@alpha.test" in page and "Domain default (daily)" in page
    entry = ListEntry.objects.get()
    assert (entry.mailbox_id, entry.value, entry.kind) == (mailbox_a.pk, "friend@ok.test", "allow")
    assert QuarantinePreference.objects.get(mailbox=mailbox_a).digest == "weekly"
    assert "friend@ok.test" in client.get("/quarantine/lists/").content.decode()


def test_user_cannot_touch_another_mailboxs_list(client, user_a, mailbox_b, superadmin):
    from apps.threats.services.rules import list_entry_create

    theirs = list_entry_create(
        actor=superadmin, kind="block", match="sender", value="x@y.test", mailbox=mailbox_b
    )
    client.force_login(user_a)

    page = client.get(f"/quarantine/lists/?mailbox={mailbox_b.pk}")
    added = client.post(
        f"/quarantine/lists/{mailbox_b.pk}/entries/",
        {"kind": "allow", "match": "sender", "value": "a@b.test"},
    )
    digest = client.post(f"/quarantine/lists/{mailbox_b.pk}/digest/", {"digest": "never"})
    removed = client.post(f"/quarantine/lists/entries/{theirs.pk}/delete/")

    assert (page.status_code, added.status_code, digest.status_code, removed.status_code) == (
        404,
        404,
        404,
        404,
    )
    assert list(ListEntry.objects.values_list("value", flat=True)) == ["x@y.test"]
    assert not QuarantinePreference.objects.exists()


# --- Charts ----------------------------------------------------------------------------------


def test_held_chart_counts_the_viewers_mailbox_copies_per_category(admin_a, user_a, mailbox_a, mailbox_b):
    from apps.threats.selectors import quarantine_held_chart

    held(mailbox_a.address)
    held(mailbox_a.address, mailbox_b.address, verdict="malware 0")
    held(mailbox_b.address, verdict="policy 0")

    mine = quarantine_held_chart(user_a)
    theirs = quarantine_held_chart(admin_a)

    assert mine.totals == {"spam": 1, "malware": 1, "policy": 0, "unscannable": 0}
    assert theirs.totals == mine.totals  # alpha.test has one mailbox here
    assert len(mine.bars) == 14 and mine.bars[-1].value == 2


def test_scan_chart_is_server_wide_for_superadmins_only(superadmin, admin_a, mailbox_a, mailbox_b):
    from apps.threats.selectors import scan_rate_chart

    held(mailbox_a.address)  # score 20: spam
    held(mailbox_b.address, verdict="policy 0")  # held for policy: spam side too
    for _ in range(2):  # clean mail, delivered
        (message,) = messages_accept(
            incoming=[
                IncomingMessage(
                    queue_id=new_queue_id(),
                    mail_from="friend@remote.test",
                    recipients=(mailbox_a.address,),
                    raw=b"From: friend@remote.test\r\nSubject: hi\r\n\r\nhello\r\n",
                    peer_ip="192.0.2.8",
                )
            ]
        )
        message_deliver(message_id=message.pk)

    chart = scan_rate_chart(superadmin)

    assert chart.totals == {"clean": 2, "spam": 2}
    assert scan_rate_chart(admin_a) is None


def test_quarantine_page_draws_the_charts_without_inline_styles(client, superadmin, admin_a, mailbox_a):
    held(mailbox_a.address, subject="Charted")
    client.force_login(superadmin)
    body = client.get("/quarantine/").content.decode()

    charts = body.split('<div class="chart-row">')[1]
    assert 'id="held-chart"' in charts and 'id="scan-chart"' in charts
    assert charts.count('class="series-spam"') == 2  # one held copy, one spam scan, today
    assert "1 message scanned, 100 % spam" in charts
    assert 'style="' not in charts

    client.force_login(admin_a)
    body = client.get("/quarantine/").content.decode()
    assert 'id="held-chart"' in body and 'id="scan-chart"' not in body
