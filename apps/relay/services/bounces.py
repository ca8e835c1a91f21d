"""Delivery status notifications (RFC 3464 in a RFC 6522 multipart/report): building the
reports we send about outbound mail, reading the ones remote servers send us, and
recording a remote server's late bounce on the queue recipient it is about."""

from __future__ import annotations

import base64
import binascii
import logging
import quopri
import re
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.message import Message as MimeMessage
from email.message import MIMEPart
from email.mime.multipart import MIMEMultipart
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value, format_datetime, make_msgid
from io import BytesIO
from typing import NamedTuple

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.mailboxes.models import Message
from apps.mailboxes.services import DeliveryContext
from apps.relay.models import QueueItem, QueueRecipient

logger = logging.getLogger(__name__)

__all__ = [
    "DSN_ACTIONS",
    "RETURN_CONTENT_LIMIT",
    "DsnRecipient",
    "ParsedDsn",
    "ParsedDsnRecipient",
    "dsn_build",
    "dsn_parse",
    "dsn_status_for",
    "match_inbound_dsn",
    "report_local_failures",
]

DSN_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# Larger originals come back as their headers only: the sender has the message, and a
# report should not cost as much as the mail it is about.
RETURN_CONTENT_LIMIT = 256 * 1024
MAX_LINE = 998  # octets per line, RFC 5322 §2.1.1
MAX_REPORT_RECIPIENTS = 1000  # read at most this many per-recipient blocks
MAX_REPORT_PARTS = 50

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# An SMTP reply: an optional reply code, then an optional enhanced status code (RFC 3463).
_REPLY_RE = re.compile(r"^\s*(?:([2-5]\d\d)(?:[ -]|$))?\s*(?:([245])\.(\d{1,3})\.(\d{1,3})\b)?")
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")
_ADDRESS_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")
_HEADER_LINE_RE = re.compile(rb"[!-9;-~]+:")
_EMBEDDED_UNICODE_RE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")

# Without a reply from the remote server, the caller says what went wrong (RFC 3463 §3.5).
_NETWORK_STATUS = {
    "connect": "4.4.1",  # no answer from host
    "dropped": "4.4.2",  # bad connection: established, then lost
    "timeout": "4.4.2",
    "dns": "4.4.3",  # routing server failure
    "no-route": "5.4.4",  # unable to route
    "expired": "4.4.7",  # delivery time expired
}


# --- Building --------------------------------------------------------------------------


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's part of a report we send."""

    address: str
    action: str  # "failed" | "delayed" | "delivered" | "relayed" | "expanded"
    status: str  # enhanced status code, e.g. "5.1.1"
    remote_mta: str = ""
    diagnostic: str = ""  # the remote server's reply, e.g. "550 5.1.1 No such user"
    original_address: str = ""
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


