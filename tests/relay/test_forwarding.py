"""Aliases forwarding to external addresses: queued with an SRS sender so SPF passes at
the destination, and bounces to the SRS address routed back to the original sender."""

from __future__ import annotations

import pytest
from django.db import transaction

from apps.mailboxes import services as mail_services
from apps.mailboxes.models import MailItem
from apps.relay import services
from apps.relay.models import QueueItem
from tests.factories import AliasFactory
from tests.support.remote_mta import RemoteMta

pytestmark = pytest.mark.django_db(transaction=True)

RAW = (
    b"From: Sender <sender@origin.test>\r\nTo: fwd@alpha.test\r\nSubject: Forward me\r\n"
    b"Message-ID: <f1@origin.test>\r\n\r\nHello.\r\n"
)


def receive(raw: bytes = RAW, *, sender: str = "sender@origin.test", to: str = "fwd@alpha.test"):
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(), mail_from=sender, recipients=(to,), raw=raw
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])
    mail_services.message_deliver(message_id=message.pk)
    return message


@pytest.fixture
def forwarding_alias(domain_a, mailbox_a):
    return AliasFactory(
        domain=domain_a,
        local_part="fwd",
        address="fwd@alpha.test",
        destinations=["alice@alpha.test", "ext@remote.test"],
    )


def test_alias_delivers_locally_and_queues_external_copy_with_srs(forwarding_alias, mailbox_a, settings):
    message = receive()
    assert MailItem.objects.filter(mailbox=mailbox_a, message=message).exists()
    (item,) = QueueItem.objects.filter(message=message)
    assert item.kind == QueueItem.Kind.FORWARD and item.domain == "remote.test"
    assert item.sender.startswith("SRS0=") and item.sender.endswith("@" + settings.A3_SRS_DOMAIN)
    assert item.report_to == "sender@origin.test"
    (recipient,) = item.recipients.all()
    assert (recipient.address, recipient.original_address) == ("ext@remote.test", "fwd@alpha.test")
    assert services.srs_reverse(item.sender) == "sender@origin.test"


def test_forward_reaches_remote_with_srs_envelope_sender(forwarding_alias, settings):
    mta = RemoteMta().start()
    try:
        services.transport_rule_create(domain="remote.test", host=mta.host, port=mta.port)
        message = receive()
        item = QueueItem.objects.get(message=message)
        services.queue_deliver(item_id=item.pk)
        (got,) = mta.received
        assert got.mail_from == item.sender and got.recipients == ["ext@remote.test"]
        assert got.content.endswith(RAW)
    finally:
        mta.stop()


def test_null_sender_is_forwarded_with_null_sender(forwarding_alias):
    message = receive(sender="")
    assert QueueItem.objects.get(message=message).sender == ""


def test_inbound_mail_claiming_a_local_sender_is_rewritten(forwarding_alias, mailbox_a):
    message = receive(sender="alice@alpha.test")
    assert QueueItem.objects.get(message=message).sender.startswith("SRS0=")


def test_submitted_mail_to_a_forwarding_alias_keeps_its_sender(forwarding_alias, mailbox_a):
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from="alice@alpha.test",
        recipients=("fwd@alpha.test",),
        raw=RAW,
        submitted_by_id=mailbox_a.pk,
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])
    mail_services.message_deliver(message_id=message.pk)
    assert QueueItem.objects.get(message=message).sender == "alice@alpha.test"


def test_forwarded_mail_is_never_signed_with_our_keys(forwarding_alias, domain_a, superadmin):
    from apps.relay.services.queue import _job

    services.dkim_key_create(actor=superadmin, domain=domain_a)
    spoof = RAW.replace(b"From: Sender <sender@origin.test>", b"From: CEO <ceo@alpha.test>")
    message = receive(spoof, sender="ceo@alpha.test")
    item = QueueItem.objects.get(message=message)
    job = _job(item, spoof, ["ext@remote.test"])
    assert b"DKIM-Signature" not in job.payload


def test_tampered_srs_address_is_refused(db, settings):
    address = services.srs_forward("sender@origin.test")
    assert services.srs_is_address(address)
    forged = address.replace("SRS0=", "SRS0=x", 1)
    with pytest.raises(services.SrsError):
        services.srs_reverse(forged)
    assert not services.srs_is_address("plain@" + settings.A3_SRS_DOMAIN)


def test_bounce_to_srs_address_goes_back_to_original_sender(db, settings):
    srs = services.srs_forward("sender@origin.test")
    dsn = (
        b"From: MAILER-DAEMON@remote.test\r\nTo: "
        + srs.encode()
        + b"\r\nSubject: Undelivered\r\n\r\nsorry\r\n"
    )
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(), mail_from="", recipients=(), raw=dsn
    )
    with transaction.atomic():
        message = services.srs_bounce_accept(incoming=incoming, srs_recipients={srs: "sender@origin.test"})
    (item,) = QueueItem.objects.filter(message=message)
    assert item.kind == QueueItem.Kind.BOUNCE and item.sender == "" and item.report_to == ""
    assert list(item.recipients.values_list("address", "original_address")) == [("sender@origin.test", srs)]


def test_submitted_mail_that_cannot_be_delivered_locally_is_reported(domain_a, mailbox_a):
    from apps.mailboxes.blobstore import blob_store
    from apps.mailboxes.models import Mailbox, Message
    from tests.factories import MailboxFactory

    carol = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from="alice@alpha.test",
        recipients=("carol@alpha.test",),
        raw=RAW,
        submitted_by_id=mailbox_a.pk,
        copies=(("alice@alpha.test", "sent"),),
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])
    Mailbox.objects.filter(pk=carol.pk).update(is_active=False)  # disabled after RCPT
    mail_services.message_deliver(message_id=message.pk)
    (report,) = Message.objects.filter(mail_from="", recipients__address="alice@alpha.test")
    raw = blob_store().read(report.blob_sha256)
    assert b"Final-Recipient: rfc822; carol@alpha.test" in raw and b"Status: 5.2.1" in raw
    assert b"alice@alpha.test" not in raw.split(b"Final-Recipient")[1].split(b"\r\n")[0]
