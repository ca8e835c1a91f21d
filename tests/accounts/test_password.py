"""Password change (knowing the current one) and password reset by a link sent by mail
through our own relay."""

from __future__ import annotations

import re
from datetime import timedelta
from email import policy
from email.parser import BytesParser

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import AuthEvent, User, UserSession
from apps.accounts.password import RESET_REQUESTS_PER_ADDRESS, RESET_REQUESTS_PER_IP
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import MailItem, Message
from apps.relay.models import QueueItem, QueueRecipient
from tests.factories import TEST_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

CHANGE_URL = "/accounts/password/"
RESET_URL = "/accounts/password/reset/"
SENT_URL = "/accounts/password/reset/sent/"
NEW_PASSWORD = "a fresh and rather long passphrase"
INVALID_LINK = "This password reset link is invalid or has expired."


def sign_in(user, user_agent: str = "Firefox/128.0 (X11; Linux)") -> Client:
    client = Client(HTTP_USER_AGENT=user_agent)
    response = client.post("/accounts/login/", {"email": user.email, "password": TEST_PASSWORD})
    assert response.status_code == 302
    return client


def signed_in(client: Client) -> bool:
    return client.get("/accounts/sessions/").status_code == 200


def change(client: Client, current: str, new: str = NEW_PASSWORD, again: str | None = None):
    return client.post(
        CHANGE_URL,
        {"current_password": current, "new_password": new, "new_password_confirm": again or new},
    )


def without_csrf(content: bytes) -> bytes:
    return re.sub(rb'"X-CSRFToken": "[^"]*"', b"", content)


def password_works(user: User, password: str) -> bool:
    user.refresh_from_db()
    return user.check_password(password)


def mail_text(message: Message) -> str:
    parsed = BytesParser(policy=policy.default).parsebytes(blob_store().read(message.blob_sha256))
    return parsed.get_content()


def reset_link(message: Message) -> str:
    match = re.search(r"https?://\S+/accounts/password/reset/\S+/", mail_text(message))
    assert match, mail_text(message)
    return match.group(0)


def path_of(link: str, settings) -> str:
    assert link.startswith(settings.A3_PUBLIC_URL)
    return link[len(settings.A3_PUBLIC_URL) :]


# --- Change ------------------------------------------------------------------------------


def test_change_page_needs_sign_in(db):
    response = Client().get(CHANGE_URL)

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/accounts/login/")


def test_change_with_a_wrong_current_password_is_refused(plain_user):
    client = sign_in(plain_user)

    response = change(client, "not my password")

    assert response.status_code == 400
    assert "This is not your current password." in response.content.decode()
    assert password_works(plain_user, TEST_PASSWORD)
    failure = AuthEvent.objects.get(kind=AuthEvent.Kind.LOGIN_FAILED)
    assert failure.user == plain_user
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.PASSWORD_CHANGED).exists()


def test_change_to_a_weak_password_is_refused(plain_user):
    client = sign_in(plain_user)

    response = change(client, TEST_PASSWORD, "short")

    assert response.status_code == 400
    assert "too short" in response.content.decode()
    assert password_works(plain_user, TEST_PASSWORD)


def test_change_needs_the_new_password_twice(plain_user):
    client = sign_in(plain_user)

    response = change(client, TEST_PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")

    assert response.status_code == 400
    assert "The two passwords differ." in response.content.decode()
    assert password_works(plain_user, TEST_PASSWORD)


def test_change_keeps_this_session_and_ends_the_others_and_the_tokens(plain_user):
    client = sign_in(plain_user)
    other = sign_in(plain_user, "Safari/604.1 (iPhone)")
    token = services.api_token_create(user=plain_user, name="script").token
    key_before = client.session.session_key

    response = change(client, TEST_PASSWORD)

    assert response.status_code == 302
    assert response.headers["Location"] == "/accounts/sessions/"
    assert password_works(plain_user, NEW_PASSWORD)
    assert signed_in(client)
    assert not signed_in(other)
    # The session got a new key (Django rotates it) and its row followed.
    assert client.session.session_key != key_before
    row = UserSession.objects.get(user=plain_user)
    assert row.session_key == client.session.session_key
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.PASSWORD_CHANGED)
    assert (event.user, event.detail["sessions_revoked"]) == (plain_user, 1)
    assert (
        Client().post("/accounts/login/", {"email": plain_user.email, "password": NEW_PASSWORD}).status_code
        == 302
    )


def test_change_current_password_check_is_subject_to_lockout(plain_user, settings):
    client = sign_in(plain_user)
    for _ in range(settings.A3_LOCKOUT_FAILURES):
        change(client, "not my password")

    response = change(client, TEST_PASSWORD)  # the right one, too late

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert password_works(plain_user, TEST_PASSWORD)
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT).exists()


