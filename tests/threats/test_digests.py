"""Quarantine digests: the mail lands in the mailbox's INBOX, lists what is held, and its
one-click links work once, only by POST, and not when tampered with or expired."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, MailItem, Message
from apps.threats.models import (
    DigestFrequency,
    DigestLink,
    ListEntry,
    QuarantineItem,
    QuarantinePreference,
    QuarantineRecipient,
    ScanVerdict,
)
from apps.threats.services.digests import digests_send
from tests.factories import MailboxFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.threats.urls_digest")]

LINK = re.compile(r"^\s+(Release|Delete|Allow sender):\s+(\S+)$", re.MULTILINE)


def _held(mailbox, *, category: str = "", subject: str = "Cheap pills", sender: str = "spammer@remote.test"):
    """A message quarantined for `mailbox` by the real delivery path: accepted, given the
    verdict the scanner would have stored, then delivered (the verdict stage holds it)."""
    raw = (
        f"From: <{sender}>\r\nTo: <{mailbox.address}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@remote.test>\r\n\r\nBuy now.\r\n"
    ).encode()
    (message,) = mail_services.messages_accept(
        incoming=[
            mail_services.IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from=sender,
                recipients=(mailbox.address,),
                raw=raw,
                peer_ip="203.0.113.50",
            )
        ]
    )
    ScanVerdict.objects.create(
        message=message,
        score=50.0,
        category=category,
        stages=[
            {
                "stage": "content",
                "score": 50.0,
                "reasons": ["test finding"],
                "status": "ok",
                "category": category,
            }
        ],
    )
    mail_services.message_deliver(message_id=message.pk)
    return QuarantineItem.objects.get(message=message)


def _digest_messages(mailbox) -> list[Message]:
    """The digests sent to `mailbox` (null sender, no trace of a client), delivered."""
    digests = list(Message.objects.filter(mail_from="", recipients__address=mailbox.address).order_by("id"))
    for digest in digests:
        mail_services.message_deliver(message_id=digest.pk)
        digest.refresh_from_db()  # the scanner stamps its headers into a new blob
    return digests


def _parts(message: Message) -> tuple[str, str]:
    parsed = email.message_from_bytes(blob_store().read(message.blob_sha256), policy=email.policy.default)
    text = parsed.get_body(preferencelist=("plain",)).get_content()
    html = parsed.get_body(preferencelist=("html",)).get_content()
    return text.replace("\r\n", "\n"), html


def _links(text: str) -> list[tuple[str, str]]:
    return [(action, urlsplit(url).path) for action, url in LINK.findall(text)]


def _post_with_csrf(client: Client, path: str):
    page = client.get(path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    return client.post(path, {"csrfmiddlewaretoken": token})


def test_digest_lands_in_the_inbox_listing_the_held_item(mailbox_a, settings):
    item = _held(mailbox_a)

    assert digests_send() == 1

    (digest,) = _digest_messages(mailbox_a)
    filed = MailItem.objects.get(mailbox=mailbox_a, message=digest)
    assert filed.folder.special_use == Folder.SpecialUse.INBOX
    text, html = _parts(digest)
    assert "Cheap pills" in text and "spammer@remote.test" in text and "Spam" in text
    assert "Cheap pills" in html
    actions = [action for action, _ in _links(text)]
    assert actions == ["Release", "Delete", "Allow sender"]
    # Absolute links on the public URL, and nothing fetched from elsewhere.
    assert f"{settings.A3_PUBLIC_URL}/quarantine/digest/" in text
    assert "<img" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert all(url.startswith(settings.A3_PUBLIC_URL) for url in re.findall(r'href="([^"]+)"', html))
    row = QuarantineRecipient.objects.get(item=item, mailbox=mailbox_a)
    assert row.digested_at is not None
    assert QuarantinePreference.objects.get(mailbox=mailbox_a).last_digest_at is not None
    # Only a hash of each link's token is stored.
    token = _links(text)[0][1].split("/")[3].split(":")[0]
    assert DigestLink.objects.filter(token_hash=hashlib.sha256(token.encode()).hexdigest()).exists()
    assert not DigestLink.objects.filter(token_hash=token).exists()


def test_release_link_works_once_and_only_by_post(mailbox_a):
    item = _held(mailbox_a)
    digests_send()
    (digest,) = _digest_messages(mailbox_a)
    release = dict(_links(_parts(digest)[0]))["Release"]
    client = Client(enforce_csrf_checks=True)

    page = client.get(release)
    assert page.status_code == 200
    assert "Cheap pills" in page.content.decode() and "Release this message" in page.content.decode()
    assert (
        QuarantineRecipient.objects.get(item=item).state == QuarantineRecipient.State.HELD
    )  # GET changes nothing
    assert client.post(release).status_code == 403  # no CSRF token: refused

    done = _post_with_csrf(client, release)

    assert done.status_code == 200 and "released to the inbox" in done.content.decode()
    inbox = MailItem.objects.filter(mailbox=mailbox_a, message=item.message)
    assert inbox.count() == 1 and inbox.get().folder.special_use == Folder.SpecialUse.INBOX
    row = QuarantineRecipient.objects.get(item=item)
    assert row.state == QuarantineRecipient.State.RELEASED and row.decided_by == mailbox_a.owner

    again = Client().post(release)
    assert again.status_code == 410
    assert "already" in again.content.decode()
    assert MailItem.objects.filter(mailbox=mailbox_a, message=item.message).count() == 1


def test_delete_and_allow_links_act_as_the_mailbox_owner(mailbox_a):
    item = _held(mailbox_a)
    digests_send()
    (digest,) = _digest_messages(mailbox_a)
    links = dict(_links(_parts(digest)[0]))

    assert Client().post(links["Allow sender"]).status_code == 200
    entry = ListEntry.objects.get(mailbox=mailbox_a, kind=ListEntry.Kind.ALLOW)
    assert entry.value == "spammer@remote.test" and entry.created_by == mailbox_a.owner

    assert Client().post(links["Delete"]).status_code == 200
    # Nobody else held it: the message is gone, with its quarantine rows.
    assert not QuarantineRecipient.objects.filter(item_id=item.pk).exists()
    assert not MailItem.objects.filter(message_id=item.message_id).exists()
    # The message is decided: its other link no longer works.
    assert Client().get(links["Release"]).status_code == 410


def test_tampered_token_is_refused(mailbox_a):
    item = _held(mailbox_a)
    digests_send()
    (digest,) = _digest_messages(mailbox_a)
    release = dict(_links(_parts(digest)[0]))["Release"]
    token = release.rstrip("/").rsplit("/", 1)[1]
    raw, stamp, signature = token.split(":")
    forged = [
        release.replace(token, f"{raw[:-1]}{'A' if raw[-1] != 'A' else 'B'}:{stamp}:{signature}"),
        release.replace(token, f"{raw}:{stamp}:{signature[:-2]}xx"),
        release.replace(token, "not-a-token"),
    ]

    for path in forged:
        assert Client().get(path).status_code == 400
        response = Client().post(path)
        assert response.status_code == 400 and "not valid" in response.content.decode()
    assert QuarantineRecipient.objects.get(item=item).state == QuarantineRecipient.State.HELD
    assert DigestLink.objects.filter(used_at__isnull=False).count() == 0


def test_expired_link_is_refused(mailbox_a, settings):
    item = _held(mailbox_a)
    digests_send()
    (digest,) = _digest_messages(mailbox_a)
    release = dict(_links(_parts(digest)[0]))["Release"]

    later = timezone.now() + timedelta(hours=settings.A3_DIGEST_LINK_HOURS, minutes=1)
    with time_machine.travel(later, tick=False):
        assert Client().get(release).status_code == 410
        response = Client().post(release)

    assert response.status_code == 410 and "expired" in response.content.decode()
    assert QuarantineRecipient.objects.get(item=item).state == QuarantineRecipient.State.HELD
    assert not MailItem.objects.filter(message=item.message).exists()


def test_malware_gets_no_release_link(mailbox_a):
    malware = _held(mailbox_a, category="malware", subject="Invoice attached")
    _held(mailbox_a, subject="Cheap pills")
    digests_send()
    (digest,) = _digest_messages(mailbox_a)
    text, html = _parts(digest)

    links = _links(text)
    assert [action for action, _ in links].count("Release") == 1  # only the spam item
    malware_row = QuarantineRecipient.objects.get(item=malware)
    assert set(DigestLink.objects.filter(recipient=malware_row).values_list("action", flat=True)) == {
        "delete",
        "allow",
    }
    block = text.split("Invoice attached", 1)[1].split("Cheap pills", 1)[0]
    assert "Release:" not in block and "only an administrator can release" in block
    assert "Administrator release only" in html


def test_frequency_is_respected(mailbox_a):
    start = timezone.now()
    _held(mailbox_a, subject="First")
    assert digests_send(now=start) == 1
    _held(mailbox_a, subject="Second")

    assert digests_send(now=start + timedelta(hours=23)) == 0
    assert len(_digest_messages(mailbox_a)) == 1

    assert digests_send(now=start + timedelta(hours=24)) == 1
    _first, second = _digest_messages(mailbox_a)
    assert "Second" in _parts(second)[0] and "First" not in _parts(second)[0]
    assert digests_send(now=start + timedelta(hours=49)) == 0  # nothing new held


def test_weekly_and_never_preferences(mailbox_a, mailbox_b):
    start = timezone.now()
    QuarantinePreference.objects.create(
        mailbox=mailbox_a, digest=DigestFrequency.WEEKLY, last_digest_at=start
    )
    QuarantinePreference.objects.create(mailbox=mailbox_b, digest=DigestFrequency.NEVER)
    _held(mailbox_a)
    _held(mailbox_b)

    assert digests_send(now=start + timedelta(days=6)) == 0
    assert digests_send(now=start + timedelta(days=7)) == 1
    assert len(_digest_messages(mailbox_a)) == 1 and _digest_messages(mailbox_b) == []


def test_digest_action_url_reverses():
    assert reverse("threats:digest-action", kwargs={"token": "a:b:c"}) == "/quarantine/digest/a:b:c/"


def test_digest_reaches_an_internationalised_address(domain_a):
    mailbox = MailboxFactory(domain=domain_a, local_part="josé", address="josé@alpha.test")
    _held(mailbox, subject="Günstige Uhren")

    assert digests_send() == 1

    (digest,) = _digest_messages(mailbox)
    assert MailItem.objects.filter(mailbox=mailbox, message=digest).exists()
    assert "Günstige Uhren" in _parts(digest)[0]
