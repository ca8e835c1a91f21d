"""The quarantine in headless Chromium against a real `manage.py serve`: hostile spam
(GTUBE) arrives over real SMTP, is held by the real scanner, is reviewed in the browser
without anything in it running or fetching, and is released into the INBOX."""

from __future__ import annotations

import smtplib
import threading
import time
from email.message import EmailMessage
from email.utils import make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from tests.e2e.browser import admin_sign_in, screenshot, watch_page
from tests.e2e.conftest import admin_token, api

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

MAILBOX = "victim@quarantine.test"
SENDER = "mallory@evil.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
PREVIEW_SUBJECT = "Your invoice (hostile preview)"
RELEASE_SUBJECT = "Team lunch (held by mistake)"
LIVE_SUBJECT = "Arrives while you look"


class _Tracker(BaseHTTPRequestHandler):
    """A 'remote' host that remembers every request it gets."""

    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # keep test output quiet
        return


@pytest.fixture(scope="module")
def tracker():
    _Tracker.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tracker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _hostile_spam(subject: str, remote: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"Mallory <{SENDER}>"
    mail["To"] = MAILBOX
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="evil.test")
    mail.set_content(f"Pay the invoice today.\n\n{GTUBE}\n")
    mail.add_alternative(
        "<h2>Invoice 4711</h2><p>Please pay <b>today</b>.</p>"
        "<script>alert(1); console.log('pwned-script')</script>"
        "<img src=x onerror=\"alert(2); console.log('pwned-onerror')\">"
        '<a href="javascript:alert(3)">Open the invoice</a>'
        "<svg onload=\"alert(4); console.log('pwned-svg')\"><circle r=4></circle></svg>"
        f'<a href="{remote}/phish?to={quote(MAILBOX)}">https://bank.example/login</a>'
        f'<p><img src="{remote}/pixel.png" alt="tracking pixel" width="1" height="1"></p>'
        f'<p style="background:url({remote}/bg.png)">styled</p>'
        f'<iframe src="{remote}/frame"></iframe>'
        f"<p>{GTUBE}</p>",
        subtype="html",
    )
    return mail


def _send(served, mail: EmailMessage) -> None:
    host, port = served.env["A3_SMTP_LISTEN"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=10) as smtp:
        refused = smtp.send_message(mail, from_addr=SENDER, to_addrs=[MAILBOX])
    assert refused == {}


@pytest.fixture(scope="module")
def quarantined(served, tracker):
    """A domain and mailbox made over the API; two GTUBE messages sent over SMTP."""
    token = admin_token(served)
    status, body = api(served, "POST", "/api/v1/domains/", {"name": "quarantine.test"}, token=token)
    assert status == 201, body
    status, body = api(
        served,
        "POST",
        "/api/v1/mailboxes/",
        {"address": MAILBOX, "password": "a-long-mailbox-password"},
        token=token,
    )
    assert status == 201, body
    _send(served, _hostile_spam(PREVIEW_SUBJECT, tracker))
    _send(served, _hostile_spam(RELEASE_SUBJECT, tracker))
    return {"token": token}


def _open_held(page, served, subject: str) -> None:
    """From the quarantine list to the held message, once the scanner has held it."""
    base = served.base_url
    deadline = time.monotonic() + 30
    link = page.locator("#quarantine-table").get_by_role("link", name=subject)
    while True:
        page.goto(f"{base}/quarantine/?q={quote(subject)}")
        if link.count():
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject!r} was never quarantined\n{served.logs()}")
        page.wait_for_timeout(300)
    link.click()
    page.get_by_role("heading", name="Why was this held?").wait_for()


def test_browser_previews_held_hostile_mail_without_running_or_fetching_anything(
    served, browser, quarantined, tracker
):
    base = served.base_url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    admin_sign_in(page, base)
    seen = watch_page(page)

    page.locator("nav.sidebar").get_by_role("link", name="Quarantine", exact=True).click()
    page.wait_for_url(f"{base}/quarantine/")
    _open_held(page, served, PREVIEW_SUBJECT)

    # Why: GTUBE, in plain words, with its score.
    why = page.locator("#why")
    assert "GTUBE test pattern" in why.inner_text()
    assert why.locator("meter").count() >= 1

    iframe = page.locator("iframe.message-body")
    assert iframe.get_attribute("sandbox") == ""
    body = page.frame_locator("iframe.message-body").locator("body")
    body.get_by_text("Please pay today.").wait_for(timeout=10_000)
    assert body.locator("h2").inner_text() == "Invoice 4711"
    assert body.locator("script, a, svg, iframe, [onerror], [onload], [style]").count() == 0
    # Links are inert text followed by where they really go, and listed beside the preview.
    assert f"[→ {tracker}/phish?to=" in body.inner_text()
    assert body.get_by_text("Open the invoice").is_visible()
    targets = page.locator(".link-targets")
    assert f"{tracker}/phish" in targets.inner_text()
    assert "javascript" not in targets.inner_text()
    # The frame's origin is opaque: our page cannot reach into it, nor it into us.
    assert (
        page.evaluate(
            "() => { try { return !!document.querySelector('iframe.message-body').contentDocument } "
            "catch (e) { return false } }"
        )
        is False
    )
    # Clicking the phishing link's text goes nowhere.
    body.get_by_text("https://bank.example/login").click()
    page.locator("details.message-headers summary").click()
    assert page.locator(".header-table").get_by_text(SENDER).first.is_visible()
    page.wait_for_timeout(1000)  # give any sneaky script or fetch time to happen
    screenshot(page, "quarantine-detail-desktop.png")

    assert seen["dialogs"] == []
    assert seen["console"] == []
    assert seen["errors"] == []
    assert _Tracker.hits == []
    remote = [url for url in seen["requests"] if not url.startswith((base, "data:", "about:"))]
    assert remote == []
    context.close()


