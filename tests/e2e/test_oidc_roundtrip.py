"""OpenID Connect sign-in end to end: a real OpenID provider (django-oidc-provider, run
here on a free port), a real `manage.py serve` configured with its issuer through the
environment and `manage.py sso_provider_sync`, and headless Chromium going back and forth
between them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from tests.e2e.conftest import ROOT, Server, admin_token, api, free_port, installation

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CLIENT_ID = "a3mailer-e2e"
CLIENT_SECRET = "e2e-client-secret-4711"
IDP_USER = "ada"
IDP_PASSWORD = "ada-at-the-provider-0815"
EMAIL = "ada@sso.test"
BUTTON = "Sign in with Test IdP"


@dataclass
class SsoSite:
    server: Server
    issuer: str
    token: str


def _wait_for(url: str, server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered\n{server.logs()}")


@pytest.fixture(scope="module")
def sso_site(tmp_path_factory) -> Iterator[SsoSite]:
    idp_port = free_port()
    issuer = f"http://127.0.0.1:{idp_port}/openid"
    idp_dir = tmp_path_factory.mktemp("idp")
    extra_env = {
        "A3_OIDC_ISSUER": issuer,
        "A3_OIDC_CLIENT_ID": CLIENT_ID,
        "A3_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "A3_OIDC_NAME": "Test IdP",
        # The administrator below drives the API with a password-only token.
        "A3_MFA_REQUIRED_ROLES": "",
    }
    with installation(tmp_path_factory.mktemp("serve"), extra_env=extra_env) as server:
        idp_env = {"DJANGO_SETTINGS_MODULE": "tests.e2e.oidc_site.settings", "OIDC_SITE_DIR": str(idp_dir)}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.e2e.oidc_site.provision",
                f"--redirect-uri={server.base_url}/accounts/sso/complete/oidc/",
                f"--client-id={CLIENT_ID}",
                f"--client-secret={CLIENT_SECRET}",
                f"--username={IDP_USER}",
                f"--email={EMAIL}",
                f"--password={IDP_PASSWORD}",
            ],
            cwd=ROOT,
            env={**server.env, **idp_env},
            check=True,
            capture_output=True,
            timeout=60,
        )
        server.start(
            "idp",
            sys.executable,
            "-m",
            "django",
            "runserver",
            "--noreload",
            f"127.0.0.1:{idp_port}",
            env=idp_env,
        )
        server.start("serve", sys.executable, "manage.py", "serve")
        server.wait_ready()
        _wait_for(f"{issuer}/.well-known/openid-configuration", server)
        sync = subprocess.run(
            [sys.executable, "manage.py", "sso_provider_sync"],
            cwd=ROOT,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sync.returncode == 0, sync.stderr
        assert "Identity provider oidc (OpenID Connect) is up to date." in sync.stdout
        token = admin_token(server)
        # An account with the address the provider verifies: the first sign-in links to it.
        status, body = api(server, "POST", "/api/v1/users/", {"email": EMAIL, "role": "user"}, token=token)
        assert status == 201, body
        yield SsoSite(server=server, issuer=issuer, token=token)


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def _sign_in_at_provider(page, issuer: str) -> None:
    page.wait_for_url(f"{issuer.rsplit('/openid', 1)[0]}/login/**")
    page.fill("input[name=username]", IDP_USER)
    page.fill("input[name=password]", IDP_PASSWORD)
    page.get_by_role("button", name="Log in to the provider").click()


def _events(site: SsoSite, kind: str) -> list[dict]:
    status, body = api(site.server, "GET", f"/api/v1/auth/events/?kind={kind}", token=site.token)
    assert status == 200, body
    return body["results"]


def test_oidc_round_trip_signs_in_the_linked_account(sso_site, page):
    base = sso_site.server.base_url
    page.goto(f"{base}/accounts/login/")
    page.get_by_role("button", name=BUTTON).click()

    _sign_in_at_provider(page, sso_site.issuer)

    page.wait_for_url(f"{base}/", timeout=15_000)
    assert page.locator(".whoami").inner_text() == EMAIL
    logins = [event for event in _events(sso_site, "sso_login") if event["email"] == EMAIL]
    assert len(logins) == 1 and logins[0]["detail"]["provider"] == "oidc"
    # The provider asserts "otp", but it is not trusted for MFA unless configured so.
    assert logins[0]["detail"]["mfa"] is False
    assert [event["email"] for event in _events(sso_site, "sso_linked")] == [EMAIL]
    session_starts = [e for e in _events(sso_site, "login_ok") if e["email"] == EMAIL]
    assert session_starts and session_starts[0]["detail"]["method"] == "sso"


def test_oidc_forged_state_is_rejected(sso_site, page):
    base = sso_site.server.base_url
    page.goto(f"{base}/accounts/login/")
    page.get_by_role("button", name=BUTTON).click()
    page.wait_for_url(f"{sso_site.issuer.rsplit('/openid', 1)[0]}/login/**")

    # The provider echoes the state it is given: swap ours for a forged one, so that the
    # callback brings a real authorization code with a state this browser never got.
    authorize = urlsplit(parse_qs(urlsplit(page.url).query)["next"][0])
    params = {key: values[0] for key, values in parse_qs(authorize.query).items()}
    assert params["code_challenge_method"] == "S256" and params["nonce"]
    params["state"] = "forged" + params["state"][6:]
    forged = urlunsplit(authorize._replace(query=urlencode(params)))
    page.goto(f"{sso_site.issuer.rsplit('/openid', 1)[0]}{forged}")
    _sign_in_at_provider(page, sso_site.issuer)

    page.wait_for_url(f"{base}/accounts/login/", timeout=15_000)
    assert "Sign-in with Test IdP failed" in page.locator(".flash-error").inner_text()
    assert page.locator(".whoami").count() == 0
    failures = [e for e in _events(sso_site, "login_failed") if e["detail"].get("provider") == "oidc"]
    assert failures and failures[0]["detail"]["reason"] == "session_context_missing"
