"""GDPR export in headless Chromium against a real `manage.py serve`: mail arrives over
SMTP, an administrator requests an export of the mailbox on the dashboard, the Celery
worker builds it, and the downloaded ZIP holds an mbox a mail client opens."""

from __future__ import annotations

import json
import mailbox
import smtplib
import time
import zipfile
from email.message import EmailMessage
from urllib.parse import quote

import pytest

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, admin_token, api

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

MAILBOX = "subject@gdpr.test"


@pytest.fixture(scope="module")
def mailbox_with_mail(served):
    token = admin_token(served)
    assert api(served, "POST", "/api/v1/domains/", {"name": "gdpr.test"}, token=token)[0] == 201
    status, body = api(
        served,
        "POST",
        "/api/v1/mailboxes/",
        {"address": MAILBOX, "password": "a-long-mailbox-password"},
        token=token,
    )
    assert status == 201, body
    host, port = served.env["A3_SMTP_LISTEN"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=10) as smtp:
        for number in range(3):
            mail = EmailMessage()
            mail["From"] = "someone@example.org"
            mail["To"] = MAILBOX
            mail["Subject"] = f"Export me {number}"
            mail.set_content(f"Body {number}\nFrom the start of a line.\n")
            smtp.send_message(mail, from_addr="someone@example.org", to_addrs=[MAILBOX])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, listing = api(served, "GET", f"/api/v1/messages/?mailbox={quote(MAILBOX)}", token=token)
        if status == 200 and listing["count"] == 3:
            return token
        time.sleep(0.25)
    raise AssertionError(f"mail was never delivered\n{served.logs()}")


def test_admin_exports_a_mailbox_from_the_browser_as_mbox(served, browser, mailbox_with_mail, tmp_path):
    base = served.base_url
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/compliance/gdpr/")
    page.fill("input[name=subject]", MAILBOX)
    page.get_by_role("button", name="Request export").click()
    # The job's row refreshes itself (HTMX) until the worker has built the archive.
    download_link = page.get_by_role("link", name="Download")
    download_link.wait_for(timeout=60_000)
    with page.expect_download() as downloaded:
        download_link.click()
    saved = tmp_path / "export.zip"
    downloaded.value.save_as(saved)
    archive = zipfile.ZipFile(saved)

    names = archive.namelist()
    manifest = json.loads(archive.read("manifest.json"))
    assert "account.json" in names
    mbox_name = next(name for name in names if name.endswith(".mbox") and "INBOX" in name)
    (tmp_path / "inbox.mbox").write_bytes(archive.read(mbox_name))
    folder = mailbox.mbox(tmp_path / "inbox.mbox")
    subjects = sorted(message["Subject"] for message in folder)
    assert subjects == ["Export me 0", "Export me 1", "Export me 2"]
    assert sum(1 for name in names if name.endswith(".eml")) == 3
    listed = manifest["files"] if isinstance(manifest, dict) and "files" in manifest else manifest
    assert listed, manifest
    context.close()

    status, audit = api(
        served, "GET", "/api/v1/audit-events/?action=gdpr.export_downloaded", token=mailbox_with_mail
    )
    assert status == 200 and audit["count"] >= 1, audit