def test_browser_admin_releases_held_mail_into_the_inbox(served, browser, quarantined):
    base = served.base_url
    token = quarantined["token"]
    context = browser.new_context()
    page = context.new_page()
    admin_sign_in(page, base)
    seen = watch_page(page)
    _open_held(page, served, RELEASE_SUBJECT)

    status, listing = api(served, "GET", f"/api/v1/messages/?mailbox={quote(MAILBOX)}", token=token)
    assert status == 200, listing
    assert not [row for row in listing["results"] if row["subject"] == RELEASE_SUBJECT]  # held, not filed

    recipients = page.locator("#recipients")
    assert recipients.get_by_role("checkbox", name=f"Select {MAILBOX}").is_checked()
    recipients.get_by_role("button", name="Release to the inbox").click()
    page.wait_for_load_state()
    assert "the message is in their inbox" in page.locator(".flash-success").inner_text()
    assert "released" in recipients.inner_text()
    assert recipients.get_by_role("button", name="Release to the inbox").count() == 0

    deadline = time.monotonic() + 15
    while True:
        status, listing = api(served, "GET", f"/api/v1/messages/?mailbox={quote(MAILBOX)}", token=token)
        filed = [row for row in listing["results"] if row["subject"] == RELEASE_SUBJECT]
        if filed or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert [row["folder"] for row in filed] == ["INBOX"], listing

    # The list no longer shows it as held; the other message still is.
    page.goto(f"{base}/quarantine/")
    screenshot(page, "quarantine-list-desktop.png")
    table = page.locator("#quarantine-table")
    assert table.get_by_role("link", name=RELEASE_SUBJECT).count() == 0
    assert table.get_by_role("link", name=PREVIEW_SUBJECT).count() == 1
    assert seen["dialogs"] == [] and seen["errors"] == []
    context.close()


def test_browser_quarantine_list_shows_newly_held_mail_without_a_reload(
    served, browser, quarantined, tracker
):
    base = served.base_url
    context = browser.new_context()
    page = context.new_page()
    admin_sign_in(page, base)
    seen = watch_page(page)
    with page.expect_websocket() as socket:  # the live alert feed (/ws/alerts/)
        page.goto(f"{base}/quarantine/")
    assert socket.value.url.endswith("/ws/alerts/")
    page.wait_for_timeout(500)  # let the socket's handshake finish
    page.evaluate("window.__noReload = 1")
    before = page.locator("#count-spam").inner_text()

    _send(served, _hostile_spam(LIVE_SUBJECT, tracker))

    # The threats alert makes the table refresh itself, well before its 30 s poll.
    page.locator("#quarantine-table").get_by_role("link", name=LIVE_SUBJECT).wait_for(timeout=20_000)
    assert page.evaluate("window.__noReload") == 1
    assert int(page.locator("#count-spam").inner_text()) == int(before) + 1  # cards swapped out of band
    assert seen["dialogs"] == [] and seen["errors"] == []
    context.close()


DASHBOARD_SUBJECT = "Held while the dashboard is open"


def test_browser_dashboard_shows_the_quarantine_alert_live(served, browser, quarantined, tracker):
    """The "done when" of the quarantine: GTUBE sent over SMTP is held, and the alert
    appears on the open dashboard without a reload."""
    base = served.base_url
    context = browser.new_context()
    page = context.new_page()
    admin_sign_in(page, base)  # lands on the overview with its live feed
    seen = watch_page(page)
    page.wait_for_selector("#live-status[data-state=live]", timeout=10_000)
    page.evaluate("window.__noReload = 1")

    _send(served, _hostile_spam(DASHBOARD_SUBJECT, tracker))

    feed = page.locator("#alert-feed")
    feed.get_by_text(f"Quarantined (spam): {DASHBOARD_SUBJECT}").wait_for(timeout=20_000)
    assert page.evaluate("window.__noReload") == 1
    assert seen["dialogs"] == [] and seen["errors"] == []
    screenshot(page, "dashboard-quarantine-alert.png")
    context.close()
