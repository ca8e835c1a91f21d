"""How scanning and the quarantine fit the rest of delivery: release passes, partial
holds, forwards, reports, classification, Sent copies, sweeps, erasure and quotas.

A release files each message once, for the released recipients only, and never forwards
it; held mail costs no quota and is removed with its bytes when deleted, expired or
erased; concurrent scans and releases lose no mail, and every recipient is settled."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from apps.alerts.models import Alert
from apps.compliance.models import MessageClassification
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import AliasDestination, Folder, Mailbox, MailItem, Message, MessageRecipient
from apps.mailboxes.services import IncomingMessage
from apps.mailboxes.services import messages as messages_module
from apps.relay.models import QueueItem
from apps.threats.models import Category, DomainPolicy, QuarantineItem, QuarantineRecipient, ScanVerdict
from apps.threats.pipeline import ScanContext, StageOutcome, scan_stage
from apps.threats.services import quarantine as quarantine_services
from apps.threats.services.scan import message_scan
from tests.factories import AliasFactory, MailboxFactory

pytestmark = pytest.mark.django_db

CARD = b"Card 4111 1111 1111 1111 exp 12/30\r\n"


def raw_mail(subject: str = "Hello", body: bytes = b"Just a note.\r\n") -> bytes:
    return (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: team@alpha.test\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + subject.replace(" ", "-").encode() + b"@remote.test>\r\n"
        b"\r\n" + body
    )


VERDICT = {"score": 0.0, "category": ""}


@scan_stage("test-verdict", for_submissions=True)
def verdict_stage(context: ScanContext) -> StageOutcome:
    return StageOutcome(score=VERDICT["score"], category=VERDICT["category"], reasons=["the test verdict"])


@pytest.fixture
def verdict(settings):
    settings.A3_SCAN_STAGES = ["tests.threats.test_quarantine_flow.verdict_stage"]
    VERDICT.update(score=0.0, category="")
    return VERDICT


def accept(*recipients: str, raw: bytes | None = None, **extra) -> Message:
    fields = {
        "queue_id": mail_services.new_queue_id(),
        "mail_from": "sender@remote.test",
        "recipients": recipients,
        "raw": raw or raw_mail(),
        "peer_ip": "192.0.2.7",
        "helo": "mx.remote.test",
        **extra,
    }
    [message] = mail_services.messages_accept(incoming=[IncomingMessage(**fields)])
    return message


def deliver(*recipients: str, raw: bytes | None = None, **extra) -> Message:
    message = accept(*recipients, raw=raw, **extra)
    mail_services.message_deliver(message_id=message.pk)
    message.refresh_from_db()
    return message


def folder_of(message: Message, address: str) -> str | None:
    item = MailItem.objects.filter(message=message, mailbox__address=address).select_related("folder").first()
    return item.folder.special_use if item else None


def recipient_states(message: Message) -> dict[str, str]:
    return dict(MessageRecipient.objects.filter(message=message).values_list("address", "state"))


@pytest.fixture
def strict_alpha(mailbox_a):
    """alpha.test quarantines at 5 points; beta.test keeps the defaults (junk 6, hold 10)."""
    DomainPolicy.objects.create(domain=mailbox_a.domain, junk_score=4, quarantine_score=5, reject_score=50)


# --- Partial holds, aliases, Sent copies and forwards ------------------------------------------


def test_partial_hold_then_release_files_once_forwards_nothing_twice_classifies_once(
    verdict, strict_alpha, mailbox_a, mailbox_b, superadmin
):
    verdict.update(score=5.5)
    message = deliver("alice@alpha.test", "bob@beta.test", raw=raw_mail("card", CARD))
    assert folder_of(message, "bob@beta.test") == Folder.SpecialUse.INBOX
    assert folder_of(message, "alice@alpha.test") is None
    assert message.state == Message.State.QUARANTINED
    assert MessageClassification.objects.filter(message=message).count() == 1
    item = QuarantineItem.objects.get(message=message)
    used_before = Mailbox.objects.get(pk=mailbox_a.pk).used_bytes

    outcome = quarantine_services.quarantine_release(actor=superadmin, item=item)

    assert outcome.delivered
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert MailItem.objects.filter(message=message).count() == 2
    assert MessageClassification.objects.filter(message=message).count() == 1
    assert set(recipient_states(message).values()) == {MessageRecipient.State.DELIVERED}
    # The released copy counts against alice's quota once, when it is filed.
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == used_before + message.size
    assert ScanVerdict.objects.filter(message=message).count() == 1


def test_held_mail_counts_against_no_quota(verdict, mailbox_a):
    verdict.update(score=50)
    deliver("alice@alpha.test")
    assert Mailbox.objects.get(pk=mailbox_a.pk).used_bytes == 0


def test_alias_to_two_mailboxes_holds_each_and_releases_one(verdict, domain_a, mailbox_a, superadmin):
    carol = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    AliasFactory(domain=domain_a, local_part="team", destinations=["alice@alpha.test", "carol@alpha.test"])
    verdict.update(score=50)
    message = deliver("team@alpha.test")
    item = QuarantineItem.objects.get(message=message)
    assert set(item.recipients.values_list("mailbox_id", flat=True)) == {mailbox_a.pk, carol.pk}

    quarantine_services.quarantine_release(actor=superadmin, item=item, mailbox_ids=[carol.pk])

    assert folder_of(message, "carol@alpha.test") == Folder.SpecialUse.INBOX
    assert folder_of(message, "alice@alpha.test") is None
    message.refresh_from_db()
    assert message.state == Message.State.QUARANTINED


def test_sent_copy_is_filed_once_while_the_recipient_is_held(verdict, mailbox_a, mailbox_b, superadmin):
    verdict.update(category=Category.MALWARE)
    message = deliver(
        "bob@beta.test",
        mail_from="alice@alpha.test",
        peer_ip=None,
        submitted_by_id=mailbox_a.pk,
        copies=(("alice@alpha.test", Folder.SpecialUse.SENT),),
    )
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.SENT
    item = QuarantineItem.objects.get(message=message)
    assert list(item.recipients.values_list("mailbox_id", flat=True)) == [mailbox_b.pk]

    quarantine_services.quarantine_release(actor=superadmin, item=item)

    assert folder_of(message, "bob@beta.test") == Folder.SpecialUse.INBOX
    assert MailItem.objects.filter(message=message, mailbox=mailbox_a).count() == 1


def test_partial_hold_withholds_forwards_and_release_never_forwards(
    verdict, strict_alpha, domain_a, mailbox_a, mailbox_b, superadmin
):
    AliasFactory(
        domain=domain_a, local_part="team", destinations=["alice@alpha.test", "friend@elsewhere.test"]
    )
    verdict.update(score=5.5)
    message = deliver("team@alpha.test", "bob@beta.test")
    assert not QueueItem.objects.filter(message=message).exists()
    quarantine_services.quarantine_release(actor=superadmin, item=QuarantineItem.objects.get(message=message))
    # Documented behaviour ("forwarding copies are never made of held mail"): the alias's
    # external destination never gets a released message.
    assert not QueueItem.objects.filter(message=message).exists()


# --- Races, removal and failure reports --------------------------------------------------------


def test_delivery_batch_racing_the_scan_worker_still_prepares_the_message(verdict, mailbox_a):
    """A message the scan worker finishes after a delivery pass leased it is still
    prepared for delivery. The pass leases every waiting message (A3_DELIVERY_BATCH),
    including ones the scan worker is scanning right now; that scan then commits and
    swaps Message.blob_sha256 for the stamped blob. Preparing the leased snapshot must
    not find the content missing and mark the message FAILED (which is final)."""
    message = accept("alice@alpha.test")
    [leased] = messages_module._lease(message.pk)  # the delivery worker's snapshot
    message_scan(message=Message.objects.get(pk=message.pk))  # the scan worker finishes

    context = messages_module._prepare(leased)

    message.refresh_from_db()
    assert message.state != Message.State.FAILED, message.last_error
    assert context is not None


@pytest.fixture
def release_during_delivery(settings):
    """A delivery stage that, once, lets a second administrator release while a release
    pass is between reading the quarantine and committing (two admins clicking at once)."""
    pending: list = []
    settings.A3_DELIVERY_STAGES = [
        *settings.A3_DELIVERY_STAGES[:2],
        "tests.threats.test_quarantine_flow.concurrent_release_stage",
        *settings.A3_DELIVERY_STAGES[2:],
    ]
    _CONCURRENT.clear()
    _CONCURRENT.append(pending)
    yield pending
    _CONCURRENT.clear()


_CONCURRENT: list[list] = []


def concurrent_release_stage(context) -> None:
    pending = _CONCURRENT[0] if _CONCURRENT else []
    while pending:
        actor, item = pending.pop()
        quarantine_services.quarantine_release(actor=actor, item=item)


def test_two_releases_at_once_deliver_both_recipients(
    verdict, mailbox_a, mailbox_b, admin_a, admin_b, release_during_delivery
):
    """The second release lands while the first one's delivery pass runs (which read the
    quarantine before): that pass files its own mailbox and leaves the message received
    and queued again, so the next pass serves the second release."""
    verdict.update(score=50)
    message = deliver("alice@alpha.test", "bob@beta.test")
    item = QuarantineItem.objects.get(message=message)
    release_during_delivery.append((admin_b, item))

    quarantine_services.quarantine_release(actor=admin_a, item=item)

    item.refresh_from_db()
    assert item.state == QuarantineItem.State.RESOLVED
    assert set(item.recipients.values_list("state", flat=True)) == {QuarantineRecipient.State.RELEASED}
    message.refresh_from_db()
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert message.state == Message.State.RECEIVED  # queued again for bob's release
    assert mail_services.message_deliver(message_id=message.pk)  # the queued task
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert folder_of(message, "bob@beta.test") == Folder.SpecialUse.INBOX


@pytest.mark.parametrize("found", [{"category": Category.MALWARE}, {"score": 12.0}])
def test_mail_for_a_forward_only_alias_that_would_be_held_is_withheld_with_an_alert(verdict, domain_a, found):
    """Malware, or spam over the quarantine score, is not forwarded to other providers;
    administrators hear of it."""
    AliasFactory(domain=domain_a, local_part="fwd", destinations=["friend@elsewhere.test"])
    verdict.update(**found)
    message = deliver("fwd@alpha.test")
    assert not QueueItem.objects.filter(message=message).exists()
    assert Alert.objects.filter(kind="threats.forward_withheld", data__queue_id=message.queue_id).exists()


def test_junk_level_spam_is_still_forwarded(verdict, domain_a):
    AliasFactory(domain=domain_a, local_part="fwd", destinations=["friend@elsewhere.test"])
    verdict.update(score=7.0)
    message = deliver("fwd@alpha.test")
    assert QueueItem.objects.filter(message=message).exists()


def test_release_does_not_file_into_a_mailbox_added_to_the_alias_after_the_hold(
    verdict, domain_a, mailbox_a, superadmin
):
    """A release files only for the recipients it releases: a mailbox added to the alias
    after the hold has no quarantine row and gets nothing, although re-expanding the alias
    now yields it, so released malware does not reach an INBOX nobody released it for."""
    alias = AliasFactory(domain=domain_a, local_part="team", destinations=["alice@alpha.test"])
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    verdict.update(category=Category.MALWARE)
    message = deliver("team@alpha.test")
    AliasDestination.objects.create(alias=alias, address="carol@alpha.test")

    quarantine_services.quarantine_release(actor=superadmin, item=QuarantineItem.objects.get(message=message))

    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert folder_of(message, "carol@alpha.test") is None


def test_deleting_a_partly_held_message_settles_every_recipient(
    verdict, strict_alpha, mailbox_a, mailbox_b, superadmin
):
    """Deleting the held part of a partly held message marks the message delivered and
    settles its MessageRecipient rows too (bob's filed copy and alice's discarded one):
    none stays PENDING."""
    verdict.update(score=5.5)
    message = deliver("alice@alpha.test", "bob@beta.test")
    quarantine_services.quarantine_delete(actor=superadmin, item=QuarantineItem.objects.get(message=message))
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert MessageRecipient.State.PENDING not in recipient_states(message).values()


def test_deleted_quarantined_message_and_its_bytes_are_removed(verdict, mailbox_a, superadmin):
    """Deleting a held message nobody else holds removes the message; its bytes go with
    the orphan sweep."""
    verdict.update(score=50)
    message = deliver("alice@alpha.test", raw=raw_mail("secret plans"))
    quarantine_services.quarantine_delete(actor=superadmin, item=QuarantineItem.objects.get(message=message))
    mail_services.blobs_sweep_orphans(grace_seconds=0)
    with pytest.raises(BlobNotFound):
        blob_store().read(message.blob_sha256)


def test_expired_quarantined_message_is_removed(verdict, mailbox_a):
    verdict.update(score=50)
    message = deliver("alice@alpha.test")
    with time_machine.travel(timezone.now() + timedelta(days=60)):
        assert quarantine_services.quarantine_expire() == 1
    mail_services.blobs_sweep_orphans(grace_seconds=0)
    assert not Message.objects.filter(pk=message.pk).exists()


def test_erasure_then_the_hourly_expiry_removes_the_subjects_quarantined_mail(
    verdict, mailbox_a, superadmin, django_capture_on_commit_callbacks
):
    """Erasure removes the mailbox (its quarantine rows go with it); the hourly expiry
    then settles items nobody can decide on any more, removing the message."""
    from apps.compliance.models import ComplianceJob
    from apps.compliance.services import gdpr

    verdict.update(score=50)
    message = deliver("alice@alpha.test", raw=raw_mail("alice private"))
    with django_capture_on_commit_callbacks(execute=False):
        job = gdpr.erasure_request(actor=superadmin, subject="alice@alpha.test")
    gdpr.erasure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == ComplianceJob.State.DONE, job.error
    assert quarantine_services.quarantine_expire() == 1
    mail_services.blobs_sweep_orphans(grace_seconds=0)
    assert not Message.objects.filter(pk=message.pk).exists()
    assert not blob_store().exists(message.blob_sha256)


def test_local_failure_report_reaches_the_sender_when_the_submission_is_held_entirely(
    verdict, domain_a, mailbox_a, mailbox_b, superadmin
):
    """A submission whose deliverable recipients are all held still reports its local
    failures: the sender hears about a recipient that failed in the pass that held the
    rest. A later release pass cannot make up for it (that recipient is FAILED, no longer
    pending), so the report goes with the holding pass."""
    carol = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    verdict.update(category=Category.MALWARE)
    message = accept(
        "bob@beta.test",
        "carol@alpha.test",
        mail_from="alice@alpha.test",
        peer_ip=None,
        submitted_by_id=mailbox_a.pk,
    )
    Mailbox.objects.filter(pk=carol.pk).update(is_active=False)  # disabled after RCPT
    mail_services.message_deliver(message_id=message.pk)
    assert recipient_states(message)["carol@alpha.test"] == MessageRecipient.State.FAILED
    quarantine_services.quarantine_release(actor=superadmin, item=QuarantineItem.objects.get(message=message))

    reports = Message.objects.filter(mail_from="", recipients__address="alice@alpha.test")
    assert reports.exists(), "alice never hears that carol did not get her message"


def test_a_release_does_not_deliver_or_scan_unrelated_waiting_mail_inside_the_request(
    verdict, mailbox_a, mailbox_b, superadmin
):
    """quarantine_release runs in the web request and delivers the released message
    alone: it does not lease other waiting messages (up to A3_DELIVERY_BATCH) and scan
    them in-line (every scan stage, each up to its timeout), which could make a release
    click take minutes and leave those leases to the sweep if the request were killed."""
    verdict.update(score=50)
    held = deliver("alice@alpha.test")
    waiting = accept("bob@beta.test", raw=raw_mail("unrelated"))
    quarantine_services.quarantine_release(actor=superadmin, item=QuarantineItem.objects.get(message=held))
    waiting.refresh_from_db()
    assert waiting.state == Message.State.RECEIVED
    assert not ScanVerdict.objects.filter(message=waiting).exists()


def test_local_failure_report_reaches_the_sender_when_nothing_is_held(
    verdict, domain_a, mailbox_a, mailbox_b
):
    """The control for
    test_local_failure_report_reaches_the_sender_when_the_submission_is_held_entirely:
    the same submission, clean, reports carol's failure."""
    carol = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    message = accept(
        "bob@beta.test",
        "carol@alpha.test",
        mail_from="alice@alpha.test",
        peer_ip=None,
        submitted_by_id=mailbox_a.pk,
    )
    Mailbox.objects.filter(pk=carol.pk).update(is_active=False)
    mail_services.message_deliver(message_id=message.pk)
    assert Message.objects.filter(mail_from="", recipients__address="alice@alpha.test").exists()
