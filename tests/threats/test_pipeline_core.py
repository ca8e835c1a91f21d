"""The scanning pipeline's core: stage bookkeeping, header stamping, verdict decisions
per mailbox, and the quarantine's life (hold, partial hold, release, delete, expiry)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from apps.alerts.models import Alert
from apps.mailboxes import services as mail_services
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, MailItem, Message
from apps.mailboxes.services import IncomingMessage
from apps.threats.models import (
    Action,
    Category,
    DomainPolicy,
    ListEntry,
    QuarantineItem,
    QuarantineRecipient,
    ScannerFailureMode,
    ScanVerdict,
)
from apps.threats.pipeline import (
    ScanContext,
    StageOutcome,
    StageTimeout,
    Unscannable,
    pipeline_run,
    scan_stage,
)
from apps.threats.services import quarantine as quarantine_services
from apps.threats.services.scan import message_scan, message_scan_then_deliver, stamp_headers
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

RAW = (
    b"From: Sender <sender@remote.test>\r\n"
    b"To: alice@alpha.test\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <m1@remote.test>\r\n"
    b"\r\n"
    b"Just a note.\r\n"
)

# Test stages: the pipeline is real; only the stage list is chosen by each test.
SCORE = {"value": 0.0, "category": ""}


@scan_stage("fixed")
def fixed_stage(context: ScanContext) -> StageOutcome:
    return StageOutcome(score=SCORE["value"], category=SCORE["category"], reasons=["fixed finding"])


@scan_stage("broken")
def broken_stage(context: ScanContext) -> StageOutcome:
    raise RuntimeError("engine exploded")


@scan_stage("slow")
def slow_stage(context: ScanContext) -> StageOutcome:
    context.deadline = 1.0  # long past
    context.check_time()
    return StageOutcome()


@scan_stage("too_big")
def too_big_stage(context: ScanContext) -> StageOutcome:
    raise Unscannable("archive too large")


@scan_stage("malware_any", for_submissions=True)
def submission_stage(context: ScanContext) -> StageOutcome:
    return StageOutcome(reasons=["checked"])


@pytest.fixture
def stages(settings):
    settings.A3_SCAN_STAGES = ["tests.threats.test_pipeline_core.fixed_stage"]
    SCORE.update(value=0.0, category="")
    return SCORE


def accept(raw: bytes = RAW, *recipients: str, mail_from: str = "sender@remote.test") -> Message:
    [message] = mail_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from=mail_from,
                recipients=recipients or ("alice@alpha.test",),
                raw=raw,
                peer_ip="192.0.2.7",
                helo="mx.remote.test",
            )
        ]
    )
    return message


def deliver(*recipients: str, raw: bytes = RAW, mail_from: str = "sender@remote.test") -> Message:
    message = accept(raw, *recipients, mail_from=mail_from)
    mail_services.message_deliver(message_id=message.pk)
    message.refresh_from_db()
    return message


def folder_of(message: Message, address: str) -> str | None:
    item = MailItem.objects.filter(message=message, mailbox__address=address).select_related("folder").first()
    return item.folder.special_use if item else None


# --- Pipeline bookkeeping --------------------------------------------------------------------


def test_pipeline_records_each_stage_and_totals_scores():
    context = ScanContext(raw=RAW)
    SCORE.update(value=2.5, category="")
    result = pipeline_run(context, stages=[fixed_stage, fixed_stage])
    assert result.score == 5.0
    assert [s["stage"] for s in result.stages] == ["fixed", "fixed"]
    assert all(s["ms"] >= 0 and s["status"] == "ok" for s in result.stages)
    assert result.reasons == ["fixed finding", "fixed finding"]


def test_a_failing_stage_is_recorded_never_raised():
    result = pipeline_run(ScanContext(raw=RAW), stages=[broken_stage])
    assert result.failed_stages == ["broken"]
    assert result.stages[0]["status"] == "error"
    assert "failed" in result.stages[0]["reasons"][0]


def test_a_stage_past_its_time_limit_times_out():
    result = pipeline_run(ScanContext(raw=RAW), stages=[slow_stage])
    assert result.failed_stages == ["slow"]
    assert result.stages[0]["status"] == "timeout"


def test_unscannable_input_is_a_category_with_a_reason():
    result = pipeline_run(ScanContext(raw=RAW), stages=[too_big_stage])
    assert result.category == Category.UNSCANNABLE
    assert result.reasons == ["Unscannable: archive too large"]


def test_submitted_mail_runs_only_the_stages_meant_for_it():
    result = pipeline_run(ScanContext(raw=RAW, submitted=True), stages=[fixed_stage, submission_stage])
    assert [s["stage"] for s in result.stages] == ["malware_any"]


def test_bounded_parts_walk_refuses_deep_nesting(settings):
    settings.A3_SCAN_MAX_DEPTH = 3
    body = b"text"
    for level in range(6):
        body = (
            f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'.encode()
            + body
            + f"\r\n--b{level}--\r\n".encode()
        )
    with pytest.raises(Unscannable):
        _ = ScanContext(raw=b"From: a@b.test\r\n" + body).parts


def test_check_time_without_deadline_never_raises():
    ScanContext(raw=RAW).check_time()
    context = ScanContext(raw=RAW, deadline=1.0)
    with pytest.raises(StageTimeout):
        context.check_time()


# --- Headers ---------------------------------------------------------------------------------


def test_stamp_headers_goes_on_top_and_keeps_the_rest_byte_for_byte(settings):
    settings.A3_HOSTNAME = "mx.a3.test"
    raw = b"Return-Path: <s@remote.test>\r\nReceived: from x\r\n\tby y\r\n" + RAW
    stamped = stamp_headers(
        raw, [("Authentication-Results", "mx.a3.test; spf=pass smtp.mailfrom=remote.test")]
    )
    assert stamped.startswith(b"Return-Path: <s@remote.test>\r\nAuthentication-Results: mx.a3.test; spf=pass")
    assert stamped.endswith(b"Received: from x\r\n\tby y\r\n" + RAW)


def test_forged_verdict_headers_are_removed_others_kept(settings):
    settings.A3_HOSTNAME = "mx.a3.test"
    forged = (
        b"Authentication-Results: mx.a3.test; dkim=pass\r\n\theader.d=bank.test\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
        b"X-Spam-Flag: NO\r\n"
        b"X-Spam-Status: No, score=-100\r\n"
    )
    stamped = stamp_headers(forged + RAW, [("X-Spam-Flag", "YES")])
    assert b"dkim=pass" not in stamped and b"header.d=bank.test" not in stamped
    assert b"score=-100" not in stamped and stamped.count(b"X-Spam-Flag") == 1
    assert b"Authentication-Results: other.example; spf=pass" in stamped


# --- Verdicts and routing --------------------------------------------------------------------


def test_clean_mail_is_delivered_with_a_stored_verdict_and_headers(stages, mailbox_a):
    message = deliver()
    assert message.state == Message.State.DELIVERED
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    verdict = ScanVerdict.objects.get(message=message)
    assert verdict.score == 0 and verdict.actions == {str(mailbox_a.pk): Action.DELIVER}
    stored = blob_store().read(message.blob_sha256)
    assert stored.startswith(b"X-Spam-Flag: NO\r\nX-Spam-Score: 0.0\r\n") and stored.endswith(RAW)


def test_score_over_junk_threshold_files_to_junk_and_flags(stages, mailbox_a):
    stages.update(value=7.0)
    message = deliver()
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.JUNK
    assert b"X-Spam-Flag: YES" in blob_store().read(message.blob_sha256)


def test_score_over_quarantine_threshold_holds_the_message_and_alerts(stages, mailbox_a):
    stages.update(value=12.0)
    message = deliver()
    assert message.state == Message.State.QUARANTINED
    assert not MailItem.objects.filter(message=message).exists()
    item = QuarantineItem.objects.get(message=message)
    assert item.category == Category.SPAM and "fixed finding" in item.reason
    assert list(item.recipients.values_list("mailbox_id", "state")) == [(mailbox_a.pk, "held")]
    assert item.expires_at > timezone.now() + timedelta(days=29)
    alert = Alert.objects.get(kind="threats.quarantined.spam")
    assert alert.domain_id == mailbox_a.domain_id and alert.data["quarantine_id"] == item.pk


def test_malware_is_held_even_for_allow_listed_senders(stages, mailbox_a):
    ListEntry.objects.create(kind="allow", match="sender", value="sender@remote.test", mailbox=mailbox_a)
    stages.update(value=0, category=Category.MALWARE)
    message = deliver()
    assert QuarantineItem.objects.get(message=message).category == Category.MALWARE
    assert Alert.objects.get(kind="threats.quarantined.malware").level == "critical"


def test_allow_list_beats_a_spam_score_block_list_holds(stages, mailbox_a, mailbox_b):
    ListEntry.objects.create(kind="allow", match="domain", value="remote.test", domain=mailbox_a.domain)
    ListEntry.objects.create(kind="block", match="ip", value="192.0.2.0/24")
    stages.update(value=50.0)
    message = deliver("alice@alpha.test", "bob@beta.test")
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    item = QuarantineItem.objects.get(message=message)
    assert list(item.recipients.values_list("mailbox_id", flat=True)) == [mailbox_b.pk]
    assert message.state == Message.State.QUARANTINED  # still held for bob


def test_per_domain_thresholds_decide_per_mailbox(stages, mailbox_a, mailbox_b):
    DomainPolicy.objects.create(domain=mailbox_b.domain, junk_score=20, quarantine_score=30, reject_score=40)
    stages.update(value=12.0)
    message = deliver("alice@alpha.test", "bob@beta.test")
    assert folder_of(message, "bob@beta.test") == Folder.SpecialUse.INBOX
    assert folder_of(message, "alice@alpha.test") is None
    assert QuarantineItem.objects.get(message=message).recipients.get().mailbox_id == mailbox_a.pk


def test_unscannable_follows_the_domain_policy(stages, mailbox_a):
    DomainPolicy.objects.create(domain=mailbox_a.domain, unscannable_action=Action.JUNK)
    stages.update(value=0, category=Category.UNSCANNABLE)
    message = deliver()
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.JUNK


def test_scanner_failure_fails_open_or_closed_and_alerts(settings, mailbox_a, mailbox_b):
    settings.A3_SCAN_STAGES = ["tests.threats.test_pipeline_core.broken_stage"]
    DomainPolicy.objects.create(domain=mailbox_b.domain, scanner_failure=ScannerFailureMode.FAIL_CLOSED)
    message = deliver("alice@alpha.test", "bob@beta.test")
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX  # open by default
    item = QuarantineItem.objects.get(message=message)
    assert item.category == Category.UNSCANNABLE and "broken" in item.reason
    assert Alert.objects.filter(kind="threats.scanner_failed", data__stage="broken").count() == 1


def test_scan_task_scans_then_hands_on_to_delivery(stages, mailbox_a, django_capture_on_commit_callbacks):
    stages.update(value=1.0)
    message = accept()
    message_scan_then_deliver(message_id=message.pk)
    assert ScanVerdict.objects.filter(message=message, score=1.0).exists()
    # Delivery finds the verdict and does not scan again.
    stages.update(value=99.0)
    assert mail_services.message_deliver(message_id=message.pk)
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert ScanVerdict.objects.get(message=message).score == 1.0


def test_scanning_twice_keeps_one_verdict(stages, mailbox_a):
    message = accept()
    first, _ = message_scan(message=message)
    second, raw = message_scan(message=message)
    assert first.pk == second.pk and raw.endswith(RAW)


# --- Quarantine actions ----------------------------------------------------------------------


@pytest.fixture
def held(stages, mailbox_a, mailbox_b):
    """A spam message held for alice and bob (two domains)."""
    stages.update(value=12.0)
    message = deliver("alice@alpha.test", "bob@beta.test")
    return QuarantineItem.objects.get(message=message)


def test_release_by_a_domain_admin_files_only_their_recipients(held, admin_a):
    outcome = quarantine_services.quarantine_release(actor=admin_a, item=held)
    assert outcome.changed == 1 and outcome.delivered
    message = held.message
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert folder_of(message, "bob@beta.test") is None
    message.refresh_from_db()
    assert message.state == Message.State.QUARANTINED  # bob's copy still waits
    held.refresh_from_db()
    assert held.state == QuarantineItem.State.HELD


def test_release_of_everyone_resolves_the_item(held, superadmin):
    quarantine_services.quarantine_release(actor=superadmin, item=held, allow_sender=True)
    message = held.message
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert folder_of(message, "bob@beta.test") == Folder.SpecialUse.INBOX
    held.refresh_from_db()
    assert held.state == QuarantineItem.State.RESOLVED
    assert ListEntry.objects.filter(kind="allow", value="sender@remote.test").count() == 2
    # The same message again is not filed twice.
    assert MailItem.objects.filter(message=message).count() == 2


def test_user_releases_their_own_spam_but_not_anyone_elses(held, user_a):
    quarantine_services.quarantine_release(actor=user_a, item=held)
    assert folder_of(held.message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert folder_of(held.message, "bob@beta.test") is None


def test_user_cannot_release_malware_only_request_it(stages, mailbox_a, user_a, admin_a):
    from apps.core.exceptions import PermissionDeniedError

    stages.update(category=Category.MALWARE)
    item = QuarantineItem.objects.get(message=deliver())
    with pytest.raises(PermissionDeniedError):
        quarantine_services.quarantine_release(actor=user_a, item=item)
    quarantine_services.release_request(actor=user_a, item=item, note="it is my invoice")
    row = QuarantineRecipient.objects.get(item=item)
    assert row.state == QuarantineRecipient.State.RELEASE_REQUESTED and row.request_note == "it is my invoice"
    assert Alert.objects.filter(kind="threats.release_requested").exists()
    quarantine_services.release_request_decide(actor=admin_a, item=item, approve=False)
    row.refresh_from_db()
    assert row.state == QuarantineRecipient.State.HELD
    quarantine_services.release_request(actor=user_a, item=item)
    quarantine_services.release_request_decide(actor=admin_a, item=item, approve=True)
    assert folder_of(item.message, "alice@alpha.test") == Folder.SpecialUse.INBOX


def test_delete_discards_the_message_nobody_holds(held, superadmin):
    from apps.compliance.models import AuditEvent

    quarantine_services.quarantine_delete(actor=superadmin, item=held)
    assert not Message.objects.filter(pk=held.message_id).exists()
    assert not QuarantineItem.objects.filter(pk=held.pk).exists()
    assert AuditEvent.objects.filter(action="quarantine.delete").exists()  # the record stays


def test_delete_for_one_recipient_after_a_release_keeps_the_message(held, superadmin, admin_a, admin_b):
    quarantine_services.quarantine_release(actor=admin_a, item=held)
    quarantine_services.quarantine_delete(actor=admin_b, item=held)
    held.refresh_from_db()
    assert held.state == QuarantineItem.State.RESOLVED
    message = held.message
    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert folder_of(message, "alice@alpha.test") == Folder.SpecialUse.INBOX
    assert set(message.recipients.values_list("state", flat=True)) == {"delivered"}


def test_an_unrelated_user_decides_nothing(held, domain_a):
    from apps.core.exceptions import ApplicationError

    stranger = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test").owner
    with pytest.raises(ApplicationError):
        quarantine_services.quarantine_delete(actor=stranger, item=held)


def test_expiry_after_the_domains_days(held):
    assert quarantine_services.quarantine_expire() == 0
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        assert quarantine_services.quarantine_expire() == 1
    assert not Message.objects.filter(pk=held.message_id).exists()


def test_expiry_keeps_what_a_legal_hold_covers(held, superadmin, mailbox_a):
    from apps.compliance.services import holds

    holds.legal_hold_create(actor=superadmin, scope="mailbox", mailbox=mailbox_a, reason="litigation")
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        assert quarantine_services.quarantine_expire() == 1
    held.refresh_from_db()
    assert held.state == QuarantineItem.State.EXPIRED
    assert Message.objects.filter(pk=held.message_id).exists()


def test_allow_listed_sender_that_fails_spf_or_dmarc_is_not_trusted(stages, mailbox_a):
    from apps.threats.policy import server_policy
    from apps.threats.services.verdicts import decide

    ListEntry.objects.create(kind="allow", match="domain", value="bank.test", mailbox=mailbox_a)
    verdict = ScanVerdict(score=12.0, auth_results="mx.a3.test; spf=fail smtp.mailfrom=bank.test; dmarc=fail")
    forged = decide(
        verdict=verdict,
        policy=server_policy(),
        sender="ceo@bank.test",
        peer_ip="192.0.2.9",
        domain_id=mailbox_a.domain_id,
        mailbox_id=mailbox_a.pk,
    )
    assert forged.action == Action.QUARANTINE
    verdict.auth_results = "mx.a3.test; spf=pass smtp.mailfrom=bank.test; dmarc=pass"
    genuine = decide(
        verdict=verdict,
        policy=server_policy(),
        sender="ceo@bank.test",
        peer_ip="192.0.2.9",
        domain_id=mailbox_a.domain_id,
        mailbox_id=mailbox_a.pk,
    )
    assert genuine.action == Action.DELIVER and "allow-listed" in genuine.reason
