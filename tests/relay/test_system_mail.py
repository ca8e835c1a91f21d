"""Mail the platform sends itself: the message we build, and its routing into a local
mailbox or the outbound queue."""

from __future__ import annotations

import logging
from email import policy
from email.parser import BytesParser

import pytest

from apps.core.addresses import AddressError
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import MailItem, Message, MessageRecipient
from apps.relay.models import QueueItem, QueueRecipient
from apps.relay.services import system_mail_build, system_mail_send

pytestmark = pytest.mark.django_db


def parsed(raw: bytes):
    return BytesParser(policy=policy.default).parsebytes(raw)


def test_system_mail_build_is_a_complete_plain_text_message(settings):
    settings.A3_HOSTNAME = "mx.example.test"

    raw = system_mail_build(to="Someone@Example.TEST", subject="Hello", text="Line one\nLine two\n")

    message = parsed(raw)
    assert message["From"] == "A3Mailer <no-reply@mx.example.test>"
    assert message["To"] == "someone@example.test"
    assert message["Subject"] == "Hello"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@mx.example.test>")
    assert message["Date"].datetime is not None
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content().splitlines() == ["Line one", "Line two"]
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only


def test_system_mail_build_encodes_non_ascii_subject_and_body():
    raw = system_mail_build(to="a@example.test", subject="Réinitialiser ✓", text="Grüße\n")

    assert raw.isascii()  # encoded words and a transfer encoding: fine for any server
    message = parsed(raw)
    assert message["Subject"] == "Réinitialiser ✓"
    assert message.get_content().strip() == "Grüße"


def test_system_mail_build_refuses_header_injection():
    with pytest.raises(ValueError):
        system_mail_build(to="a@example.test", subject="Hi\r\nBcc: victim@example.test", text="x")


def test_system_mail_build_refuses_an_invalid_address():
    with pytest.raises(AddressError):
        system_mail_build(to="not an address", subject="Hi", text="x")


def test_system_mail_send_to_a_local_mailbox_is_filed_in_its_inbox(mailbox_a):
    system_mail_send(to="Alice@alpha.test", subject="For you", text="Hello Alice\n")

    message = Message.objects.get()
    assert message.mail_from == ""  # null reverse-path
    assert list(MessageRecipient.objects.filter(message=message).values_list("address", flat=True)) == [
        "alice@alpha.test"
    ]
    assert not QueueItem.objects.exists()
    assert mail_services.message_deliver(message_id=message.pk)
    item = MailItem.objects.get(message=message)
    assert (item.mailbox_id, item.folder.special_use) == (mailbox_a.pk, "inbox")
    message.refresh_from_db()  # the scanned copy, with its headers
    stored = parsed(blob_store().read(message.blob_sha256))
    assert stored["Subject"] == "For you"
    assert stored.get_content().strip() == "Hello Alice"


def test_system_mail_send_to_an_external_address_is_queued_with_a_null_sender():
    system_mail_send(to="dave@remote.test", subject="For you", text="Hello Dave\n")

    item = QueueItem.objects.get()
    assert (item.sender, item.report_to, item.domain, item.kind) == ("", "", "remote.test", "bounce")
    assert list(QueueRecipient.objects.filter(item=item).values_list("address", flat=True)) == [
        "dave@remote.test"
    ]
    assert item.message.mail_from == ""
    assert not MessageRecipient.objects.filter(message=item.message).exists()
    assert parsed(blob_store().read(item.message.blob_sha256))["To"] == "dave@remote.test"


def test_system_mail_send_wakes_delivery_only_on_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        system_mail_send(to="dave@remote.test", subject="For you", text="Hello\n")
        assert QueueItem.objects.count() == 1

    assert callbacks  # the delivery task is enqueued by the commit, not before


def test_system_mail_send_skips_a_local_address_that_takes_no_mail(mailbox_a, caplog):
    with caplog.at_level(logging.WARNING, logger="apps.relay.services.system_mail"):
        system_mail_send(to="nobody@alpha.test", subject="For you", text="Hello\n")

    assert not Message.objects.exists()
    assert not QueueItem.objects.exists()
    assert "nobody@alpha.test" in caplog.text
