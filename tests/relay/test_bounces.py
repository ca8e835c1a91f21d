"""Delivery reports: the DSNs we build (read back with the stdlib and with our parser),
reading remote servers' reports, and recording a late remote bounce on the queue."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.mailboxes import services as mail_services
from apps.mailboxes.models import MailItem, Message, MessageRecipient
from apps.mailboxes.parsing import parse_message
from apps.mailboxes.services.messages import DeliveryContext
from apps.relay.models import QueueItem, QueueRecipient
from apps.relay.services import (
    RETURN_CONTENT_LIMIT,
    DsnRecipient,
    ParsedDsn,
    dsn_build,
    dsn_parse,
    dsn_status_for,
    match_inbound_dsn,
)
from tests.factories import MailboxFactory

ARRIVAL = datetime(2024, 3, 5, 9, 59, 58, tzinfo=UTC)
ORIGINAL = (
    b"From: Alice <alice@alpha.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: Lunch?\r\n"
    b"Message-ID: <orig-1@alpha.test>\r\n"
    b"Date: Tue, 05 Mar 2024 09:59:50 +0000\r\n"
    b"\r\n"
    b"Shall we have lunch on Friday?\r\n"
)
REPLY = "550 5.1.1 <bob@remote.test>: Recipient address rejected: User unknown in virtual mailbox table"

# What Postfix sends when a server behind it refused the recipient after Postfix had
# accepted the message: the "late" bounce that the delivery stage records.
POSTFIX_BOUNCE = b"""\
Return-Path: <>\r
Received: by mx.remote.test (Postfix) id 4TqXyz1AbCz9sKq; Tue,  5 Mar 2024 10:00:01 +0000 (UTC)\r
Date: Tue,  5 Mar 2024 10:00:01 +0000 (UTC)\r
From: MAILER-DAEMON@mx.remote.test (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: alice@alpha.test\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary="4TqXyz1AbCz9sKq.1709632801/mx.remote.test"\r
Content-Transfer-Encoding: 8bit\r
Message-Id: <20240305100001.4TqXyz1AbCz9sKq@mx.remote.test>\r
\r
This is a MIME-encapsulated message.\r
\r
--4TqXyz1AbCz9sKq.1709632801/mx.remote.test\r
Content-Description: Notification\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: 8bit\r
\r
This is the mail system at host mx.remote.test.\r
\r
I'm sorry to have to inform you that your message could not\r
be delivered to one or more recipients. It's attached below.\r
\r
For further assistance, please send mail to postmaster.\r
\r
If you do so, please include this problem report. You can\r
delete your own text from the attached returned message.\r
\r
                   The mail system\r
\r
<bob@remote.test>: host mailstore.remote.test[10.0.0.5] said: 550 5.1.1\r
    <bob@remote.test>: Recipient address rejected: User unknown in virtual\r
    mailbox table (in reply to RCPT TO command)\r
\r
--4TqXyz1AbCz9sKq.1709632801/mx.remote.test\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.remote.test\r
X-Postfix-Queue-ID: 4TqXyz1AbCz9sKq\r
X-Postfix-Sender: rfc822; alice@alpha.test\r
Arrival-Date: Tue,  5 Mar 2024 09:59:58 +0000 (UTC)\r
\r
Final-Recipient: rfc822; bob@remote.test\r
Original-Recipient: rfc822;Bob@Remote.test\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; mailstore.remote.test\r
Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected:\r
    User unknown in virtual mailbox table\r
\r
--4TqXyz1AbCz9sKq.1709632801/mx.remote.test\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
Content-Transfer-Encoding: 8bit\r
\r
Return-Path: <alice@alpha.test>\r
Received: from mail.alpha.test (mail.alpha.test [192.0.2.10])\r
\tby mx.remote.test (Postfix) with ESMTPS id 4TqXyz1AbCz9sKq\r
\tfor <bob@remote.test>; Tue,  5 Mar 2024 09:59:58 +0000 (UTC)\r
From: Alice <alice@alpha.test>\r
To: bob@remote.test\r
Subject: Lunch?\r
Message-ID: <orig-1@alpha.test>\r
Date: Tue, 05 Mar 2024 09:59:50 +0000\r
\r
--4TqXyz1AbCz9sKq.1709632801/mx.remote.test--\r
"""

_parser = BytesParser(policy=policy.default)


def failed(**fields) -> DsnRecipient:
    values = {
        "address": "bob@remote.test",
        "action": "failed",
        "status": "5.1.1",
        "remote_mta": "mx.remote.test",
        "diagnostic": REPLY,
        "last_attempt": ARRIVAL + timedelta(minutes=1),
    }
    values.update(fields)
    return DsnRecipient(**values)


def build(original: bytes = ORIGINAL, recipients: list[DsnRecipient] | None = None, **options) -> bytes:
    return dsn_build(
        original=original,
        report_to=options.pop("report_to", "alice@alpha.test"),
        recipients=recipients or [failed()],
        queue_id=options.pop("queue_id", "18E0A1B2C3DAB12CD34"),
        arrival=ARRIVAL,
        **options,
    )


def words(text: str) -> str:
    """Text with its line breaks and runs of spaces made single spaces."""
    return " ".join(text.split())


def returned_bytes(raw: bytes) -> bytes:
    """The bytes of the third part's body, cut out of the report between its headers and
    the closing boundary."""
    boundary = _parser.parsebytes(raw).get_boundary().encode()
    third = raw.split(b"--" + boundary)[3]
    return third.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


# --- Building --------------------------------------------------------------------------


def test_dsn_build_failed_is_a_delivery_status_report(settings):
    settings.A3_HOSTNAME = "mail.alpha.test"

    raw = build()

    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    report = _parser.parsebytes(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mail.alpha.test>"
    assert report["To"] == "alice@alpha.test"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["X-A3-Queue-Id"] == "18E0A1B2C3DAB12CD34"
    assert report["Message-ID"].endswith("@mail.alpha.test>")
    assert report["Date"].datetime is not None

    text, status, returned = report.get_payload()
    assert text.get_content_type() == "text/plain"
    explanation = words(text.get_content())
    assert "<bob@remote.test>: delivery failed" in explanation
    assert "mx.remote.test replied" in explanation
    assert REPLY in explanation

    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.alpha.test"
    assert per_message["Arrival-Date"] == "Tue, 05 Mar 2024 09:59:58 +0000"
    assert per_recipient["Final-Recipient"] == "rfc822; bob@remote.test"
    assert per_recipient["Original-Recipient"] is None
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.remote.test"
    assert per_recipient["Diagnostic-Code"] == f"smtp; {REPLY}"  # folded, and unfolds intact
    assert per_recipient["Last-Attempt-Date"] == "Tue, 05 Mar 2024 10:00:58 +0000"
    assert per_recipient["Will-Retry-Until"] is None

    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload(0)["Message-ID"] == "<orig-1@alpha.test>"
    assert returned_bytes(raw) == ORIGINAL


def test_dsn_build_reads_back_with_dsn_parse():
    parsed = dsn_parse(build(recipients=[failed(original_address="bob@alpha.test")]))

    assert parsed is not None
    assert parsed.original_message_id == "<orig-1@alpha.test>"
    assert parsed.original_queue_id == ""  # the original did not carry our queue id
    [recipient] = parsed.recipients
    assert recipient.final_recipient == "bob@remote.test"
    assert recipient.original_recipient == "bob@alpha.test"
    assert recipient.action == "failed"
    assert recipient.status == "5.1.1"
    assert recipient.diagnostic == REPLY
    assert recipient.remote_mta == "mx.remote.test"


def test_dsn_build_delayed_says_until_when(settings):
    until = ARRIVAL + timedelta(days=5)

    raw = build(
        recipients=[
            failed(
                action="delayed", status="4.2.2", diagnostic="452 4.2.2 Mailbox full", will_retry_until=until
            )
        ]
    )

    report = _parser.parsebytes(raw)
    assert report["Subject"] == "Delayed Mail (still being retried)"
    text, status, _ = report.get_payload()
    assert "keeps trying until 2024-03-10 09:59 UTC" in words(text.get_content())
    assert "do not need to send the message again" in words(text.get_content())
    per_recipient = status.get_payload()[1]
    assert per_recipient["Action"] == "delayed"
    assert per_recipient["Will-Retry-Until"] == "Sun, 10 Mar 2024 09:59:58 +0000"
    assert dsn_parse(raw).recipients[0].status == "4.2.2"


def test_dsn_build_returns_headers_only_when_large_or_asked():
    large = ORIGINAL + b"x" * 76 + b"\r\n"
    large += (b"y" * 76 + b"\r\n") * (RETURN_CONTENT_LIMIT // 78 + 1)

    for raw in (build(large), build(ORIGINAL, headers_only=True)):
        report = _parser.parsebytes(raw)
        returned = report.get_payload()[2]
        assert returned.get_content_type() == "text/rfc822-headers"
        assert returned_bytes(raw) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
        assert "headers of your original message are attached" in words(report.get_payload()[0].get_content())
        assert dsn_parse(raw).original_message_id == "<orig-1@alpha.test>"
    assert len(build(large)) < RETURN_CONTENT_LIMIT // 10


def test_dsn_build_keeps_an_8bit_original_byte_for_byte():
    original = (
        b"From: alice@alpha.test\r\nMessage-ID: <8bit@alpha.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "Grüße aus Köln, 東京\r\n".encode()
    )

    raw = build(original)

    returned = _parser.parsebytes(raw).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert returned_bytes(raw) == original
    assert returned.get_payload(0).get_content() == "Grüße aus Köln, 東京\r\n"
    assert dsn_parse(raw).original_message_id == "<8bit@alpha.test>"


def test_dsn_build_utf8_headers_and_addresses():
    original = "From: Zoë <zoë@alpha.test>\r\nSubject: Grüße\r\nMessage-ID: <utf8@alpha.test>\r\n\r\nHallo\r\n".encode()

    raw = build(
        original,
        [failed(address="bjørn+x@remote.test", original_address="bjørn@alpha.test")],
        report_to="zoë@alpha.test",
    )

    report = _parser.parsebytes(raw)
    assert report["To"] == "zoë@alpha.test"
    text, status, returned = report.get_payload()
    assert "<bjørn+x@remote.test>" in text.get_content()
    # The report stays 7-bit: RFC 6533 utf-8 addresses in their xtext form.
    status_bytes = raw.split(b"Content-Type: message/delivery-status")[1].split(b"\r\n--")[0]
    assert status_bytes.isascii()
    per_recipient = status.get_payload()[1]
    assert per_recipient["Final-Recipient"] == "utf-8; bj\\x{F8}rn\\x{2B}x@remote.test"
    assert per_recipient["Original-Recipient"] == "utf-8; bj\\x{F8}rn@alpha.test"
    # RFC 6532: an original with UTF-8 headers comes back as message/global.
    assert returned.get_content_type() == "message/global"
    assert returned_bytes(raw) == original
    parsed = dsn_parse(raw)
    assert parsed.recipients[0].final_recipient == "bjørn+x@remote.test"
    assert parsed.recipients[0].original_recipient == "bjørn@alpha.test"
    assert parsed.original_message_id == "<utf8@alpha.test>"


def test_dsn_build_falls_back_to_headers_for_an_original_that_cannot_be_a_part():
    too_long_line = ORIGINAL + b"z" * 1200 + b"\r\n"
    no_headers = b"just some text\r\nwithout any header\r\n"

    raw = build(too_long_line)
    assert _parser.parsebytes(raw).get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert returned_bytes(raw) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert _parser.parsebytes(build(no_headers)).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_dsn_build_without_original_content_has_two_parts():
    report = _parser.parsebytes(build(b""))

    assert [p.get_content_type() for p in report.iter_parts()] == ["text/plain", "message/delivery-status"]
    assert "no longer available" in words(report.get_payload()[0].get_content())


def test_dsn_build_diagnostic_without_smtp_reply_and_envelope_id():
    raw = build(
        recipients=[
            failed(status="4.4.1", remote_mta="", diagnostic="4.4.1 Connection refused", action="failed")
        ],
        envelope_id="QQ314159",
    )

    per_message, per_recipient = _parser.parsebytes(raw).get_payload()[1].get_payload()
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_recipient["Diagnostic-Code"] == "X-A3; 4.4.1 Connection refused"
    assert per_recipient["Remote-MTA"] is None
    assert dsn_parse(raw).original_envelope_id == "QQ314159"


def test_dsn_build_refuses_nonsense():
    with pytest.raises(ValueError, match="at least one"):
        dsn_build(original=ORIGINAL, report_to="a@alpha.test", recipients=[], queue_id="Q", arrival=ARRIVAL)
    with pytest.raises(ValueError, match="action"):
        build(recipients=[failed(action="bounced")])


@pytest.mark.parametrize(
    ("code", "reply", "kind", "expected"),
    [
        (550, "550 5.1.1 No such user", "", "5.1.1"),
        (550, "550-5.7.1 Policy\n550 5.7.1 rejected", "", "5.7.1"),
        (550, "550 mailbox unavailable", "", "5.0.0"),
        (421, "421 Service not available", "", "4.0.0"),
        (452, "452 4.2.2 Mailbox full", "", "4.2.2"),
        (550, "550 4.2.2 Mailbox full", "", "5.2.2"),  # the reply code decides the class
        (None, "550 5.1.1 No such user", "", "5.1.1"),
        (None, "4.4.7 Delivery time expired; last reply: 421 busy", "", "4.4.7"),
        (None, "", "connect", "4.4.1"),
        (None, "Connection lost", "dropped", "4.4.2"),
        (None, "", "", "4.4.0"),
        (354, "354 go ahead", "", "5.5.0"),
    ],
)
def test_dsn_status_for(code, reply, kind, expected):
    assert dsn_status_for(code, reply, kind=kind) == expected


# --- Reading remote reports ------------------------------------------------------------


def test_dsn_parse_postfix_bounce():
    parsed = dsn_parse(POSTFIX_BOUNCE)

    assert parsed == ParsedDsn(
        reporting_mta="mx.remote.test",
        original_envelope_id="",
        original_message_id="<orig-1@alpha.test>",
        original_queue_id="",
        recipients=[
            (
                "bob@remote.test",
                "Bob@Remote.test",
                "failed",
                "5.1.1",
                "550 5.1.1 <bob@remote.test>: Recipient address rejected: User unknown in virtual mailbox table",
                "mailstore.remote.test",
            )
        ],
    )


def test_dsn_parse_ignores_what_is_not_a_delivery_report():
    plain = b"From: a@remote.test\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nHello\r\n"
    mdn = POSTFIX_BOUNCE.replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    mixed = POSTFIX_BOUNCE.replace(b"multipart/report", b"multipart/mixed")
    no_type = POSTFIX_BOUNCE.replace(b" report-type=delivery-status;", b"")

    assert [dsn_parse(raw) for raw in (plain, mdn, mixed, no_type, b"", b"\x00\xff")] == [None] * 6


def report_with(status_part: bytes, returned: bytes = b"") -> bytes:
    return (
        b"From: MAILER-DAEMON@mx.remote.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type="delivery-status"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nIt bounced.\r\n"
        b"--b\r\n" + status_part + (b"\r\n--b\r\n" + returned if returned else b"") + b"\r\n--b--\r\n"
    )


def test_dsn_parse_malformed_reports_give_what_can_be_read():
    garbage = dsn_parse(
        report_with(b"Content-Type: message/delivery-status\r\n\r\nnot a field\r\n\r\n:::\r\n")
    )
    assert garbage == ParsedDsn()

    # No per-message block, a stray line, a repeated field, an unknown status and a
    # report cut off in the middle of the second recipient.
    messy = dsn_parse(
        report_with(
            b"Content-Type: message/delivery-status\r\n\r\n"
            b"Final-Recipient: rfc822; <one@remote.test>\r\nthis line is noise\r\n"
            b"Action: failed\r\nAction: delayed\r\nStatus: five-one-one\r\n\r\n"
            b"Final-Recipient: rfc822;two@remote.test\r\nAction: Failed (permanent)\r\nStatus: 5.2.2 (full)\r\n"
        )[:-9]
    )
    assert messy.reporting_mta == ""
    assert [(r.final_recipient, r.action, r.status) for r in messy.recipients] == [
        ("one@remote.test", "failed", ""),
        ("two@remote.test", "failed", "5.2.2"),
    ]

    empty = b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\nno parts\r\n'
    assert dsn_parse(empty) == ParsedDsn()

    bad_returned = dsn_parse(
        report_with(
            b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n",
            b"Content-Type: message/rfc822\r\n\r\nMessage-ID: <unterminated@\xff\xfe\r\n",
        )
    )
    assert bad_returned.reporting_mta == "mx"
    assert bad_returned.original_message_id.startswith("<unterminated@")


def test_dsn_parse_encoded_and_global_status_parts():
    fields = (
        "Reporting-MTA: dns; mx.remote.test\r\n\r\n"
        "Final-Recipient: utf-8; bj\\x{F8}rn@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    )
    encoded = base64.encodebytes(fields.encode()).replace(b"\n", b"\r\n")
    queue_header = b"Content-Type: text/rfc822-headers\r\n\r\nMessage-ID: <x@alpha.test>\r\nX-A3-Queue-Id: 18E0A1B2C3D\r\n"

    for status_part in (
        b"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded,
        b"Content-Type: message/global-delivery-status\r\n\r\n" + fields.replace("\\x{F8}", "ø").encode(),
    ):
        parsed = dsn_parse(report_with(status_part, queue_header))
        assert parsed.reporting_mta == "mx.remote.test"
        assert parsed.recipients[0].final_recipient == "bjørn@remote.test"
        assert parsed.recipients[0].status == "5.1.1"
        assert parsed.original_queue_id == "18E0A1B2C3D"
        assert parsed.original_message_id == "<x@alpha.test>"


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_dsn_parse_never_raises_on_arbitrary_bytes(raw):
    parsed = dsn_parse(raw)

    assert parsed is None or isinstance(parsed, ParsedDsn)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"Content-Type: message/delivery-status\r\n\r\n",
                    b"Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                    b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
                    b"Content-Type: message/rfc822\r\n\r\n",
                    b"Final-Recipient: utf-8; \\x{D800}\\x{110000}\\x{}\r\n",
                    b"Action: failed\r\nStatus: 5.1.1\r\n",
                    b"Message-ID: <\xff@\r\n (\r\n",
                    b"\r\n--b\r\n",
                    b"\r\n\r\n",
                    b" folded\r\n",
                ]
            ),
        ),
        max_size=20,
    )
)
def test_dsn_parse_never_raises_inside_a_report(chunks):
    raw = report_with(b"".join(chunks))

    parsed = dsn_parse(raw)

    # Not None: reading failed nowhere inside (a caught error would give None).
    assert isinstance(parsed, ParsedDsn)


# --- Recording a late remote bounce ----------------------------------------------------


def outbound(*, message_id: str = "<orig-1@alpha.test>", sender: str = "alice@alpha.test") -> QueueItem:
    """A message Alice submitted, handed to the remote server (sent) for two recipients."""
    mailbox = MailboxFactory(address="alice@alpha.test", local_part="alice", domain__name="alpha.test")
    message = Message.objects.create(
        queue_id=mail_services.new_queue_id(),
        blob_sha256="0" * 64,
        size=len(ORIGINAL),
        mail_from=sender,
        message_id_header=message_id,
        submitted_by=mailbox,
        state=Message.State.DELIVERED,
    )
    item = QueueItem.objects.create(
        message=message,
        sender=sender,
        report_to=sender,
        domain="remote.test",
        state=QueueItem.State.SENT,
    )
    for address in ("bob@remote.test", "carol@remote.test"):
        QueueRecipient.objects.create(
            item=item,
            address=address,
            state=QueueRecipient.State.SENT,
            reply_code=250,
            reply="250 2.0.0 Ok: queued as 4TqXyz1AbCz9sKq",
            remote_host="mx.remote.test",
        )
    return item


def inbound_context(raw: bytes, *, to: str = "alice@alpha.test", mail_from: str = "") -> DeliveryContext:
    message = Message.objects.create(
        queue_id=mail_services.new_queue_id(), blob_sha256="1" * 64, size=len(raw), mail_from=mail_from
    )
    MessageRecipient.objects.create(message=message, address=to)
    return DeliveryContext(message=message, raw=raw, parsed=parse_message(raw))


def recipients_of(item: QueueItem) -> dict[str, tuple[str, int | None, str, str]]:
    return {
        r.address: (r.state, r.reply_code, r.reply, r.remote_host)
        for r in QueueRecipient.objects.filter(item=item)
    }


@pytest.mark.django_db
def test_match_inbound_dsn_marks_the_recipient_bounced():
    item = outbound()
    context = inbound_context(POSTFIX_BOUNCE)

    match_inbound_dsn(context)
    match_inbound_dsn(context)  # a redelivered task changes nothing more

    assert recipients_of(item) == {
        "bob@remote.test": (
            "bounced",
            550,
            "550 5.1.1 <bob@remote.test>: Recipient address rejected: User unknown in virtual mailbox table",
            "mailstore.remote.test",
        ),
        "carol@remote.test": ("sent", 250, "250 2.0.0 Ok: queued as 4TqXyz1AbCz9sKq", "mx.remote.test"),
    }
    assert context.targets == {} and context.failures == {}  # where the report goes is untouched


@pytest.mark.django_db
def test_match_inbound_dsn_delayed_only_notes_the_reply():
    item = outbound()
    # A remote server's delay warning, made with our own builder and its headers-only return.
    raw = dsn_build(
        original=ORIGINAL,
        report_to="alice@alpha.test",
        recipients=[
            DsnRecipient(
                address="CAROL@remote.test",
                action="delayed",
                status="4.2.2",
                remote_mta="store.remote.test",
                diagnostic="452 4.2.2 Mailbox full",
                will_retry_until=ARRIVAL + timedelta(days=3),
            )
        ],
        queue_id="REMOTE1",
        arrival=ARRIVAL,
        headers_only=True,
    )

    match_inbound_dsn(inbound_context(raw))

    states = recipients_of(item)
    assert states["carol@remote.test"] == (
        "sent",
        250,
        "Delayed at store.remote.test: 452 4.2.2 Mailbox full",
        "mx.remote.test",
    )
    assert states["bob@remote.test"][0] == "sent"


@pytest.mark.django_db
def test_match_inbound_dsn_by_our_queue_id():
    item = outbound(message_id="")
    raw = report_with(
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n"
        b"Final-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.2.1\r\n",
        b"Content-Type: text/rfc822-headers\r\n\r\nX-A3-Queue-Id: "
        + item.message.queue_id.encode()
        + b"\r\n",
    )

    match_inbound_dsn(inbound_context(raw))

    assert recipients_of(item)["bob@remote.test"][:3] == (
        "bounced",
        None,
        "5.2.1 (reported by mx.remote.test)",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "case",
    ["other_recipient", "submitted", "unknown_message", "not_a_report", "malformed", "already_bounced"],
)
def test_match_inbound_dsn_leaves_queue_alone(case, caplog):
    item = outbound()
    raw, to = POSTFIX_BOUNCE, "alice@alpha.test"
    if case == "other_recipient":
        to = "mallory@alpha.test"  # a report about Alice's mail that was not sent to Alice
    elif case == "unknown_message":
        raw = POSTFIX_BOUNCE.replace(b"<orig-1@alpha.test>", b"<someone-else@alpha.test>")
    elif case == "not_a_report":
        raw = ORIGINAL
    elif case == "malformed":
        raw = POSTFIX_BOUNCE[: POSTFIX_BOUNCE.index(b"Final-Recipient")] + b"\xff\x00garbage"
    elif case == "already_bounced":
        QueueRecipient.objects.filter(item=item).update(state=QueueRecipient.State.BOUNCED, reply="ours")
    before = recipients_of(item)
    context = inbound_context(raw, to=to)
    if case == "submitted":
        context.message.submitted_by = item.message.submitted_by

    match_inbound_dsn(context)

    assert recipients_of(item) == before


@pytest.mark.django_db
def test_match_inbound_dsn_in_the_delivery_pipeline(settings):
    """Through message_deliver: the report is filed in Alice's INBOX and recorded."""
    settings.A3_DELIVERY_STAGES = [
        "apps.mailboxes.services.messages.expand_recipients",
        "apps.relay.services.bounces.match_inbound_dsn",
    ]
    item = outbound()
    [report] = mail_services.messages_accept(
        incoming=[
            mail_services.IncomingMessage(
                queue_id=mail_services.new_queue_id(),
                mail_from="",
                recipients=("alice@alpha.test",),
                raw=POSTFIX_BOUNCE,
            )
        ]
    )

    assert mail_services.message_deliver(message_id=report.pk)

    assert recipients_of(item)["bob@remote.test"][0] == "bounced"
    filed = MailItem.objects.get(message=report)
    assert (filed.mailbox.address, filed.folder.special_use) == ("alice@alpha.test", "inbox")