# --- Reset: asking for a link ----------------------------------------------------------


def test_login_page_links_to_reset(db):
    assert f'href="{RESET_URL}"' in Client().get("/accounts/login/").content.decode()


def test_reset_answers_the_same_for_unknown_and_known_addresses(plain_user):
    known = Client().post(RESET_URL, {"email": plain_user.email}, follow=True)
    unknown = Client().post(RESET_URL, {"email": "nobody@people.test"}, follow=True)

    assert known.redirect_chain == unknown.redirect_chain == [(SENT_URL, 302)]
    assert without_csrf(known.content) == without_csrf(unknown.content)
    assert QueueItem.objects.count() == 1  # only the real account got mail
    events = AuthEvent.objects.filter(kind=AuthEvent.Kind.PASSWORD_RESET_REQUESTED).order_by("pk")
    assert [(e.email, e.user_id, e.detail["sent"]) for e in events] == [
        (plain_user.email, plain_user.pk, True),
        ("nobody@people.test", None, False),
    ]


def test_reset_mail_to_a_local_mailbox_lands_in_its_inbox(user_a, mailbox_a, settings):
    settings.A3_PUBLIC_URL = "https://mail.example.test"

    Client().post(RESET_URL, {"email": "Alice@Alpha.test"}, HTTP_HOST="localhost")

    message = Message.objects.get()
    assert message.mail_from == ""
    assert not QueueItem.objects.exists()
    assert mail_services.message_deliver(message_id=message.pk)
    item = MailItem.objects.get(message=message)
    assert (item.mailbox_id, item.folder.special_use) == (mailbox_a.pk, "inbox")
    message.refresh_from_db()  # the scanned copy, with its headers
    link = reset_link(message)
    # Built on A3_PUBLIC_URL, never on the request's Host header.
    assert link.startswith("https://mail.example.test/accounts/password/reset/")


def test_reset_mail_to_an_external_address_is_queued(plain_user):
    Client().post(RESET_URL, {"email": plain_user.email})

    item = QueueItem.objects.get()
    assert (item.sender, item.domain) == ("", "people.test")
    assert list(QueueRecipient.objects.filter(item=item).values_list("address", flat=True)) == [
        plain_user.email
    ]
    parsed = BytesParser(policy=policy.default).parsebytes(blob_store().read(item.message.blob_sha256))
    assert parsed["Subject"] == "Reset your A3Mailer password"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert "/accounts/password/reset/" in parsed.get_content()


@pytest.mark.parametrize("state", ["inactive", "no password"])
def test_reset_sends_nothing_to_an_account_that_cannot_use_a_password(plain_user, state):
    if state == "inactive":
        plain_user.is_active = False
    else:
        plain_user.set_unusable_password()
    plain_user.save()

    response = Client().post(RESET_URL, {"email": plain_user.email})

    assert response.headers["Location"] == SENT_URL
    assert not Message.objects.exists()


def test_reset_requests_are_limited_per_address(plain_user):
    client = Client()
    for _ in range(RESET_REQUESTS_PER_ADDRESS):
        assert client.post(RESET_URL, {"email": plain_user.email}).status_code == 302

    refused = client.post(RESET_URL, {"email": plain_user.email})
    unknown = [Client().post(RESET_URL, {"email": "ghost@people.test"}) for _ in range(6)][-1]

    assert refused.status_code == unknown.status_code == 429
    assert "Too many password reset requests" in refused.content.decode()
    assert QueueItem.objects.count() == RESET_REQUESTS_PER_ADDRESS


def test_reset_requests_are_limited_per_client_address(db):
    client = Client()
    for number in range(RESET_REQUESTS_PER_IP):
        assert client.post(RESET_URL, {"email": f"someone{number}@people.test"}).status_code == 302

    response = client.post(RESET_URL, {"email": "another@people.test"})

    assert response.status_code == 429


