"""Passkeys (apps/accounts/passkeys.py, passkey_views.py): the services, the pages, and the
WebAuthn ceremonies end to end through django-otp-webauthn's endpoints, answered by a small
software authenticator (P-256, "none" attestation) that stands in for the browser."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_otp_webauthn.models import WebAuthnCredential, WebAuthnUserHandle

from apps.accounts import lockout, mfa, passkeys, services
from apps.accounts.models import AuthEvent, User, UserSession
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from tests.factories import TEST_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

ORIGIN = "https://localhost"  # in the default OTP_WEBAUTHN_ALLOWED_ORIGINS; RP ID "localhost"
CLIENT = services.ClientInfo(ip="198.51.100.9", user_agent="pytest")


# --- A software authenticator ------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Authenticator:
    """One passkey on a platform authenticator that verifies its user (UP and UV set)."""

    origin: str = ORIGIN
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    user_handle: bytes = b""
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        )

    def _auth_data(self, rp_id: str, *, attested: bool) -> bytes:
        self.sign_count += 1
        flags = 0x01 | 0x04 | (0x40 if attested else 0)
        data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", self.sign_count)
        if attested:
            data += bytes(16) + struct.pack(">H", len(self.credential_id)) + self.credential_id
            data += self.cose_public_key()
        return data

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": self.origin}).encode()

    def create(self, options: dict) -> dict:
        """navigator.credentials.create(), as the JSON the library's script posts."""
        self.user_handle = unb64url(options["user"]["id"])
        attestation = cbor2.dumps(
            {"fmt": "none", "attStmt": {}, "authData": self._auth_data(options["rp"]["id"], attested=True)}
        )
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(self._client_data("webauthn.create", options["challenge"])),
                "attestationObject": b64url(attestation),
                "transports": ["internal"],
            },
            "clientExtensionResults": {"credProps": {"rk": True}},
            "authenticatorAttachment": "platform",
        }

    def get(self, options: dict, *, tamper: bool = False) -> dict:
        """navigator.credentials.get(), as the JSON the library's script posts."""
        auth_data = self._auth_data(options["rpId"], attested=False)
        client_data = self._client_data("webauthn.get", options["challenge"])
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = self.key.sign(signed + (b"x" if tamper else b""), ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(self.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }


def stored_passkey(user: User, authenticator: Authenticator, name: str = "Laptop") -> WebAuthnCredential:
    """A passkey as a registration would have stored it, without the ceremony."""
    authenticator.user_handle = WebAuthnUserHandle.get_handle_for_user(user)
    return WebAuthnCredential.objects.create(
        user=user,
        name=name,
        confirmed=True,
        credential_id=authenticator.credential_id,
        public_key=authenticator.cose_public_key(),
        aaguid="00000000-0000-0000-0000-000000000000",
        discoverable=True,
    )


def post_json(client, url_name: str, body: dict | None = None, **extra):
    return client.post(
        reverse(url_name),
        data=json.dumps(body) if body is not None else "",
        content_type="application/json",
        **extra,
    )


def register(client, authenticator: Authenticator, name: str | None = None):
    """The registration ceremony as the browser runs it, the name cookie included."""
    if name is not None:
        client.cookies["a3_passkey_name"] = name
    begin = post_json(client, "otp_webauthn:credential-registration-begin")
    if begin.status_code != 200:
        return begin
    return post_json(
        client, "otp_webauthn:credential-registration-complete", authenticator.create(begin.json())
    )


def sign_in(client, authenticator: Authenticator, *, tamper: bool = False, next_url: str = ""):
    """The authentication ceremony; returns (begin options, complete response)."""
    begin = post_json(client, "otp_webauthn:credential-authentication-begin")
    assert begin.status_code == 200, begin.content
    options = begin.json()
    url = reverse("otp_webauthn:credential-authentication-complete")
    if next_url:
        url += f"?next={next_url}"
    response = client.post(
        url, data=json.dumps(authenticator.get(options, tamper=tamper)), content_type="application/json"
    )
    return options, response


def events(user: User | None, kind: str) -> list[dict]:
    return list(
        AuthEvent.objects.filter(user=user, kind=kind).order_by("pk").values_list("detail", flat=True)
    )


def signed_in_user_id(client) -> str | None:
    return client.session.get("_auth_user_id")


@pytest.fixture
def owner(db) -> User:
    return UserFactory(email="owner@people.test")


@pytest.fixture
def other(db) -> User:
    return UserFactory(email="other@people.test")


def sign_in_verified(client, user: User, name: str = "Laptop") -> WebAuthnCredential:
    """A passkey of `user`, and a session signed in (and so verified) with it."""
    authenticator = Authenticator()
    passkey = stored_passkey(user, authenticator, name)
    _, response = sign_in(client, authenticator)
    assert response.status_code == 200, response.content
    return passkey


def password_step(client, user: User) -> None:
    """The password step of the login page for a user with a second factor."""
    response = client.post(reverse("accounts:login"), {"email": user.email, "password": TEST_PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:login-mfa")
    assert signed_in_user_id(client) is None


# --- Services ------------------------------------------------------------------------------


def test_passkey_list_holds_only_the_users_own_passkeys(owner, other):
    mine = stored_passkey(owner, Authenticator(), "Laptop")
    stored_passkey(other, Authenticator(), "Phone")

    assert [p.pk for p in passkeys.passkey_list(user=owner)] == [mine.pk]


def test_passkey_rename_renames_and_refuses_bad_or_duplicate_names(owner):
    laptop = stored_passkey(owner, Authenticator(), "Laptop")
    stored_passkey(owner, Authenticator(), "Phone")

    renamed = passkeys.passkey_rename(user=owner, passkey_id=laptop.pk, name="  Work   laptop ")

    assert renamed.name == "Work laptop"
    assert WebAuthnCredential.objects.get(pk=laptop.pk).name == "Work laptop"
    with pytest.raises(ConflictError):
        passkeys.passkey_rename(user=owner, passkey_id=laptop.pk, name="phone")
    for bad in ("", "x" * 65, "Lap\u202etop"):
        with pytest.raises(ApplicationError) as excinfo:
            passkeys.passkey_rename(user=owner, passkey_id=laptop.pk, name=bad)
        assert excinfo.value.code == "invalid_name"
    assert WebAuthnCredential.objects.get(pk=laptop.pk).name == "Work laptop"


def test_passkey_rename_of_someone_elses_passkey_is_not_found(owner, other):
    theirs = stored_passkey(other, Authenticator(), "Phone")

    with pytest.raises(NotFoundError):
        passkeys.passkey_rename(user=owner, passkey_id=theirs.pk, name="Mine now")
    assert WebAuthnCredential.objects.get(pk=theirs.pk).name == "Phone"


def test_passkey_remove_deletes_it_and_records_mfa_removed(owner):
    laptop = stored_passkey(owner, Authenticator(), "Laptop")

    passkeys.passkey_remove(actor=owner, user=owner, passkey_id=laptop.pk, client=CLIENT)

    assert not WebAuthnCredential.objects.filter(pk=laptop.pk).exists()
    assert events(owner, AuthEvent.Kind.MFA_REMOVED) == [{"factor": "passkey", "name": "Laptop"}]


def test_passkey_remove_of_someone_elses_passkey_is_not_found_and_keeps_it(owner, other):
    theirs = stored_passkey(other, Authenticator(), "Phone")

    with pytest.raises(NotFoundError):
        passkeys.passkey_remove(actor=owner, user=owner, passkey_id=theirs.pk)
    with pytest.raises(PermissionDeniedError):
        passkeys.passkey_remove(actor=owner, user=other, passkey_id=theirs.pk)

    assert WebAuthnCredential.objects.filter(pk=theirs.pk).exists()
    assert events(other, AuthEvent.Kind.MFA_REMOVED) == []


# --- Registration ceremony -----------------------------------------------------------------


def test_registration_stores_the_named_passkey_and_records_mfa_enrolled(client, owner):
    client.force_login(owner)

    response = register(client, Authenticator(), name="Laptop")

    assert response.status_code == 200, response.content
    passkey = WebAuthnCredential.objects.get(user=owner)
    assert response.json() == {"id": passkey.pk, "name": "Laptop"}
    assert passkey.name == "Laptop"
    assert passkey.confirmed is True
    assert passkey.discoverable is True
    assert events(owner, AuthEvent.Kind.MFA_ENROLLED) == [{"factor": "passkey", "name": "Laptop"}]
    # The owner just used it: the session counts as verified, as after enrolling an app.
    assert client.session.get("otp_device_id") == passkey.persistent_id
    assert "a3_passkey_name" not in client.session


def test_registration_begin_clears_the_name_cookie(client, owner):
    client.force_login(owner)
    client.cookies["a3_passkey_name"] = "Laptop"

    begin = post_json(client, "otp_webauthn:credential-registration-begin")

    assert begin.status_code == 200
    assert begin.cookies["a3_passkey_name"]["max-age"] == 0
    assert begin.json()["authenticatorSelection"]["residentKey"] == "required"


def test_registration_without_a_name_numbers_the_passkeys(client, owner):
    client.force_login(owner)

    assert register(client, Authenticator()).status_code == 200
    assert register(client, Authenticator(), name="").status_code == 200

    assert sorted(passkeys.passkey_list(user=owner).values_list("name", flat=True)) == [
        "Passkey 1",
        "Passkey 2",
    ]


def test_registration_with_a_duplicate_name_is_refused_before_the_ceremony(client, owner):
    sign_in_verified(client, owner, "Laptop")
    client.cookies["a3_passkey_name"] = "LAPTOP"

    begin = post_json(client, "otp_webauthn:credential-registration-begin")

    assert begin.status_code == 409
    assert begin.json()["code"] == "duplicate"
    assert "otp_webauthn_register_state" not in client.session
    assert WebAuthnCredential.objects.filter(user=owner).count() == 1


def test_registration_from_another_origin_stores_nothing(client, owner):
    client.force_login(owner)

    response = register(client, Authenticator(origin="https://phish.example"), name="Laptop")

    assert response.status_code == 422
    assert not WebAuthnCredential.objects.filter(user=owner).exists()
    assert events(owner, AuthEvent.Kind.MFA_ENROLLED) == []


def test_registration_needs_a_verified_session_once_the_user_has_a_factor(client, owner):
    TOTPDevice.objects.create(user=owner, name="app", confirmed=True)
    client.force_login(owner)  # a password-only session

    begin = post_json(client, "otp_webauthn:credential-registration-begin")

    assert begin.status_code == 403
    assert begin.json()["code"] == "user_not_verified"


def test_registration_needs_a_signed_in_user(client):
    begin = post_json(client, "otp_webauthn:credential-registration-begin")

    assert begin.status_code == 403
    assert begin.json()["code"] == "not_authenticated"


# --- Passwordless sign-in ------------------------------------------------------------------


def test_passwordless_sign_in_goes_through_login_complete_and_verifies_the_session(client, owner):
    authenticator = Authenticator()
    passkey = stored_passkey(owner, authenticator)

    options, response = sign_in(client, authenticator)

    assert options["userVerification"] == "required"
    assert "allowCredentials" not in options or options["allowCredentials"] == []
    assert response.status_code == 200, response.content
    assert response.json() == {"id": passkey.pk, "redirect_url": "/"}
    assert signed_in_user_id(client) == str(owner.pk)
    assert client.session.get("otp_device_id") == passkey.persistent_id
    session = UserSession.objects.get(session_key=client.session.session_key)
    assert (session.user_id, session.method, session.mfa_verified) == (owner.pk, "passkey", True)
    assert events(owner, AuthEvent.Kind.LOGIN_OK)[-1] == {"method": "passkey", "mfa": True}
    assert events(owner, AuthEvent.Kind.MFA_OK) == [{"factor": "passkey", "name": "Laptop"}]
    passkey.refresh_from_db()
    assert passkey.last_used_at is not None
    # The dashboard opens for the verified session.
    assert client.get(reverse("core:overview")).status_code == 200


def test_passwordless_sign_in_follows_a_safe_next_only(client, owner):
    authenticator = Authenticator()
    stored_passkey(owner, authenticator)

    _, response = sign_in(client, authenticator, next_url="https://evil.example/")

    assert response.json()["redirect_url"] == "/"


def test_passwordless_sign_in_with_a_bad_signature_fails_and_is_not_a_lockout_strike(client, owner):
    authenticator = Authenticator()
    stored_passkey(owner, authenticator)

    for _ in range(6):  # more than A3_LOCKOUT_FAILURES
        _, response = sign_in(client, authenticator, tamper=True)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_authentication_response"

    assert signed_in_user_id(client) is None
    assert len(events(None, AuthEvent.Kind.LOGIN_FAILED)) == 6
    assert lockout.lockout_remaining(username=owner.email, ip="127.0.0.1") == 0


def test_passwordless_sign_in_with_an_unknown_passkey_is_refused(client, owner):
    _, response = sign_in(client, Authenticator())

    assert response.status_code == 404
    assert signed_in_user_id(client) is None


def test_passwordless_sign_in_is_refused_while_the_account_is_locked_out(client, owner):
    authenticator = Authenticator()
    stored_passkey(owner, authenticator)
    for _ in range(5):
        lockout.lockout_record_failure(username=owner.email, ip="203.0.113.4", channel="web")

    _, response = sign_in(client, authenticator)

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert signed_in_user_id(client) is None


def test_passwordless_sign_in_of_a_disabled_user_is_refused(client, owner):
    authenticator = Authenticator()
    stored_passkey(owner, authenticator)
    User.objects.filter(pk=owner.pk).update(is_active=False)

    _, response = sign_in(client, authenticator)

    assert response.status_code == 403
    assert signed_in_user_id(client) is None


# --- Second factor after the password -------------------------------------------------------


def test_mfa_step_with_the_pending_users_passkey_completes_the_sign_in(client, owner):
    authenticator = Authenticator()
    passkey = stored_passkey(owner, authenticator)
    password_step(client, owner)

    options, response = sign_in(client, authenticator)

    assert [c["id"] for c in options["allowCredentials"]] == [b64url(authenticator.credential_id)]
    assert response.status_code == 200, response.content
    assert signed_in_user_id(client) == str(owner.pk)
    assert client.session.get("otp_device_id") == passkey.persistent_id
    assert "a3_pending_mfa" not in client.session
    session = UserSession.objects.get(session_key=client.session.session_key)
    assert (session.method, session.mfa_verified) == ("password", True)
    assert events(owner, AuthEvent.Kind.MFA_OK) == [{"factor": "passkey", "name": "Laptop"}]


def test_mfa_step_refuses_a_passkey_of_someone_else(client, owner, other):
    stored_passkey(owner, Authenticator())
    intruder = Authenticator()
    stored_passkey(other, intruder, "Intruder's")
    password_step(client, owner)

    _, response = sign_in(client, intruder)

    assert response.status_code == 403
    assert response.json()["code"] == "credential_user_mismatch"
    assert signed_in_user_id(client) is None
    assert events(owner, AuthEvent.Kind.MFA_FAILED) == [
        {"method": "passkey", "reason": "credential_user_mismatch"}
    ]
    assert events(other, AuthEvent.Kind.LOGIN_OK) == []


def test_mfa_step_hands_out_no_challenge_while_the_pending_user_is_locked_out(client, owner):
    stored_passkey(owner, Authenticator())
    password_step(client, owner)
    for _ in range(5):
        lockout.lockout_record_failure(username=owner.email, ip="203.0.113.4", channel="web")

    begin = post_json(client, "otp_webauthn:credential-authentication-begin")

    assert begin.status_code == 429
    assert begin.json()["code"] == "locked_out"
    assert "otp_webauthn_authentication_state" not in client.session


def test_mfa_step_without_a_passkey_hands_out_no_challenge(client, owner):
    TOTPDevice.objects.create(user=owner, name="app", confirmed=True)
    password_step(client, owner)

    begin = post_json(client, "otp_webauthn:credential-authentication-begin")

    assert begin.status_code == 409
    assert begin.json()["code"] == "no_passkey"


# --- Pages ---------------------------------------------------------------------------------


def test_passkey_list_page_shows_only_my_passkeys(client, owner, other):
    stored_passkey(owner, Authenticator(), "My laptop")
    stored_passkey(other, Authenticator(), "Their phone")
    client.force_login(owner)

    body = client.get(reverse("accounts:passkey-list")).content.decode()

    assert "My laptop" in body
    assert "Their phone" not in body
    assert 'id="passkey-register-button"' in body


def test_passkey_rename_view_renames_my_passkey(client, owner):
    laptop = sign_in_verified(client, owner, "Laptop")

    response = client.post(reverse("accounts:passkey-rename", args=[laptop.pk]), {"name": "Old laptop"})

    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:passkey-list")
    laptop.refresh_from_db()
    assert laptop.name == "Old laptop"


def test_passkey_rename_view_shows_a_bad_name_and_keeps_the_old_one(client, owner):
    laptop = sign_in_verified(client, owner, "Laptop")

    response = client.post(reverse("accounts:passkey-rename", args=[laptop.pk]), {"name": "  "}, follow=True)

    assert "Give the passkey a name." in response.content.decode()
    laptop.refresh_from_db()
    assert laptop.name == "Laptop"


def test_passkey_remove_view_removes_my_passkey(client, owner):
    laptop = sign_in_verified(client, owner, "Laptop")

    response = client.post(
        reverse("accounts:passkey-remove", args=[laptop.pk]), {"next": reverse("accounts:security")}
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:security")
    assert not WebAuthnCredential.objects.filter(pk=laptop.pk).exists()
    assert events(owner, AuthEvent.Kind.MFA_REMOVED) == [{"factor": "passkey", "name": "Laptop"}]


def test_passkey_remove_view_over_htmx_navigates_back(client, owner):
    laptop = sign_in_verified(client, owner, "Laptop")

    response = client.post(reverse("accounts:passkey-remove", args=[laptop.pk]), HTTP_HX_REQUEST="true")

    assert response.status_code == 204
    assert response["HX-Redirect"] == reverse("accounts:passkey-list")
    assert not WebAuthnCredential.objects.filter(pk=laptop.pk).exists()


@pytest.mark.parametrize("action", ["passkey-remove", "passkey-rename"])
def test_another_user_cannot_touch_my_passkey(client, owner, other, action):
    laptop = stored_passkey(owner, Authenticator(), "Laptop")
    client.force_login(other)

    response = client.post(reverse(f"accounts:{action}", args=[laptop.pk]), {"name": "Mine now"})

    assert response.status_code == 404
    laptop.refresh_from_db()
    assert laptop.name == "Laptop"
    assert events(owner, AuthEvent.Kind.MFA_REMOVED) == []


def test_passkey_remove_needs_a_verified_session(client, owner):
    laptop = stored_passkey(owner, Authenticator(), "Laptop")
    client.force_login(owner)  # password only, though the account has a passkey

    response = client.post(reverse("accounts:passkey-remove", args=[laptop.pk]))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:mfa-verify"))
    assert WebAuthnCredential.objects.filter(pk=laptop.pk).exists()


def test_passkey_pages_need_a_signed_in_user(client, owner):
    laptop = stored_passkey(owner, Authenticator(), "Laptop")

    response = client.post(reverse("accounts:passkey-remove", args=[laptop.pk]))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))
    assert WebAuthnCredential.objects.filter(pk=laptop.pk).exists()


def test_login_page_offers_a_passkey_without_inline_script(client):
    body = client.get(reverse("accounts:login")).content.decode()

    assert 'id="passkey-verification-button"' in body
    assert "Sign in with a passkey" in body
    config_start = body.index('<script id="otp_webauthn_config" type="application/json">')
    config = json.loads(body[config_start:].split(">", 1)[1].split("</script>", 1)[0])
    assert config["beginAuthenticationUrl"] == reverse("otp_webauthn:credential-authentication-begin")
    assert config["autocompleteLoginFieldSelector"] == "input[name='email']"
    # Strict CSP (script-src 'self'): every script is a file, or data the browser never runs.
    for tag in body.split("<script")[1:]:
        head = tag.split(">", 1)[0]
        assert "src=" in head or 'type="application/json"' in head, head


# --- With the MFA policy and the rest of the second factors ---------------------------------


def test_signed_in_session_reverifies_with_its_users_passkey(client, owner):
    authenticator = Authenticator()
    passkey = stored_passkey(owner, authenticator)
    client.force_login(owner)  # a session from the password alone

    options, response = sign_in(client, authenticator, next_url=reverse("accounts:security"))

    assert [c["id"] for c in options["allowCredentials"]] == [b64url(authenticator.credential_id)]
    assert response.status_code == 200, response.content
    assert response.json()["redirect_url"] == reverse("accounts:security")
    assert client.session.get("otp_device_id") == passkey.persistent_id
    assert events(owner, AuthEvent.Kind.MFA_OK) == [{"factor": "passkey", "name": "Laptop"}]


def test_a_user_held_by_the_mfa_policy_can_enrol_with_a_passkey(client, owner, settings):
    settings.A3_MFA_REQUIRED_ROLES = [User.Role.USER]
    client.force_login(owner)
    assert client.get(reverse("core:overview"))["Location"].startswith(reverse("accounts:mfa-setup"))

    response = register(client, Authenticator(), name="Phone")

    assert response.status_code == 200, response.content
    assert client.get(reverse("core:overview")).status_code == 200


def test_an_administrators_reset_removes_passkeys_too(owner, superadmin):
    stored_passkey(owner, Authenticator(), "Laptop")

    mfa.mfa_reset(actor=superadmin, user=owner)

    assert not WebAuthnCredential.objects.filter(user=owner).exists()
