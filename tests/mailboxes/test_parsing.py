"""Parsing stored messages: decoded metadata, attachments, and never an exception, whatever
the bytes (the message must still be delivered and listed)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apps.mailboxes import services
from apps.mailboxes.models import MailItem, Message
from apps.mailboxes.parsing import (
    BODY_TEXT_LIMIT,
    ParsedMessage,
    attachment_of,
    headers_of,
    parse_message,
    search_text,
)
from apps.mailboxes.services import IncomingMessage
from apps.threats.models import QuarantineRecipient

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x01\x02" * 50


def b64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


MULTIPART = (
    b"From: Sender <sender@remote.test>\r\n"
    b"To: alice@alpha.test\r\n"
    b"Subject: Report attached\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe, see the report.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Gr\xc3\xbc\xc3\x9fe, see the <b>report</b>.</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="report.pdf"\r\n'
    b'Content-Disposition: attachment; filename="report.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + b64(PDF) + b"\r\n"
    b"--outer\r\n"
    b"Content-Type: image/png\r\n"
    b"Content-Disposition: inline; filename*=utf-8''r%C3%A9sum%C3%A9.png\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + b64(PNG) + b"\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b'Content-Disposition: attachment; filename="notes.txt"\r\n'
    b"\r\n"
    b"plain notes\r\n"
    b"--outer--\r\n"
)


# --- Metadata --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "decoded"),
    [
        (b"=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=", "Grüße aus Köln"),
        (b"=?iso-8859-1?q?caf=E9_cr=E8me?=", "café crème"),
        (b"=?utf-8?q?one?= =?utf-8?q?_two?=", "one two"),  # adjacent words join
        (b"Re: =?utf-8?b?8J+Ukg==?= launch", "Re: 🔒 launch"),
        (b"=?UTF-8?B?5pel5pys6Kqe?=\r\n =?UTF-8?B?44Gu5Lu25ZCN?=", "日本語の件名"),  # folded
        ("Grüße direkt in UTF-8".encode(), "Grüße direkt in UTF-8"),  # RFC 6532
        (b"plain ascii", "plain ascii"),
    ],
)
def test_parse_message_decodes_subject(header, decoded):
    parsed = parse_message(b"Subject: " + header + b"\r\nFrom: a@remote.test\r\n\r\nbody\r\n")
    assert parsed.subject == decoded


def test_parse_message_reads_addresses_date_and_message_id():
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@remote.test>\r\n"
        + "To: Zoë <zoe@bücher.example>, bob@beta.test\r\n".encode()
        + b"Cc: carol@alpha.test\r\n"
        b"Message-ID:   <abc.123@remote.test>  \r\n"
        b"Date: Tue, 1 Jul 2025 10:00:00 -0300\r\n"
        b"\r\nHello\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.from_header == "Jörg Müller <joerg@remote.test>"
    assert parsed.to_header == "Zoë <zoe@bücher.example>, bob@beta.test"
    assert parsed.cc_header == "carol@alpha.test"
    assert parsed.message_id == "<abc.123@remote.test>"
    assert parsed.date == datetime(2025, 7, 1, 13, 0, tzinfo=UTC)
    assert parsed.text.strip() == "Hello"
    assert parsed.attachments == [] and parsed.has_attachments is False


def test_parse_message_date_without_zone_is_utc():
    parsed = parse_message(b"Date: Tue, 1 Jul 2025 10:00:00 -0000\r\n\r\n")
    assert parsed.date == datetime(2025, 7, 1, 10, 0, tzinfo=UTC)


def test_parse_message_lists_attachments_and_keeps_text_and_html():
    parsed = parse_message(MULTIPART)

    assert parsed.subject == "Report attached"
    assert parsed.text.strip() == "Grüße, see the report."
    assert parsed.html is not None and "<b>report</b>" in parsed.html
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        ("report.pdf", "application/pdf", len(PDF)),
        ("résumé.png", "image/png", len(PNG)),
        ("notes.txt", "text/plain", len(b"plain notes")),  # the last CRLF is the boundary's
    ]
    assert parsed.has_attachments
    assert "Grüße" in search_text(parsed)


def test_attachment_of_returns_the_decoded_part():
    parsed = parse_message(MULTIPART)
    pdf, png, notes = parsed.attachments

    assert attachment_of(MULTIPART, pdf.index) == ("report.pdf", "application/pdf", PDF)
    assert attachment_of(MULTIPART, png.index) == ("résumé.png", "image/png", PNG)
    assert attachment_of(MULTIPART, notes.index) == ("notes.txt", "text/plain", b"plain notes")
    assert attachment_of(MULTIPART, 0) is None  # the multipart container itself
    assert attachment_of(MULTIPART, 99) is None
    assert attachment_of(MULTIPART, -1) is None


def test_search_text_of_html_only_mail_is_its_text():
    raw = (
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><h1>Hi</h1><script>x()</script><p>there</p></body></html>\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == ""
    text = search_text(parsed)
    assert "Hi" in text and "there" in text and "<" not in text


def test_search_text_is_capped():
    parsed = parse_message(b"Subject: long\r\n\r\n" + b"word " * (BODY_TEXT_LIMIT // 2))
    assert len(search_text(parsed)) == BODY_TEXT_LIMIT


def test_headers_of_keeps_order_and_repeats_and_decodes():
    raw = (
        b"Received: from a by b; Tue, 1 Jul 2025 10:00:00 +0000\r\n"
        b"Received: from c by d; Tue, 1 Jul 2025 09:59:00 +0000\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"X-Folded: first\r\n second\r\n"
        b"\r\nbody\r\n"
    )
    assert headers_of(raw) == [
        ("Received", "from a by b; Tue, 1 Jul 2025 10:00:00 +0000"),
        ("Received", "from c by d; Tue, 1 Jul 2025 09:59:00 +0000"),
        ("Subject", "Grüße"),
        ("X-Folded", "first second"),
    ]


def test_headers_of_caps_the_number_of_headers():
    raw = b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\nbody\r\n"
    headers = headers_of(raw)
    assert len(headers) == 500
    assert headers[0] == ("X-H0", "v") and headers[-1] == ("X-H499", "v")


# --- Malformed mail: best effort -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "subject", "text_contains"),
    [
        pytest.param(
            b"Subject: no separator\r\nthis line is not a header\r\n",
            "no separator",
            None,
            id="no-blank-line",
        ),
        pytest.param(
            b"Subject: bad base64\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64***\r\n",
            "bad base64",
            None,
            id="broken-base64",
        ),
        pytest.param(
            b"Subject: odd charset\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\nhello\r\n",
            "odd charset",
            "hello",
            id="unknown-charset",
        ),
        pytest.param(
            b"Subject: =?utf-8?q?broken=ZZ?= word\r\n\r\nbody\r\n",
            "broken=ZZ word",
            "body",
            id="bad-encoded-word",
        ),
        pytest.param(
            b"Subject: latin1 \xe9t\xe9\r\nFrom: \xff\xfe <x@y>\r\n\r\n\xe9t\xe9\r\n",
            "latin1 \ufffdt\ufffd",
            None,
            id="8bit-headers",
        ),
        pytest.param(
            b'Subject: truncated\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            b"--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n",
            "truncated",
            "part one",
            id="unterminated-multipart",
        ),
        pytest.param(
            b"Subject: no boundary\r\nContent-Type: multipart/mixed\r\n\r\njust text\r\n",
            "no boundary",
            None,
            id="multipart-without-boundary",
        ),
    ],
)
def test_parse_message_of_malformed_mail_is_best_effort(raw, subject, text_contains):
    parsed = parse_message(raw)
    assert parsed.subject == subject
    if text_contains:
        assert text_contains in parsed.text
    assert all(isinstance(p, str) for p in parsed.problems)


def test_parse_message_records_problems_and_ignores_a_bad_date():
    parsed = parse_message(
        b"Subject: problems\r\nDate: the day after tomorrow\r\nContent-Type: multipart/mixed\r\n\r\nx\r\n"
    )
    assert parsed.subject == "problems"
    assert parsed.date is None
    assert parsed.problems  # e.g. the missing boundary


def test_parse_message_of_empty_input():
    parsed = parse_message(b"")
    assert parsed == ParsedMessage(problems=parsed.problems)
    assert headers_of(b"") == []
    assert attachment_of(b"", 0) == ("part-0", "text/plain", b"")


# --- Never raises ----------------------------------------------------------------------


def assert_storable(parsed: ParsedMessage) -> None:
    """Every string can go into a database column (valid UTF-8: no lone surrogates)."""
    for value in [
        parsed.message_id,
        parsed.subject,
        parsed.from_header,
        parsed.to_header,
        parsed.cc_header,
        parsed.text,
        parsed.html or "",
        search_text(parsed),
        *parsed.problems,
        *(a.filename for a in parsed.attachments),
        *(a.content_type for a in parsed.attachments),
    ]:
        assert isinstance(value, str)
        value.encode("utf-8")


header_names = st.sampled_from(
    [
        "Subject",
        "From",
        "To",
        "Cc",
        "Date",
        "Message-ID",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "MIME-Version",
        "X-Anything",
        "Received",
    ]
)
header_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "multipart/mixed; boundary=b",
            'multipart/alternative; boundary="="',
            "text/plain; charset=utf-16",
            "text/html; charset=x-unknown",
            "message/rfc822",
            "base64",
            "quoted-printable",
            "attachment; filename*=utf-8''%FF%FE",
            'inline; filename="=?utf-8?b?////?="',
            "=?utf-8?b?w6k=?= =?x-bad?q?=FF?=",
            "Tue, 31 Feb 2025 25:61:00 +9999",
            "<>",
            'a@b, <c@d>, (comment) "quoted" <e@f>',
        ]
    ),
)
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def messy_messages(draw) -> bytes:
    end = draw(line_ends)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=12))
    lines = [f"{name}: {value}".encode("utf-8", errors="surrogatepass") for name, value in headers]
    body_parts = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from(
                    [b"--b", b"--b--", b"--=", b"Content-Type: text/plain", b"", b"=?utf-8?q?x?="]
                ),
            ),
            max_size=12,
        )
    )
    separator = draw(st.sampled_from([end, b"", end + end]))
    return end.join(lines) + separator + end.join(body_parts)


@settings(max_examples=500, deadline=None)
@given(raw=st.one_of(st.binary(max_size=2048), messy_messages()), index=st.integers(-2, 12))
def test_parsing_never_raises(raw, index):
    parsed = parse_message(raw)
    assert_storable(parsed)
    for name, value in headers_of(raw):
        assert isinstance(name, str) and isinstance(value, str)
    found = attachment_of(raw, index)
    assert found is None or (isinstance(found[0], str) and isinstance(found[2], bytes))


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=1024), messy_messages()))
@example(raw=b"PK\x03\x04")  # a damaged zip: unscannable, so held
def test_message_deliver_of_any_bytes_ends_delivered_or_held(mailbox_a, raw):
    """Whatever the bytes, the message reaches the mailbox or its quarantine (the scanner
    holds what it cannot read, such as a body that starts like a zip but is not one)."""
    [message] = services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=services.new_queue_id(),
                mail_from="sender@remote.test",
                recipients=(mailbox_a.address,),
                raw=raw,
            )
        ]
    )

    assert services.message_deliver(message_id=message.pk) is True

    message.refresh_from_db()
    assert message.parsed is True
    if message.state == Message.State.QUARANTINED:
        held = QuarantineRecipient.objects.filter(item__message=message, mailbox=mailbox_a)
        assert held.get().state == QuarantineRecipient.State.HELD
        assert not MailItem.objects.filter(message=message).exists()
    else:
        assert message.state == Message.State.DELIVERED
        assert MailItem.objects.filter(message=message, mailbox=mailbox_a).count() == 1
