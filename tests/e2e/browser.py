"""Helpers the browser tests share: signing in as the seeded administrator, recording
what a page does, and optional screenshots."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD


def admin_sign_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base_url}/")


def watch_page(page) -> dict[str, list[str]]:
    """Record dialogs (dismissing them), console output, page errors and every request,
    from every frame of the page."""
    seen: dict[str, list[str]] = {"dialogs": [], "console": [], "errors": [], "requests": []}

    def on_dialog(dialog) -> None:
        seen["dialogs"].append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda msg: seen["console"].append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("request", lambda request: seen["requests"].append(request.url))
    return seen


def screenshot(page, name: str) -> None:
    """A full-page screenshot into A3_SCREENSHOT_DIR, when that is set."""
    shots = os.environ.get("A3_SCREENSHOT_DIR")
    if shots:
        page.screenshot(path=str(Path(shots) / name), full_page=True)
