"""Webmail in headless Chromium against a real `manage.py serve`: hostile mail arrives
over real SMTP and is read in the browser without running anything or leaking a fetch."""

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

MAILBOX = "reader@webmail.test"
# 1x1 transparent PNG.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000105a6f2b8c80000000049454e44ae426082"
)


class _Tracker(BaseHTTPRequestHandler):
    """A 'remote' image host that remembers every request it gets."""

    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PIXEL)))
        self.end_headers()
        self.wfile.write(PIXEL)

    def log_message(self, *args) -> None:  # keep test output quiet
        return


@pytest.fixture(scope="module")
def tracker():
    _Tracker.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tracker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _hostile_mail(image_url: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Mallory <mallory@evil.test>"
    mail["To"] = MAILBOX
    mail["Subject"] = "Quarterly report (hostile)"
    mail["Message-ID"] = make_msgid(domain="evil.test")
    mail.set_content("The numbers are in the HTML part.")
    mail.add_alternative(
        "<h2>Quarterly numbers</h2><p>Revenue is <b>up</b>.</p>"
        "<script>alert(1); console.log('pwned-script')</script>"
        "<img src=x onerror=\"alert(2); console.log('pwned-onerror')\">"
        '<a href="javascript:alert(3)">Open the spreadsheet</a>'
        f'<p><img src="{image_url}" alt="tracking pixel" width="1" height="1"></p>',
        subtype="html",
    )
    mail.add_attachment(b"id,amount\n1,100\n", maintype="text", subtype="csv", filename="numbers.csv")
    return mail


@pytest.fixture(scope="module")
def delivered(served, tracker):
    """A domain and mailbox made over the API, then the hostile message sent over SMTP."""
    token = admin_token(served)
    status, body = api(served, "POST", "/api/v1/domains/", {"name": "webmail.test"}, token=token)
    assert status == 201, body
    status, body = api(
        served,
        "POST",
        "/api/v1/mailboxes/",
        {"address": MAILBOX, "password": "a-long-mailbox-password"},
        token=token,
    )
    assert status == 201, body
    mailbox_id = body["id"]

    image_url = f"http://127.0.0.1:{tracker.server_address[1]}/pixel.png?to={quote(MAILBOX)}"
    host, port = served.env["A3_SMTP_LISTEN"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=10) as smtp:
        refused = smtp.send_message(
            _hostile_mail(image_url), from_addr="mallory@evil.test", to_addrs=[MAILBOX]
        )
    assert refused == {}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, listing = api(served, "GET", f"/api/v1/messages/?mailbox={quote(MAILBOX)}", token=token)
        assert status == 200, listing
        if listing["results"]:
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the message was never delivered\n{served.logs()}")
    return {"token": token, "mailbox_id": mailbox_id, "item": listing["results"][0], "image_url": image_url}


def test_browser_reads_hostile_mail_safely_and_loads_remote_images_only_on_request(
    served, browser, delivered, tracker
):
    base = served.base_url
    item = delivered["item"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen = watch_page(page)
    admin_sign_in(page, base)

    # Webmail → the mailbox → the message, as a person would click.
    page.locator("nav.sidebar").get_by_role("link", name="Webmail", exact=True).click()
    page.get_by_role("link", name=MAILBOX).first.click()
    row = page.locator(".mail-row", has_text="Quarterly report (hostile)")
    assert "unread" in (row.get_attribute("class") or "")
    assert page.locator(".folder-list a[data-folder=INBOX] .count").inner_text() == "1"
    screenshot(page, "webmail-list-desktop.png")
    row.get_by_role("link").click()
    page.wait_for_url(f"{base}/mail/webmail/messages/{item['id']}/")

    iframe = page.locator("iframe.message-body")
    assert iframe.get_attribute("sandbox") == "allow-popups allow-popups-to-escape-sandbox"
    body = page.frame_locator("iframe.message-body").locator("body")
    body.get_by_text("Revenue is up.").wait_for(timeout=10_000)
    assert body.locator("h2").inner_text() == "Quarterly numbers"
    assert body.get_by_text("Open the spreadsheet").is_visible()
    assert body.locator("script").count() == 0
    assert body.locator("[onerror]").count() == 0
    assert body.locator("a[href^='javascript']").count() == 0
    # The sandboxed frame has an opaque origin: our page's script cannot reach into it and it
    # cannot reach out to us.
    assert (
        page.evaluate(
            "() => { try { return !!document.querySelector('iframe').contentDocument } catch (e) { return false } }"
        )
        is False
    )

    bar = page.locator("#remote-bar")
    assert "2 remote images blocked" in bar.inner_text()  # the tracker and the relative "x"
    status, detail = api(served, "GET", f"/api/v1/messages/{item['id']}/", token=delivered["token"])
    [attachment] = detail["attachments"]
    link = page.get_by_role("link", name="numbers.csv")
    assert link.get_attribute("href") == f"/api/v1/messages/{item['id']}/attachments/{attachment['index']}"
    page.locator("details.message-headers summary").click()
    assert page.locator(".header-table").get_by_text("mallory@evil.test").first.is_visible()
    page.wait_for_timeout(1000)  # give any sneaky fetch time to happen
    assert tracker.RequestHandlerClass.hits == []
    assert not [url for url in seen["requests"] if "pixel.png" in url]
    screenshot(page, "webmail-message-desktop.png")

    page.evaluate("window.__noReload = 1")
    bar.get_by_role("link", name="Show remote images").click()
    deadline = time.monotonic() + 10
    while not tracker.RequestHandlerClass.hits and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert tracker.RequestHandlerClass.hits == [f"/pixel.png?to={quote(MAILBOX)}"]
    assert page.locator("#remote-bar").inner_text().startswith("Remote images are shown.")
    assert page.evaluate("window.__noReload") == 1  # an HTMX swap, not a reload
    assert page.url.endswith("?remote_images=1")

    # Nothing the message carried ever ran, in any frame.
    assert seen["dialogs"] == []
    assert not [line for line in seen["console"] if "pwned" in line]
    assert seen["errors"] == []
    # Opening the message marked it read.
    status, detail = api(served, "GET", f"/api/v1/messages/{item['id']}/", token=delivered["token"])
    assert status == 200 and detail["seen"] is True
    context.close()


def test_browser_files_a_message_with_htmx_actions(served, browser, delivered):
    base = served.base_url
    item = delivered["item"]
    context = browser.new_context()
    page = context.new_page()
    seen = watch_page(page)
    admin_sign_in(page, base)
    page.goto(f"{base}/mail/webmail/messages/{item['id']}/")

    page.get_by_role("button", name="☆ Flag").click()
    page.get_by_role("button", name="★ Flagged").wait_for()
    page.get_by_role("button", name="Mark unread").click()
    page.get_by_role("button", name="Mark read").wait_for()
    status, detail = api(served, "GET", f"/api/v1/messages/{item['id']}/", token=delivered["token"])
    assert (detail["flagged"], detail["seen"]) == (True, False)

    page.select_option("select[name=folder]", "Junk")  # moves at once; no button needed
    page.wait_for_url(f"{base}/mail/webmail/{delivered['mailbox_id']}/")
    assert "Moved to Junk." in page.locator(".flash-success").inner_text()
    assert page.locator(".mail-row").count() == 0
    page.locator(".folder-list a[data-folder=Junk]").click()
    assert page.locator(".mail-row", has_text="Quarterly report (hostile)").count() == 1

    # Search as you type: an HTMX swap of the list, within the folder, kept in the URL.
    page.evaluate("window.__noReload = 1")
    page.fill("input[name=q]", "zebra")
    page.get_by_text("No messages match “zebra”.").wait_for()
    page.fill("input[name=q]", "quarterly")
    page.locator(".mail-row", has_text="Quarterly report (hostile)").wait_for()
    assert page.evaluate("window.__noReload") == 1
    assert page.url.endswith("?q=quarterly&folder=Junk")
    status, detail = api(served, "GET", f"/api/v1/messages/{item['id']}/", token=delivered["token"])
    assert status == 200 and detail["folder"] == "Junk"
    assert seen["dialogs"] == [] and seen["errors"] == []
    context.close()


def test_browser_message_view_fits_a_phone(served, browser, delivered):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    admin_sign_in(page, served.base_url)
    page.goto(f"{served.base_url}/mail/webmail/messages/{delivered['item']['id']}/")
    page.frame_locator("iframe.message-body").get_by_text("Revenue is up.").wait_for(timeout=10_000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the message view is {width}px wide on a 390px screen"
    assert page.locator("iframe.message-body").bounding_box()["width"] <= 390
    screenshot(page, "webmail-message-phone.png")
    status, detail = api(
        served, "GET", f"/api/v1/messages/{delivered['item']['id']}/", token=delivered["token"]
    )
    assert status == 200
    page.goto(f"{served.base_url}/mail/webmail/{delivered['mailbox_id']}/?folder={detail['folder']}")
    assert page.locator(".mail-row").count() == 1
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the message list is {width}px wide on a 390px screen"
    screenshot(page, "webmail-list-phone.png")
    context.close()