def dsn_status_for(reply_code: int | None, reply: str, *, kind: str = "") -> str:
    """The enhanced status code (RFC 3463) for a remote server's reply: the one the reply
    carries, else the class of its reply code ("x.0.0"). Without any reply (the
    connection failed), `kind` says how: "connect", "dropped", "timeout", "dns",
    "no-route" or "expired"; unknown means "4.4.0"."""
    match = _REPLY_RE.match(reply or "")
    code_text, enhanced_class = (match.group(1), match.group(2)) if match else (None, None)
    if reply_code is None and code_text:
        reply_code = int(code_text)
    reply_class = str(reply_code // 100) if reply_code is not None and 200 <= reply_code < 600 else ""
    if reply_class == "3":  # an intermediate reply where a final one was due: a protocol error
        return "5.5.0"
    if match and enhanced_class:
        # The reply code decides success or failure; a contradicting enhanced code keeps
        # its detail but takes the reply code's class (RFC 3463 §2).
        return f"{reply_class or enhanced_class}.{match.group(3)}.{match.group(4)}"
    if reply_class:
        return f"{reply_class}.0.0"
    return _NETWORK_STATUS.get(kind, "4.4.0")


def dsn_build(
    *,
    original: bytes,
    report_to: str,
    recipients: list[DsnRecipient],
    queue_id: str,
    arrival: datetime,
    headers_only: bool = False,
    envelope_id: str = "",
) -> bytes:
    """A complete delivery report (RFC 3464) about `recipients` of the message `original`,
    addressed to `report_to`, as CRLF-terminated bytes ready to queue with a null sender.

    The original comes back whole as message/rfc822 (message/global when its header
    section is UTF-8, RFC 6532), or as its header section only when `headers_only`, when
    it is over RETURN_CONTENT_LIMIT, or when it cannot travel as a message part. An empty
    `original` (its content is gone) leaves the third part out. Raises ValueError for an
    empty recipient list or an unknown action."""
    if not recipients:
        raise ValueError("a delivery report needs at least one recipient")
    for recipient in recipients:
        if recipient.action not in DSN_ACTIONS:
            raise ValueError(f"unknown DSN action {recipient.action!r}")

    # A UTF-8 report address (RFC 6531) can only be written in a UTF-8 header.
    base = policy.SMTP if report_to.isascii() else policy.SMTPUTF8
    # DSN fields are folded by hand (see _field_block); at 998 the generator keeps them.
    generator_policy = base.clone(max_line_length=MAX_LINE)

    hostname = settings.A3_HOSTNAME
    report = MIMEMultipart("report", report_type="delivery-status", policy=base)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = report_to
    report["Subject"] = _subject(recipients)
    report["Date"] = format_datetime(timezone.now().astimezone(UTC))
    report["Message-ID"] = make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no auto-replies to this
    report["X-A3-Queue-Id"] = _ascii(queue_id)

    returned = _returned_part(original, headers_only=headers_only, part_policy=base) if original else None
    text = MIMEPart(policy=base)
    explanation = _explanation(recipients, returned=returned)
    text.set_content(explanation, cte=None if explanation.isascii() else "quoted-printable")
    text["Content-Description"] = "Notification"
    report.attach(text)
    report.attach(_status_part(recipients, arrival=arrival, envelope_id=envelope_id, part_policy=base))
    if returned is not None:
        part, eight_bit = returned
        report.attach(part)
        if eight_bit:
            # RFC 2045 §6.4: a multipart holding 8-bit data is labelled as such.
            report["Content-Transfer-Encoding"] = "8bit"
    out = BytesIO()
    _ReportGenerator(out, policy=generator_policy).flatten(report)
    return out.getvalue()


class _ReportGenerator(BytesGenerator):
    """Writes a message/* part whose payload is a string as those exact bytes. The stdlib
    generator encodes such a payload as strict ASCII; the returned original may be 8-bit
    (held here as surrogate escapes), and re-generating it from a parsed tree would not
    give it back byte for byte."""

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", errors="surrogateescape")


def _subject(recipients: list[DsnRecipient]) -> str:
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _when(moment: datetime) -> str:
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _rfc5322_date(moment: datetime) -> str:
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC))


def _explanation(recipients: list[DsnRecipient], *, returned: tuple[MIMEPart, bool] | None) -> str:
    """The human-readable first part: what happened, to whom, and what the remote said."""
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    succeeded = [r for r in recipients if r.action not in {"failed", "delayed"}]
    paragraphs = [f"This is the mail delivery system at {settings.A3_HOSTNAME}."]
    if failed:
        paragraphs.append(
            "Your message could not be delivered to the recipients listed below. The mail "
            "system has stopped trying; sending the message again will probably fail the same "
            "way unless the problem described is fixed."
        )
    if delayed:
        deadlines = [r.will_retry_until for r in delayed if r.will_retry_until]
        until = f"until {_when(max(deadlines))}" if deadlines else "for a while longer"
        paragraphs.append(
            f"Delivery of your message to the recipients listed below has been delayed. This is "
            f"only a warning: you do not need to send the message again. The mail system keeps "
            f"trying {until}, and tells you if it gives up."
        )
    if succeeded:
        paragraphs.append("Your message was delivered, or passed on, to the recipients listed below.")
    text = "\n\n".join(textwrap.fill(p, width=72) for p in paragraphs) + "\n"

    for recipient in [*failed, *delayed, *succeeded]:
        line = f"<{recipient.address}>"
        if recipient.original_address and recipient.original_address != recipient.address:
            line += f" (sent to <{recipient.original_address}>)"
        verb = {
            "failed": "delivery failed",
            "delayed": "delivery delayed",
            "delivered": "delivered",
            "relayed": "relayed to a system that sends no further reports",
            "expanded": "delivered and forwarded on",
        }[recipient.action]
        line += f": {verb} (status {recipient.status})"
        if recipient.action == "delayed" and recipient.will_retry_until:
            line += f", retrying until {_when(recipient.will_retry_until)}"
        text += f"\n{line}\n"
        reply = _LINE_BREAK_RE.split(recipient.diagnostic.strip()) if recipient.diagnostic.strip() else []
        if reply and recipient.remote_mta:
            text += f"    The remote server {recipient.remote_mta} replied:\n"
        elif reply:
            text += "    Reason:\n"
        for reply_line in reply[:20]:
            text += f"        {reply_line[: MAX_LINE - 8]}\n"

    if returned is None:
        text += "\nThe content of your message is no longer available, so it is not attached.\n"
    elif returned[0].get_content_type() in {"message/rfc822", "message/global"}:
        text += "\nYour original message is attached.\n"
    else:
        text += "\nThe headers of your original message are attached.\n"
    return text


