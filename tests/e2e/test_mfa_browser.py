"""Second factors in a real browser: headless Chromium against a real `manage.py serve` whose
MFA policy covers administrators (A3_MFA_REQUIRED_ROLES=superadmin,domain_admin), driving
the enrolment page, the sign-in's second step and backup codes through the strict CSP."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pyotp
import pytest

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Server, api, installation

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PASSWORD = "a-long-e2e-user-password-7731"


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Iterator[Server]:
    with installation(
        tmp_path_factory.mktemp("mfa"), extra_env={"A3_MFA_REQUIRED_ROLES": "superadmin,domain_admin"}
    ) as server:
        server.start("serve", sys.executable, "manage.py", "serve")
        server.wait_ready()
        yield server


def _enrol_over_api(server: Server, token: str) -> tuple[pyotp.TOTP, list[str]]:
    status, begun = api(server, "POST", "/api/v1/auth/mfa/totp/", token=token)
    assert status == 201, begun
    totp = pyotp.TOTP(begun["secret"])
    status, confirmed = api(
        server, "POST", "/api/v1/auth/mfa/totp/confirm/", {"otp": totp.now()}, token=token
    )
    assert status == 200, confirmed
    return totp, confirmed["backup_codes"]


@pytest.fixture(scope="module")
def root_token(strict) -> str:
    """A full token of the superadmin, who must first enrol: the API's own enrolment flow."""
    status, body = api(
        strict, "POST", "/api/v1/auth/token/", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert status == 201 and body["scope"] == "mfa_enrolment", body
    status, refused = api(strict, "GET", "/api/v1/domains/", token=body["token"])
    assert status == 403 and refused["code"] == "mfa_enrolment_required"
    _, codes = _enrol_over_api(strict, body["token"])
    status, full = api(
        strict,
        "POST",
        "/api/v1/auth/token/",
        {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "otp": codes[0]},
    )
    assert status == 201 and "scope" not in full, full
    return full["token"]


def _user(server: Server, token: str, email: str, role: str) -> None:
    status, body = api(
        server, "POST", "/api/v1/users/", {"email": email, "password": PASSWORD, "role": role}, token=token
    )
    assert status == 201, body


def _enrolled_user(server: Server, token: str, email: str) -> tuple[pyotp.TOTP, list[str]]:
    """A mailbox user (no policy applies) who set up an authenticator app over the API."""
    _user(server, token, email, "user")
    status, body = api(server, "POST", "/api/v1/auth/token/", {"email": email, "password": PASSWORD})
    assert status == 201, body
    return _enrol_over_api(server, body["token"])


def _next_code(totp: pyotp.TOTP) -> str:
    # The confirming code's time step is used up; the next step's code is within the
    # server's tolerance of one step, whenever in the current step this runs.
    return totp.at(time.time() + 30)


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.a3_errors = []
    page.on("console", lambda msg: page.a3_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.a3_errors.append(str(exc)))
    yield page
    context.close()


def _password_step(page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_load_state()


def test_admin_without_second_factor_is_made_to_enrol(strict, root_token, page):
    base = strict.base_url
    _user(strict, root_token, "dana@e2e.test", "domain_admin")

    _password_step(page, base, "dana@e2e.test")
    page.wait_for_url(f"{base}/accounts/mfa/setup/**")
    page.goto(f"{base}/mail/domains/")  # anything else leads back to enrolment
    page.wait_for_url(f"{base}/accounts/mfa/setup/?next=%2Fmail%2Fdomains%2F")

    qr = page.locator("#totp-qr")
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")  # the data: URI passed the CSP
    secret = page.locator("#totp-secret").get_attribute("data-secret")
    assert secret.replace(" ", "") == page.locator("#totp-secret").inner_text().replace(" ", "")
    page.fill("input[name=otp]", pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Confirm", exact=True).click()

    codes = page.locator("#backup-codes").inner_text().split()
    assert len(codes) == 10
    assert page.locator("#backup-codes-download").get_attribute("download") == "a3mailer-backup-codes.txt"
    page.locator("#backup-codes-continue").click()
    page.wait_for_url(f"{base}/mail/domains/")
    page.goto(f"{base}/accounts/security/")
    assert page.locator("#security-totp .pill").inner_text() == "on"
    assert page.locator("#backup-codes-remaining").inner_text() == "10 left"
    assert page.a3_errors == []


def test_login_with_authenticator_code(strict, root_token, page):
    base = strict.base_url
    totp, _ = _enrolled_user(strict, root_token, "tess@e2e.test")

    _password_step(page, base, "tess@e2e.test")
    page.wait_for_url(f"{base}/accounts/login/mfa/")
    page.fill("input[name=otp]", "000000")
    page.get_by_role("button", name="Verify", exact=True).click()
    assert "Invalid code." in page.locator(".form-errors").inner_text()
    page.a3_errors.clear()  # the browser reports the page's 400 status as an error
    time.sleep(1.1)  # django-otp's throttle after a failure
    page.fill("input[name=otp]", _next_code(totp))
    page.get_by_role("button", name="Verify", exact=True).click()

    page.wait_for_url(f"{base}/")
    assert page.locator(".whoami").inner_text() == "tess@e2e.test"
    assert page.a3_errors == []


def test_login_with_backup_code_which_then_fails_on_reuse(strict, root_token, page):
    base = strict.base_url
    _, codes = _enrolled_user(strict, root_token, "uma@e2e.test")

    _password_step(page, base, "uma@e2e.test")
    page.wait_for_url(f"{base}/accounts/login/mfa/")
    page.fill("input[name=otp]", codes[4])
    page.get_by_role("button", name="Verify", exact=True).click()
    page.wait_for_url(f"{base}/")
    assert "9 left" in page.locator(".flash-warning").inner_text()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/accounts/login/")

    _password_step(page, base, "uma@e2e.test")
    page.wait_for_url(f"{base}/accounts/login/mfa/")
    page.fill("input[name=otp]", codes[4])
    page.get_by_role("button", name="Verify", exact=True).click()

    assert "Invalid code." in page.locator(".form-errors").inner_text()
    assert page.url == f"{base}/accounts/login/mfa/"
    assert page.locator(".whoami").count() == 0