def test_reset_limit_window_is_an_hour(plain_user, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    for _ in range(RESET_REQUESTS_PER_ADDRESS):
        Client().post(RESET_URL, {"email": plain_user.email})

    time_machine.shift(timedelta(minutes=61))

    assert Client().post(RESET_URL, {"email": plain_user.email}).status_code == 302


# --- Reset: using the link -------------------------------------------------------------


def requested_link(user, settings) -> str:
    Client().post(RESET_URL, {"email": user.email})
    return path_of(reset_link(Message.objects.latest("pk")), settings)


def set_password(path: str, new: str = NEW_PASSWORD):
    return Client().post(path, {"new_password": new, "new_password_confirm": new})


def test_reset_link_sets_a_new_password_once(plain_user, settings):
    browser = sign_in(plain_user)  # first: a sign-in after the request would void the link
    token = services.api_token_create(user=plain_user, name="script").token
    path = requested_link(plain_user, settings)

    page = Client().get(path)
    response = set_password(path)

    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert plain_user.email in page.content.decode()
    assert response.status_code == 302
    assert response.headers["Location"] == "/accounts/login/"
    assert password_works(plain_user, NEW_PASSWORD)
    assert not signed_in(browser)
    assert not UserSession.objects.filter(user=plain_user).exists()
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuthEvent.objects.get(kind=AuthEvent.Kind.PASSWORD_RESET).user == plain_user
    again = Client().get(path)
    assert again.status_code == 400
    assert INVALID_LINK in again.content.decode()
    assert set_password(path, "yet another long passphrase").status_code == 400
    assert password_works(plain_user, NEW_PASSWORD)


def test_reset_does_not_sign_in(plain_user, settings):
    client = Client()
    path = requested_link(plain_user, settings)

    client.post(path, {"new_password": NEW_PASSWORD, "new_password_confirm": NEW_PASSWORD})

    assert SESSION_KEY not in client.session


def test_expired_reset_link_is_refused(plain_user, settings, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    path = requested_link(plain_user, settings)

    time_machine.shift(timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT + 1))
    response = set_password(path)

    assert response.status_code == 400
    assert INVALID_LINK in response.content.decode()
    assert password_works(plain_user, TEST_PASSWORD)


def test_reset_link_still_works_just_before_it_expires(plain_user, settings, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    path = requested_link(plain_user, settings)

    time_machine.shift(timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT - 60))

    assert set_password(path).status_code == 302
    assert password_works(plain_user, NEW_PASSWORD)


@pytest.mark.parametrize("part", ["token", "uid", "garbage uid"])
def test_tampered_reset_link_is_refused(plain_user, settings, part):
    path = requested_link(plain_user, settings)
    uidb64, token = path.rstrip("/").split("/")[-2:]
    other = UserFactory()
    if part == "token":
        token = token[:-1] + ("a" if token[-1] != "a" else "b")
    elif part == "uid":
        from django.utils.encoding import force_bytes
        from django.utils.http import urlsafe_base64_encode

        uidb64 = urlsafe_base64_encode(force_bytes(other.pk))
    else:
        uidb64 = "!!notbase64"

    response = set_password(f"/accounts/password/reset/{uidb64}/{token}/")

    assert response.status_code == 400
    assert INVALID_LINK in response.content.decode()
    assert password_works(plain_user, TEST_PASSWORD)
    assert password_works(other, TEST_PASSWORD)


def test_reset_to_a_weak_password_is_refused_and_the_link_keeps_working(plain_user, settings):
    path = requested_link(plain_user, settings)

    weak = set_password(path, "password")

    assert weak.status_code == 400
    assert "too common" in weak.content.decode() or "too short" in weak.content.decode()
    assert password_works(plain_user, TEST_PASSWORD)
    assert set_password(path).status_code == 302


def test_reset_forgets_the_owners_failed_sign_ins(plain_user, settings):
    for _ in range(settings.A3_LOCKOUT_FAILURES):
        Client().post("/accounts/login/", {"email": plain_user.email, "password": "forgotten"})
    locked = Client().post("/accounts/login/", {"email": plain_user.email, "password": TEST_PASSWORD})
    assert locked.status_code == 429
    path = requested_link(plain_user, settings)

    set_password(path)

    response = Client().post("/accounts/login/", {"email": plain_user.email, "password": NEW_PASSWORD})
    assert response.status_code == 302


def test_reset_link_is_void_once_the_user_signs_in(plain_user, settings):
    path = requested_link(plain_user, settings)

    sign_in(plain_user)  # remembered the password after all: last_login is part of the token

    assert set_password(path).status_code == 400
    assert password_works(plain_user, TEST_PASSWORD)


def test_reset_mail_never_goes_to_an_alias_a_domain_admin_controls(admin_a, domain_a, mailbox_a):
    from tests.factories import AliasFactory, SuperadminFactory

    boss = SuperadminFactory(email="boss@alpha.test")
    AliasFactory(
        domain=domain_a, local_part="boss", address="boss@alpha.test", destinations=["alice@alpha.test"]
    )

    response = Client().post(RESET_URL, {"email": boss.email})

    assert response.status_code in (200, 302)  # the same answer as for any address
    assert not Message.objects.exists()
