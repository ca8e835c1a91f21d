"""Passkeys in a real browser: headless Chromium with a virtual WebAuthn authenticator
(DevTools protocol) against a real `manage.py serve`, through django-otp-webauthn's script,
our endpoints and the strict CSP."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import CDPSession, expect

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Server, installation

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def _serve(tmp_path: Path, *, mfa_required_roles: str) -> Iterator[Server]:
    """An installation whose relying party is the host the browser uses: localhost."""
    with installation(tmp_path) as server:
        server.env["A3_WEBAUTHN_RP_ID"] = "localhost"
        server.env["A3_WEBAUTHN_ALLOWED_ORIGINS"] = server.base_url
        server.env["A3_MFA_REQUIRED_ROLES"] = mfa_required_roles
        server.start("serve", sys.executable, "manage.py", "serve")
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def served_passkeys(tmp_path_factory) -> Iterator[Server]:
    """The MFA policy off: the administrator starts without a second factor."""
    yield from _serve(tmp_path_factory.mktemp("passkeys"), mfa_required_roles="")


@pytest.fixture(scope="module")
def served_mfa_policy(tmp_path_factory) -> Iterator[Server]:
    """The shipped MFA policy: administrators must have a second factor."""
    yield from _serve(tmp_path_factory.mktemp("passkeys-policy"), mfa_required_roles="superadmin")


@dataclass
class VirtualAuthenticator:
    """Chromium's virtual WebAuthn authenticator for one page (DevTools protocol)."""

    cdp: CDPSession
    authenticator_id: str

    def credentials(self) -> list[dict]:
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})[
            "credentials"
        ]

    def presence(self, enabled: bool) -> None:
        """Whether it answers requests by itself, as if the user touched it."""
        self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation",
            {"authenticatorId": self.authenticator_id, "enabled": enabled},
        )


@pytest.fixture
def context(browser):
    context = browser.new_context()
    yield context
    context.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def authenticator(context, page) -> VirtualAuthenticator:
    """A platform authenticator that keeps discoverable credentials and verifies its user."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return VirtualAuthenticator(cdp=cdp, authenticator_id=added["authenticatorId"])


def _csp_violations(page) -> list[str]:
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return violations


def _sign_out(page, base: str) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/accounts/login/")


def _password_step(page) -> None:
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_passkey_register_sign_in_passwordless_and_as_second_factor_then_remove(
    served_passkeys, page, authenticator
):
    base = served_passkeys.base_url
    violations = _csp_violations(page)

    # The password (the MFA policy is off here: the account starts without a factor).
    page.goto(f"{base}/")
    page.wait_for_url(f"{base}/accounts/login/?next=/")
    _password_step(page)
    page.wait_for_url(f"{base}/")

    # A passkey named on the security page.
    page.goto(f"{base}/accounts/security/")
    section = page.locator("#security-passkeys")
    section.locator("#passkey-name").fill("Laptop")
    section.get_by_role("button", name="Add a passkey").click()
    expect(page.locator(".flash-success")).to_contain_text("Passkey “Laptop” added.")
    assert page.url == f"{base}/accounts/security/"
    credentials = authenticator.credentials()
    assert len(credentials) == 1 and credentials[0]["isResidentCredential"] is True
    page.goto(f"{base}/accounts/passkeys/")
    expect(page.locator("#passkey-table")).to_contain_text("Laptop")
    expect(page.locator("#passkey-table")).to_contain_text("never")  # not used to sign in yet

    # Passwordless from the email field's autofill: the browser offers the passkey there
    # (the virtual authenticator picks it at once, as a user choosing it would).
    visited: list[str] = []
    page.on("framenavigated", lambda frame: visited.append(frame.url))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/")  # not waiting on the login page: the autofill may be quicker
    assert visited == [f"{base}/accounts/login/", f"{base}/"]
    expect(page.locator(".whoami")).to_have_text(ADMIN_EMAIL)

    # Passwordless with the button. The authenticator waits for a "touch" until the
    # autofill request is pending, so that it is the button's request that it answers.
    authenticator.presence(False)
    _sign_out(page, base)
    page.wait_for_load_state("networkidle")
    authenticator.presence(True)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(f"{base}/")
    expect(page.locator(".whoami")).to_have_text(ADMIN_EMAIL)

    # Password, then the passkey as the second factor.
    authenticator.presence(False)
    _sign_out(page, base)
    _password_step(page)
    page.wait_for_url(f"{base}/accounts/login/mfa/")
    authenticator.presence(True)
    page.get_by_role("button", name="Use a passkey instead").click()
    page.wait_for_url(f"{base}/")
    expect(page.locator(".whoami")).to_have_text(ADMIN_EMAIL)

    # Rename, then remove it.
    page.goto(f"{base}/accounts/passkeys/")
    row = page.locator("#passkey-table tbody tr", has_text="Laptop")
    row.get_by_text("Rename").click()
    row.locator("input[name=name]").fill("Old laptop")
    row.get_by_role("button", name="Save").click()
    expect(page.locator("#passkey-table")).to_contain_text("Old laptop")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#passkey-table tbody tr", has_text="Old laptop").get_by_role(
        "button", name="Remove"
    ).click()
    expect(page.locator(".flash-success")).to_contain_text("Passkey “Old laptop” removed.")
    expect(page.locator("#passkey-table")).to_contain_text("No passkeys yet.")

    # Gone for signing in too: the password alone signs in again.
    authenticator.presence(False)
    _sign_out(page, base)
    _password_step(page)
    page.wait_for_url(f"{base}/")
    assert violations == []


def test_passkey_is_a_second_factor_an_administrator_can_enrol_with(served_mfa_policy, page, authenticator):
    base = served_mfa_policy.base_url
    violations = _csp_violations(page)

    page.goto(f"{base}/")
    _password_step(page)
    # Policy: no dashboard before a second factor; the enrolment page offers a passkey too.
    page.wait_for_url(f"{base}/accounts/mfa/setup/?next=%2F")
    page.fill("#passkey-name", "Security key")
    page.get_by_role("button", name="Add a passkey").click()
    # Registering it verified the session, so the page it was headed for opens.
    page.wait_for_url(f"{base}/")
    expect(page.locator(".flash-success")).to_contain_text("Passkey “Security key” added.")
    page.goto(f"{base}/accounts/passkeys/")
    expect(page.locator("#passkey-table")).to_contain_text("Security key")
    assert violations == []
