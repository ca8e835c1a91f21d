"""Outbound checks: submitted mail carrying malware is refused before it is stored."""

from __future__ import annotations

import pytest

from apps.alerts.models import Alert
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Message
from apps.relay import services as relay_services
from apps.relay.models import QueueItem
from tests.factories import TEST_PASSWORD
from tests.relay.test_submission import listener  # noqa: F401 - the real submission listener fixture
from tests.threats import mailgen

ALICE = "alice@alpha.test"


def _submission(raw: bytes, **accept) -> Message:
    sender = relay_services.submission_authenticate(username=ALICE, password=TEST_PASSWORD)
    return relay_services.submission_accept(
        sender=sender,
        mail_from=ALICE,
        recipients=["bob@remote.test"],
        raw=raw,
        trace=b"",
        queue_id=mail_services.new_queue_id(),
    )


@pytest.mark.django_db
def test_submitted_malware_is_refused_with_an_alert(mailbox_a):
    raw = mailgen.with_attachment("tool.zip", mailgen.zip_of({"eicar.com": mailgen.eicar()}), sender=ALICE)
    with pytest.raises(relay_services.SubmissionRefused) as refused:
        _submission(raw)
    assert refused.value.reply.startswith("554 5.7.1 Message refused: Malware: EICAR")
    assert not Message.objects.exists() and not QueueItem.objects.exists()
    alert = Alert.objects.get(kind="threats.outbound_malware")
    assert alert.level == "critical" and alert.domain_id == mailbox_a.domain_id
    assert ALICE in alert.message


@pytest.mark.django_db
def test_clean_and_policy_only_submissions_are_taken(mailbox_a):
    _submission(mailgen.plain(sender=ALICE))
    # What a domain may receive is the recipient's policy: an executable goes out.
    _submission(mailgen.with_attachment("setup.exe", b"MZ\x90\x00 not really", sender=ALICE))
    assert Message.objects.count() == 2 and QueueItem.objects.count() == 2


def test_malware_over_a_real_submission_session_gets_554(listener, mailbox_a):  # noqa: F811
    client = listener.smtp()
    client.login(ALICE, TEST_PASSWORD)
    assert client.mail(ALICE)[0] == 250
    assert client.rcpt("bob@remote.test")[0] == 250
    code, reply = client.data(mailgen.with_attachment("eicar.com", mailgen.eicar(), sender=ALICE))
    assert code == 554 and b"EICAR" in reply
    client.quit()
    assert not Message.objects.exists()
