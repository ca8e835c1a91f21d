"""Headless Chromium (Debian's, driven by Playwright) against a real `manage.py serve`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
def context(browser):
    context = browser.new_context()
    yield context
    context.close()


def _console_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def _login(page, base_url: str) -> None:
    page.goto(f"{base_url}/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base_url}/")


def test_browser_login_create_domain_and_mailbox_and_see_live_alerts(served, context):
    base = served.base_url
    watcher = context.new_page()
    watcher_errors = _console_errors(watcher)
    _login(watcher, base)
    # The overview's live feed connects over /ws/alerts/ with the session cookie.
    watcher.wait_for_selector("#live-status[data-state=live]", timeout=10_000)
    # A marker that a reload would wipe: proves the alerts arrive without one.
    watcher.evaluate("window.__noReload = 'still here'")

    editor = context.new_page()
    editor_errors = _console_errors(editor)
    editor.goto(f"{base}/mail/domains/new/")
    editor.fill("input[name=name]", "Browser-Bücher.test")
    editor.fill("input[name=description]", "made in Chromium")
    editor.get_by_role("button", name="Add domain").click()
    editor.wait_for_url(f"{base}/mail/domains/")
    assert editor.locator(".flash-success").inner_text().startswith("Domain browser-bücher.test added")
    assert editor.locator("#domain-table").get_by_text("browser-bücher.test").count() == 1

    editor.goto(f"{base}/mail/mailboxes/new/")
    editor.fill("input[name=address]", "eve@browser-bücher.test")
    editor.fill("input[name=display_name]", "Eve")
    editor.fill("input[name=password]", "a-long-mailbox-password")
    editor.get_by_role("button", name="Create mailbox").click()
    editor.wait_for_url(f"{base}/mail/mailboxes/")
    assert "eve@browser-bücher.test" in editor.locator("#mailbox-table").inner_text()

    feed = watcher.locator("#alert-feed")
    feed.get_by_text("Mailbox eve@browser-bücher.test was created").wait_for(timeout=10_000)
    assert feed.get_by_text("Domain browser-bücher.test was added").count() == 1
    assert watcher.evaluate("window.__noReload") == "still here"
    assert watcher.locator("#alert-badge-count").inner_text() == "2"
    assert watcher_errors == [] and editor_errors == []


def test_browser_htmx_inline_edit_and_disable_mailbox(served, context):
    base = served.base_url
    page = context.new_page()
    errors = _console_errors(page)
    _login(page, base)
    page.goto(f"{base}/mail/domains/new/")
    page.fill("input[name=name]", "inline.test")
    page.get_by_role("button", name="Add domain").click()
    page.wait_for_url(f"{base}/mail/domains/")
    page.goto(f"{base}/mail/mailboxes/new/")
    page.fill("input[name=address]", "ivy@inline.test")
    page.fill("input[name=password]", "a-long-mailbox-password")
    page.get_by_role("button", name="Create mailbox").click()
    page.wait_for_url(f"{base}/mail/mailboxes/")

    page.evaluate("window.__noReload = 1")
    page.fill("input[name=q]", "ivy@")
    expect(page.locator("#mailbox-table tbody tr")).to_have_count(1)
    row = page.locator("tr", has_text="ivy@inline.test")
    assert page.url.endswith("?q=ivy%40")  # the search is in the URL, so reload keeps it

    row.get_by_role("link", name="Edit").click()
    editor = page.locator("tr.editing")
    editor.wait_for()
    editor.locator("input[name=display_name]").fill("Ivy Inline")
    editor.locator("input[name=quota_mib]").fill("2048")
    editor.get_by_role("button", name="Save").click()
    row = page.locator("tr", has_text="Ivy Inline")
    row.wait_for()
    assert "2.0 GiB" in row.inner_text()

    row.get_by_role("button", name="Disable").click()
    page.locator("tr", has_text="ivy@inline.test").get_by_text("disabled").wait_for()
    assert page.evaluate("window.__noReload") == 1  # every step was an HTMX swap
    assert errors == []


def test_browser_dashboard_is_usable_on_a_phone(served, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    _login(page, served.base_url)
    sidebar = page.locator("nav.sidebar")
    assert not sidebar.is_visible() or sidebar.bounding_box()["x"] < 0
    page.locator("label.nav-toggle-button").click()
    page.locator("nav.sidebar").get_by_role("link", name="Mailboxes", exact=True).click()
    page.wait_for_url(f"{served.base_url}/mail/mailboxes/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"page is {width}px wide on a 390px screen"
    shots = os.environ.get("A3_SCREENSHOT_DIR")
    if shots:
        page.screenshot(path=str(Path(shots) / "mailboxes-phone.png"), full_page=True)
    context.close()
