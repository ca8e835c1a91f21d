"""A3_SCANNING=false: for a server behind a filtering gateway. The settings are read in
a fresh interpreter (they are computed at import), then applied here to the real
delivery path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Folder, MailItem, Message
from apps.mailboxes.selectors import mail_item_raw
from apps.mailboxes.services import IncomingMessage
from apps.threats.models import QuarantineItem, ScanVerdict
from tests.threats.mailgen import gtube

ROOT = Path(__file__).resolve().parents[2]
SWITCHED = (
    "A3_SCANNING",
    "A3_SMTP_CHECKS",
    "A3_ACCEPTED_MESSAGE_TASK",
    "A3_DELIVERY_STAGES",
    "A3_SUBMISSION_CONTENT_CHECKS",
)


def settings_with(tmp_path: Path, scanning: str) -> dict:
    env = {
        **os.environ,
        "A3_SCANNING": scanning,
        "A3_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "a3mailer.settings",
    }
    env.pop("DATABASE_URL", None)
    code = (
        "import json; from a3mailer import settings as s; "
        f"print(json.dumps({{name: getattr(s, name) for name in {SWITCHED!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def gtube_mail() -> bytes:
    return (
        "From: sender@remote.test\r\nTo: alice@alpha.test\r\nSubject: test\r\n"
        "X-Spam-Flag: NO\r\n\r\n" + gtube() + "\r\n"
    ).encode()


@pytest.fixture(scope="module")
def switched_off(tmp_path_factory) -> dict:
    return settings_with(tmp_path_factory.mktemp("off"), "false")


def test_scanning_is_on_by_default(tmp_path):
    on = settings_with(tmp_path, "true")
    assert on["A3_SCANNING"] is True
    assert on["A3_SMTP_CHECKS"] == "apps.threats.smtp_checks"
    assert on["A3_ACCEPTED_MESSAGE_TASK"] == "apps.threats.tasks.message_scan_task"
    assert "apps.threats.services.verdicts.apply_verdict_stage" in on["A3_DELIVERY_STAGES"]
    assert on["A3_SUBMISSION_CONTENT_CHECKS"]


def test_switched_off_every_scanning_hook_is_gone(switched_off):
    assert switched_off["A3_SCANNING"] is False
    assert switched_off["A3_SMTP_CHECKS"] == ""
    assert switched_off["A3_ACCEPTED_MESSAGE_TASK"] == "apps.mailboxes.tasks.message_deliver_task"
    # The verdict stage stays: it limits releases of mail held earlier (and scans nothing).
    assert "apps.threats.services.verdicts.apply_verdict_stage" in switched_off["A3_DELIVERY_STAGES"]
    assert switched_off["A3_SUBMISSION_CONTENT_CHECKS"] == []


@pytest.mark.django_db
def test_switched_off_gtube_is_delivered_untouched(settings, switched_off, mailbox_a):
    for name, value in switched_off.items():
        setattr(settings, name, value)
    raw = gtube_mail()
    [message] = mail_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from="sender@remote.test",
                recipients=(mailbox_a.address,),
                raw=raw,
            )
        ]
    )

    assert mail_services.message_deliver(message_id=message.pk) is True

    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    item = MailItem.objects.select_related("folder").get(message=message, mailbox=mailbox_a)
    assert item.folder.special_use == Folder.SpecialUse.INBOX
    assert not ScanVerdict.objects.filter(message=message).exists()
    assert not QuarantineItem.objects.exists()
    assert mail_item_raw(item=item) == raw  # nothing stamped, nothing removed


@pytest.mark.django_db
def test_switched_off_a_release_of_mail_held_earlier_reaches_only_the_released_mailbox(
    settings, switched_off, superadmin, mailbox_a
):
    """Held for two mailboxes while scanning was on; scanning is then switched off and one
    copy is released: the other mailbox does not get it."""
    from apps.threats.models import QuarantineRecipient
    from apps.threats.services.quarantine import quarantine_release
    from tests.factories import MailboxFactory

    carol = MailboxFactory(domain=mailbox_a.domain, local_part="carol", address="carol@alpha.test")
    [message] = mail_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from="sender@remote.test",
                recipients=(mailbox_a.address, carol.address),
                raw=gtube_mail(),
                peer_ip="192.0.2.7",
            )
        ]
    )
    mail_services.message_deliver(message_id=message.pk)
    item = QuarantineItem.objects.get(message=message)
    for name, value in switched_off.items():
        setattr(settings, name, value)

    quarantine_release(actor=superadmin, item=item, mailbox_ids=[mailbox_a.pk])

    assert MailItem.objects.filter(message=message, mailbox=mailbox_a).count() == 1
    assert not MailItem.objects.filter(message=message, mailbox=carol).exists()
    assert QuarantineRecipient.objects.get(item=item, mailbox=carol).state == QuarantineRecipient.State.HELD