def _ascii(text: str) -> str:
    """Printable ASCII only: DSN fields are 7-bit (RFC 3464 §2.1)."""
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(_LINE_BREAK_RE.split(text)))


def _utf8_xtext(address: str) -> str:
    """The utf-8-addr-xtext form of RFC 6533 §3: 7-bit, with SP, '+', '=', '\\', controls
    and non-ASCII characters written as \\x{HEX}."""
    return "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):02X}}}" for c in address)


def _address_field(address: str) -> str:
    if address.isascii():
        return f"rfc822; {_ascii(address)}"
    return f"utf-8; {_utf8_xtext(address)}"


def _fold(name: str, value: str) -> str:
    """`value` folded at whitespace so that lines stay within 78 characters where the words
    allow; words are never split."""
    lines = textwrap.wrap(
        value,
        width=78,
        initial_indent=" " * (len(name) + 2),
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    if not lines:
        return ""
    lines[0] = lines[0][len(name) + 2 :]
    return "\n".join(line[:MAX_LINE] for line in lines)


def _field_block(fields: list[tuple[str, str]]) -> MimeMessage:
    """One block of DSN fields as the stdlib wants it for message/delivery-status.

    A compat32 block keeps values verbatim: the default policy would re-fold a long
    Diagnostic-Code into RFC 2047 encoded words, which a DSN field may not contain."""
    block = MimeMessage(policy=policy.compat32)
    for name, value in fields:
        folded = _fold(name, value)
        if folded:
            block[name] = folded
    return block


def _status_part(
    recipients: list[DsnRecipient], *, arrival: datetime, envelope_id: str, part_policy: policy.Policy
) -> MIMEPart:
    per_message = [("Reporting-MTA", f"dns; {_ascii(settings.A3_HOSTNAME)}")]
    if envelope_id:
        per_message.append(("Original-Envelope-Id", _ascii(envelope_id)))
    per_message.append(("Arrival-Date", _rfc5322_date(arrival)))
    blocks = [_field_block(per_message)]
    for recipient in recipients:
        fields: list[tuple[str, str]] = []
        if recipient.original_address:
            fields.append(("Original-Recipient", _address_field(recipient.original_address)))
        fields.append(("Final-Recipient", _address_field(recipient.address)))
        fields.append(("Action", recipient.action))
        status = recipient.status if _STATUS_RE.fullmatch(recipient.status or "") else ""
        fields.append(
            ("Status", status or {"failed": "5.0.0", "delayed": "4.0.0"}.get(recipient.action, "2.0.0"))
        )
        if recipient.remote_mta:
            fields.append(("Remote-MTA", f"dns; {_ascii(recipient.remote_mta)}"))
        if recipient.diagnostic.strip():
            diagnostic = _ascii(recipient.diagnostic.strip())[: MAX_LINE - 40]
            # "smtp" only for what is a reply from an SMTP server (RFC 3464 §2.3.6).
            kind = "smtp" if re.match(r"[2-5]\d\d(?:[ -]|$)", diagnostic) else "X-A3"
            fields.append(("Diagnostic-Code", f"{kind}; {diagnostic}"))
        if recipient.last_attempt:
            fields.append(("Last-Attempt-Date", _rfc5322_date(recipient.last_attempt)))
        if recipient.action == "delayed" and recipient.will_retry_until:
            fields.append(("Will-Retry-Until", _rfc5322_date(recipient.will_retry_until)))
        blocks.append(_field_block(fields))
    part = MIMEPart(policy=part_policy)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _crlf(raw: bytes) -> bytes:
    # 8bit content may hold CR and LF only as CRLF (RFC 2045 §2.8).
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


def _is_transportable(raw: bytes) -> bool:
    """Whether CRLF-normalised `raw` can travel as a message/rfc822 part with 8bit
    encoding: no NUL, no line over 998 octets, and a header section of header fields."""
    if b"\x00" in raw:
        return False
    lines = raw.split(b"\r\n")
    if any(len(line) > MAX_LINE for line in lines):
        return False
    if not lines or not _HEADER_LINE_RE.match(lines[0]):
        return False
    for line in lines:
        if not line:
            return True
        if not (line[:1] in (b" ", b"\t") or _HEADER_LINE_RE.match(line)):
            return False
    return True


def _header_section(raw: bytes) -> bytes:
    """The header section of CRLF-normalised `raw`, made safe to carry as 8-bit text."""
    if raw.startswith(b"\r\n"):
        return b""
    end = raw.find(b"\r\n\r\n")
    section = raw[: end + 2] if end >= 0 else raw
    lines = section.replace(b"\x00", b"").split(b"\r\n")
    out = bytearray()
    for line in lines:
        if not line:
            continue
        if len(out) + len(line) > RETURN_CONTENT_LIMIT:
            break
        out += line[:MAX_LINE] + b"\r\n"
    return bytes(out)


def _returned_part(
    original: bytes, *, headers_only: bool, part_policy: policy.Policy
) -> tuple[MIMEPart, bool]:
    """The third part and whether it holds 8-bit data."""
    raw = _crlf(original)
    whole = not headers_only and len(original) <= RETURN_CONTENT_LIMIT and _is_transportable(raw)
    headers = _header_section(raw)
    utf8_headers = not headers.isascii()  # RFC 6532: message/global and its headers type
    if whole:
        content = raw
        content_type = "message/global" if utf8_headers else "message/rfc822"
        description = "Undelivered message"
    else:
        content = headers
        content_type = "message/global-headers" if utf8_headers else "text/rfc822-headers"
        description = "Undelivered message headers"
    part = MIMEPart(policy=part_policy)
    part["Content-Type"] = content_type
    part["Content-Description"] = description
    eight_bit = not content.isascii()
    if eight_bit:
        part["Content-Transfer-Encoding"] = "8bit"
    # A string payload is written out as it is (the message/* generator does not re-parse
    # it): the original comes back byte for byte, 8-bit data included.
    part.set_payload(content.decode("ascii", errors="surrogateescape"))
    return part, eight_bit


# --- Reading ---------------------------------------------------------------------------


class ParsedDsnRecipient(NamedTuple):
    final_recipient: str
    original_recipient: str
    action: str  # lower case
    status: str  # "5.1.1", or "" when missing
    diagnostic: str  # without its type: "550 5.1.1 No such user"
    remote_mta: str  # without its type: "mx.example.com"


@dataclass
class ParsedDsn:
    """What could be read from an inbound delivery report."""

    reporting_mta: str = ""
    original_envelope_id: str = ""
    original_message_id: str = ""
    original_queue_id: str = ""  # our X-A3-Queue-Id, when the returned headers carry it
    recipients: list[ParsedDsnRecipient] = field(default_factory=list)


_REPORT_TYPES = {"delivery-status", "global-delivery-status"}
_STATUS_TYPES = {"message/delivery-status", "message/global-delivery-status"}
_RETURNED_TYPES = {
    "message/rfc822",
    "message/global",
    "text/rfc822-headers",
    "message/global-headers",
    "message/rfc822-headers",  # not registered, but sent by some servers
}
# compat32 keeps header values as they came: a malformed header in a hostile report can
# not make reading it fail.
_report_parser = BytesParser(policy=policy.compat32)


def dsn_parse(raw: bytes) -> ParsedDsn | None:
    """Read a delivery report (RFC 3464, or its UTF-8 form of RFC 6533). None unless
    `raw` is a multipart/report of a delivery-status type; a malformed report gives
    what could be read. Never raises."""
    if not _declares_report(raw):
        return None  # most mail: decided from the header section alone
    try:
        return _parse_report(raw)
    except Exception:  # hostile input must not break delivery of the message
        logger.warning("unreadable delivery report (%d bytes)", len(raw), exc_info=True)
        return None


def _declares_report(raw: bytes) -> bool:
    end = re.search(rb"\r?\n\r?\n", raw)
    return b"multipart/report" in raw[: end.start() if end else len(raw)].lower()


def _parse_report(raw: bytes) -> ParsedDsn | None:
    message = _report_parser.parsebytes(raw)
    if message.get_content_type() != "multipart/report":
        return None
    report_type = message.get_param("report-type")
    if not report_type or collapse_rfc2231_value(report_type).strip().lower() not in _REPORT_TYPES:
        return None
    result = ParsedDsn()
    parts = message.get_payload()
    if not isinstance(parts, list):
        return result
    status_read = returned_read = False
    for part in parts[:MAX_REPORT_PARTS]:
        if not isinstance(part, MimeMessage):
            continue
        content_type = part.get_content_type()
        if content_type in _STATUS_TYPES and not status_read:
            _read_status(part, result)
            status_read = True
        elif content_type in _RETURNED_TYPES and not returned_read:
            _read_returned(part, result)
            returned_read = True
    return result


def _status_text(part: MimeMessage) -> str:
    """The text of a delivery-status part. The stdlib parses message/delivery-status into
    one sub-message per block (stray lines become a block's body), and the global form
    into a single message whose body holds the later blocks: put the text back
    together, and undo a transfer encoding (which RFC 6533 allows for the global form)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        data = part.get_payload(decode=True)  # undoes any transfer encoding
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else ""
    # In message/delivery-status a block's "body" follows its fields directly; in the
    # global form the body follows a real blank line.
    separator = b"" if part.get_content_type() == "message/delivery-status" else b"\n"
    chunks = []
    for block in payload:
        if not isinstance(block, MimeMessage):
            continue
        # Raw values hold undecodable bytes as surrogate escapes: give the bytes back.
        head = "".join(f"{name}: {value}\n" for name, value in block.raw_items())
        body = block.get_payload(decode=True)
        chunk = head.encode("utf-8", errors="surrogateescape")
        chunks.append(chunk + (separator + body if isinstance(body, bytes) and body else b""))
    data = b"\n".join(chunks)
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        try:
            data = base64.b64decode(data)
        except (binascii.Error, ValueError):
            data = b""
    elif encoding == "quoted-printable":
        data = quopri.decodestring(data)
    return data.decode("utf-8", errors="replace")


def _field_blocks(text: str) -> list[dict[str, str]]:
    """Blocks of `Name: value` fields separated by blank lines; names lower-cased,
    folded values unfolded, the first of repeated fields kept, other lines skipped."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in _LINE_BREAK_RE.split(text):
        if not line.strip():
            if current:
                blocks.append(current)
                if len(blocks) > MAX_REPORT_RECIPIENTS:
                    return blocks
            current, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                current[last] = f"{current[last]} {line.strip()}"[:4000]
            continue
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if not colon or not _FIELD_NAME_RE.fullmatch(key) or key in current:
            last = ""
            continue
        current[key] = value.strip()[:4000]
        last = key
    if current:
        blocks.append(current)
    return blocks


def _typed_value(value: str) -> str:
    """`dns; mx.example.com` → `mx.example.com`: the value without its type."""
    kind, semicolon, rest = value.partition(";")
    if semicolon and _ADDRESS_TYPE_RE.fullmatch(kind.strip()):
        return rest.strip()
    return value.strip()


def _xtext_char(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
        return chr(code)
    return match.group(0)


def _address_value(value: str) -> str:
    kind = value.partition(";")[0].strip().lower()
    address = _typed_value(value)
    if kind == "utf-8":
        address = _EMBEDDED_UNICODE_RE.sub(_xtext_char, address)
    return address.strip().strip("<>").strip()


def _is_recipient_block(block: dict[str, str]) -> bool:
    return "final-recipient" in block or "original-recipient" in block


def _read_status(part: MimeMessage, result: ParsedDsn) -> None:
    blocks = _field_blocks(_status_text(part))
    per_message = blocks[0] if blocks and not _is_recipient_block(blocks[0]) else {}
    result.reporting_mta = _typed_value(per_message.get("reporting-mta", ""))[:253]
    result.original_envelope_id = per_message.get("original-envelope-id", "")[:500]
    for block in [b for b in blocks if _is_recipient_block(b)][:MAX_REPORT_RECIPIENTS]:
        status = _STATUS_RE.search(block.get("status", ""))
        action = block.get("action", "").split()
        result.recipients.append(
            ParsedDsnRecipient(
                final_recipient=_address_value(block.get("final-recipient", ""))[:254],
                original_recipient=_address_value(block.get("original-recipient", ""))[:254],
                action=action[0].lower().rstrip(";") if action else "",
                status=status.group(0) if status else "",
                diagnostic=_typed_value(block.get("diagnostic-code", ""))[:2000],
                remote_mta=_typed_value(block.get("remote-mta", ""))[:253],
            )
        )


def _raw_header(headers: MimeMessage, name: str) -> str | None:
    for key, value in headers.raw_items():
        if str(key).lower() == name.lower():
            return value if isinstance(value, str) else str(value)
    return None


def _read_returned(part: MimeMessage, result: ParsedDsn) -> None:
    """Message-ID and X-A3-Queue-Id of the returned message or its headers."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/*: the stdlib parsed it as a message
        headers = payload[0] if payload and isinstance(payload[0], MimeMessage) else None
    else:  # text/rfc822-headers, possibly transfer-encoded
        data = part.get_payload(decode=True)
        headers = _report_parser.parsebytes(data, headersonly=True) if isinstance(data, bytes) else None
    if headers is None:
        return
    message_id = _raw_header(headers, "Message-ID")
    if message_id is not None:
        result.original_message_id = _message_id(message_id)
    queue_id = _raw_header(headers, "X-A3-Queue-Id")
    if queue_id is not None:
        result.original_queue_id = _readable(queue_id).strip()[:64]


def _readable(value: str) -> str:
    """A raw header value unfolded, with undecodable bytes replaced and no NULs."""
    unfolded = "".join(_LINE_BREAK_RE.split(value))
    text = unfolded.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return text.replace("\x00", "")


def _message_id(raw_value: str) -> str:
    """The Message-ID as message delivery stores it (Message.message_id_header), so the
    two compare equal."""
    try:
        value = str(policy.default.header_fetch_parse("Message-ID", raw_value))
    except Exception:  # noqa: BLE001 - the stdlib's structured parse of hostile input
        value = _readable(raw_value)
    return value.replace("\x00", "").strip()[:998]


# --- Recording remote reports ----------------------------------------------------------


def match_inbound_dsn(context: DeliveryContext) -> None:
    """Delivery stage: when an inbound message is a delivery report about mail we relayed,
    record it on the queue recipients it names. A failure marks a recipient we had handed
    over (state sent) as bounced, with the remote diagnostic; a delay only notes it.

    Only reports addressed to the relayed message's sender (or report address) count, and
    never one held back by an earlier stage. Idempotent; never raises; the report itself
    is filed like any other message."""
    message = context.message
    if message.submitted_by_id is not None or context.held:
        return
    try:
        report = dsn_parse(context.raw)
        if report is None or not report.recipients:
            return
        if report.original_message_id or report.original_queue_id:
            _dsn_record(message=message, report=report)
    except SoftTimeLimitExceeded:
        raise  # out of time: the delivery task stops and is retried
    except Exception:  # the report is still delivered; only the record is lost
        logger.exception("recording delivery report %s failed", message.queue_id)


def _dsn_record(*, message: Message, report: ParsedDsn) -> int:
    """Apply `report` to the queue recipients it is about; returns how many changed."""
    about = Q()
    if report.original_message_id:
        about |= Q(message__message_id_header=report.original_message_id)
    if report.original_queue_id:
        about |= Q(message__queue_id=report.original_queue_id)
    envelope = {a.lower() for a in message.recipients.values_list("address", flat=True)}
    # A report comes back to the reverse-path the message was sent with: one arriving for
    # someone else is not about this queue item.
    item_ids = [
        item["id"]
        for item in QueueItem.objects.filter(about)
        .exclude(message=message)
        .values("id", "sender", "report_to")
        if {item["sender"].lower(), item["report_to"].lower()} & envelope
    ]
    if not item_ids:
        return 0
    by_address: dict[str, ParsedDsnRecipient] = {}
    for entry in report.recipients:
        for address in (entry.final_recipient, entry.original_recipient):
            if address:
                by_address.setdefault(address.lower(), entry)
    changed = 0
    bounced: list[int] = []
    with transaction.atomic():
        rows = QueueRecipient.objects.select_for_update().filter(
            item_id__in=item_ids, state=QueueRecipient.State.SENT
        )
        for row in rows:
            entry = by_address.get(row.address.lower()) or (
                by_address.get(row.original_address.lower()) if row.original_address else None
            )
            if entry is None or entry.action not in {"failed", "delayed"}:
                continue
            changed += _apply(row, entry, reporting_mta=report.reporting_mta)
            if row.state == QueueRecipient.State.BOUNCED:
                bounced.append(row.pk)
        if bounced:
            # Bounces count towards the sender's behaviour (A3_BOUNCE_OBSERVERS: threats),
            # by dotted path so relay never imports the apps above it.
            for path in settings.A3_BOUNCE_OBSERVERS:
                import_string(path)(queue_recipient_ids=bounced)
    if changed:
        logger.info("delivery report %s updated %d queue recipient(s)", message.queue_id, changed)
    return changed


def _apply(row: QueueRecipient, entry: ParsedDsnRecipient, *, reporting_mta: str) -> int:
    diagnostic = _text(entry.diagnostic)
    where = _text(entry.remote_mta or reporting_mta)
    if entry.action == "delayed":
        note = f"Delayed{f' at {where}' if where else ''}: {diagnostic or entry.status or 'no reason given'}"
        if row.reply == note[:2000]:
            return 0
        row.reply = note[:2000]
        row.save(update_fields=["reply", "updated_at"])
        return 1
    code = _REPLY_RE.match(diagnostic)
    row.state = QueueRecipient.State.BOUNCED
    row.reply = (diagnostic or f"{entry.status} (reported by {where or 'the remote server'})")[:2000]
    row.reply_code = int(code.group(1)) if code and code.group(1) else None
    if entry.remote_mta:
        row.remote_host = _text(entry.remote_mta)[:253]
    row.save(update_fields=["state", "reply", "reply_code", "remote_host", "updated_at"])
    return 1


def _text(value: str) -> str:
    """PostgreSQL text columns cannot hold NUL."""
    return value.replace("\x00", "").strip()


# --- Local failures of submitted mail --------------------------------------------------------


def report_local_failures(context: DeliveryContext) -> None:
    """Delivery stage: tell the sender of submitted mail about local recipients it could
    not be delivered to (a mailbox disabled between RCPT and delivery, an alias whose
    destinations are all gone). Inbound mail was vouched for at RCPT; submitted mail got
    its 250 before delivery, so a failure here would otherwise go unnoticed."""
    message = context.message
    if message.submitted_by_id is None or not message.mail_from or not context.failures:
        return
    # on_record: the sender hears of the failed recipients even when the message is
    # held for the others (a release pass has no new failures, so none twice).
    context.on_record.append(_send_local_failure_report)


def _send_local_failure_report(context: DeliveryContext) -> None:
    from apps.mailboxes.models import MessageRecipient
    from apps.relay.services.queue import report_send

    message = context.message
    addresses = set(
        MessageRecipient.objects.filter(
            message=message, folder="", address__in=list(context.failures)
        ).values_list("address", flat=True)
    )  # the sender's own Sent copy is not a recipient
    if not addresses:
        return
    report = dsn_build(
        original=context.raw,
        report_to=message.mail_from,
        recipients=[
            DsnRecipient(
                address=address,
                action="failed",
                status="5.2.1" if "disabled" in context.failures[address] else "5.1.1",
                remote_mta=settings.A3_HOSTNAME,
                diagnostic=f"550 {context.failures[address]}",
            )
            for address in sorted(addresses)
        ],
        queue_id=message.queue_id,
        arrival=message.received_at,
    )
    report_send(raw=report, to=message.mail_from)
