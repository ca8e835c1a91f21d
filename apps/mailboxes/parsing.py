"""Reading stored messages: metadata for the index, text and HTML for the viewer, and
attachments. Built on the stdlib `email` package (policy.default); never raises on
malformed input, so parsing can never lose a message.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

BODY_TEXT_LIMIT = 64 * 1024  # characters kept for search
MAX_PARTS = 2000  # walk at most this many MIME parts
HEADER_LIMIT = 998 * 4

_parser = BytesParser(policy=policy.default)


@dataclass
class AttachmentInfo:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass
class ParsedMessage:
    message_id: str = ""
    subject: str = ""
    from_header: str = ""
    to_header: str = ""
    cc_header: str = ""
    date: datetime | None = None
    text: str = ""
    html: str | None = None
    attachments: list[AttachmentInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def has_attachments(self) -> bool:
        return bool(self.attachments)


def _raw_value(value: str) -> str:
    """A header value as it was sent: unfolded, undecodable bytes replaced."""
    text = str(value).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return text.replace("\r\n", "").replace("\n", "").strip()


def _header(message: EmailMessage, name: str, problems: list[str]) -> str:
    try:
        value = message.get(name)
        return "" if value is None else str(value)[:HEADER_LIMIT]
    except Exception as exc:  # noqa: BLE001 - malformed headers must not stop parsing
        problems.append(f"{name}: {type(exc).__name__}")
        # The structured parse failed: fall back to the raw value (get_all would
        # parse it the same way and raise again).
        raw = [v for k, v in message.raw_items() if k.lower() == name.lower()]
        return _raw_value(raw[0])[:HEADER_LIMIT] if raw else ""


def _date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _part_content(part: EmailMessage) -> str | bytes | None:
    try:
        return part.get_content()
    except Exception:  # noqa: BLE001 - unknown charsets, broken base64...
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            return (
                payload.decode("utf-8", errors="replace")
                if part.get_content_maintype() == "text"
                else payload
            )
        return None


def _parse(raw: bytes) -> tuple[EmailMessage | None, list[str]]:
    try:
        return _parser.parsebytes(raw), []
    except Exception as exc:  # noqa: BLE001
        return None, [f"unparseable: {type(exc).__name__}"]


def _walk(message: EmailMessage) -> list[EmailMessage]:
    parts: list[EmailMessage] = []
    for part in message.walk():
        parts.append(part)
        if len(parts) >= MAX_PARTS:
            break
    return parts


def _filename(part: EmailMessage) -> str:
    try:
        return part.get_filename() or ""
    except Exception:  # noqa: BLE001
        return ""


def _is_attachment(part: EmailMessage) -> bool:
    if part.is_multipart():
        return False
    try:
        disposition = part.get_content_disposition()
    except Exception:  # noqa: BLE001
        disposition = None
    if disposition == "attachment":
        return True
    return (bool(_filename(part)) and part.get_content_maintype() != "text") or (
        disposition == "inline" and part.get_content_maintype() not in {"text", "multipart"}
    )


def parse_message(raw: bytes) -> ParsedMessage:
    """Best-effort metadata, text, HTML and attachment list of a raw message."""
    result = ParsedMessage()
    message, problems = _parse(raw)
    result.problems.extend(problems)
    if message is None:
        result.text = raw[:BODY_TEXT_LIMIT].decode("utf-8", errors="replace")
        return result
    result.message_id = _header(message, "Message-ID", result.problems).strip()[:998]
    result.subject = _header(message, "Subject", result.problems)
    result.from_header = _header(message, "From", result.problems)
    result.to_header = _header(message, "To", result.problems)
    result.cc_header = _header(message, "Cc", result.problems)
    result.date = _date(_header(message, "Date", result.problems))
    for defect in getattr(message, "defects", [])[:20]:
        result.problems.append(type(defect).__name__)

    texts: list[str] = []
    for index, part in enumerate(_walk(message)):
        if part.is_multipart():
            continue
        if _is_attachment(part):
            payload = part.get_payload(decode=True)
            result.attachments.append(
                AttachmentInfo(
                    index=index,
                    filename=_filename(part) or f"part-{index}",
                    content_type=part.get_content_type(),
                    size=len(payload) if isinstance(payload, bytes) else 0,
                )
            )
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain":
            content = _part_content(part)
            if isinstance(content, str):
                texts.append(content)
        elif content_type == "text/html" and result.html is None:
            content = _part_content(part)
            if isinstance(content, str):
                result.html = content
    result.text = "\n".join(texts)
    return result


def search_text(parsed: ParsedMessage) -> str:
    """The body text kept for full-text search (HTML-only mail contributes its text)."""
    text = parsed.text
    if parsed.html:
        import nh3

        # Words that only the HTML part carries must be findable too.
        html_text = nh3.clean(parsed.html, tags=set())
        text = f"{text}\n{html_text}" if text else html_text
    return text[:BODY_TEXT_LIMIT]


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    """Every header, in order, as (name, value) with encoded words decoded."""
    message, _ = _parse(raw)
    if message is None:
        return []
    out: list[tuple[str, str]] = []
    for name, raw in list(message.raw_items())[:500]:
        try:  # header by header: one malformed header keeps the others decoded
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # noqa: BLE001
            value = _raw_value(raw)
        out.append((str(name), value[:HEADER_LIMIT]))
    return out


def attachment_of(raw: bytes, index: int) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of the MIME part at `index`, or None."""
    message, _ = _parse(raw)
    if message is None:
        return None
    parts = _walk(message)
    if not 0 <= index < len(parts) or parts[index].is_multipart():
        return None
    part = parts[index]
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = b""
    return _filename(part) or f"part-{index}", part.get_content_type(), payload
