"""The inbound SMTP listener (MX): protocol hardening on top of aiosmtpd, and the handler
that turns envelopes into durable messages.

The handler is an adapter: recipient policy and storage live in apps.mailboxes services;
this module parses the protocol, maps outcomes to RFC 5321/3463 replies, and answers 250
only after `messages_accept` has made the message durable.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import re
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email.utils import format_datetime
from types import ModuleType
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from apps.mailboxes import services as mail_services
from apps.mailboxes.services import IncomingMessage, RecipientStatus
from apps.relay import services as relay_services
from apps.relay.batching import AcceptBatcher
from apps.relay.metrics import SMTP_CONNECTIONS, SMTP_MESSAGES, SMTP_REPLIES

logger = logging.getLogger(__name__)

# RFC 5321 §2.3.8: lines end in CRLF only. A bare CR or LF is how SMTP smuggling
# (CVE-2023-51766 and kin) hides a second message in one DATA section, so we refuse any
# message that contains one rather than guess what the client meant.
BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")
SAFE_HELO = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")
# Control characters never belong in an address; they would also end up in Return-Path.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# No legal line is longer than 1000 octets (RFC 5321 4.5.3.1.6). aiosmtpd keeps a DATA line
# that has no CRLF yet in memory whole, so a client streaming bytes without a line end
# could exhaust memory: past this many octets without CRLF the session is closed.
MAX_UNTERMINATED_LINE = 64 * 1024

# Enhanced status codes (RFC 3463) for replies that aiosmtpd writes without one.
_ENHANCED_DEFAULTS = {
    "221": "2.0.0",
    "250": "2.0.0",
    "235": "2.7.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}\b")


def client_bucket(address: str) -> str:
    """The unit the per-client connection cap counts: an IPv4 address, or an IPv6 /64
    (one customer network; counting single IPv6 addresses would make the cap useless)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def with_enhanced_code(status: str) -> str:
    code, sep, text = status[:3], status[3:4], status[4:]
    if _HAS_ENHANCED.match(status) or code not in _ENHANCED_DEFAULTS or sep not in {" ", "-"}:
        return status
    return f"{code}{sep}{_ENHANCED_DEFAULTS[code]} {text}"


# Threads for the listener's blocking work (lookups, blob fsyncs, commits), sized so
# that fsyncs of concurrent sessions overlap; kept apart from the loop's default pool.
_SMTP_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="smtp-io")


async def run_db(func: Any, /, **kwargs: Any) -> Any:
    """Run a synchronous service on a worker thread with healthy database connections."""

    def call() -> Any:
        close_old_connections()
        try:
            return func(**kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(call, thread_sensitive=False, executor=_SMTP_THREADS)()


async def run_io(func: Any, /, **kwargs: Any) -> Any:
    """Run blocking file work (no database) on the listener's threads."""
    return await asyncio.get_running_loop().run_in_executor(_SMTP_THREADS, lambda: func(**kwargs))


class HardenedSMTP(SMTP):
    """aiosmtpd's SMTP with limits a public MX needs: connections per client address,
    a cap on errors per session, and RFC 3463 enhanced codes on every reply."""

    connections_per_ip: Counter[str] = Counter()
    live: weakref.WeakSet[HardenedSMTP] = weakref.WeakSet()

    def __init__(self, handler: Any, *, max_per_ip: int, max_errors: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_per_ip = max_per_ip
        self.max_errors = max_errors
        self.error_count = 0
        self._counted_ip: str | None = None
        self._in_ehlo = False
        self._unterminated = 0  # octets received since the last CRLF
        self._after_cr = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._counted_ip is None and self.transport is None:
            peer = transport.get_extra_info("peername")
            ip = client_bucket(peer[0] if peer else "?")
            if sum(self.connections_per_ip.values()) >= settings.A3_SMTP_MAX_CONNECTIONS:
                SMTP_CONNECTIONS.labels(outcome="refused_total").inc()
                transport.write(b"421 4.3.2 Too many connections, try again later\r\n")
                transport.close()
                return
            if self.connections_per_ip[ip] >= self.max_per_ip:
                SMTP_CONNECTIONS.labels(outcome="refused_per_ip").inc()
                transport.write(b"421 4.7.0 Too many connections from your address, try later\r\n")
                transport.close()
                return
            self.connections_per_ip[ip] += 1
            self._counted_ip = ip
            self.live.add(self)

            SMTP_CONNECTIONS.labels(outcome="accepted").inc()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        end = data.rfind(b"\r\n")
        if end >= 0:
            self._unterminated = len(data) - end - 2
        elif self._after_cr and data[:1] == b"\n":
            self._unterminated = len(data) - 1
        else:
            self._unterminated += len(data)
        self._after_cr = data[-1:] == b"\r"
        if self._unterminated > MAX_UNTERMINATED_LINE:
            if self.transport is not None and not self.transport.is_closing():
                SMTP_REPLIES.labels(code="421").inc()
                self.transport.write(b"421 4.7.0 Line too long, closing connection\r\n")
                self.transport.close()
            return
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted_ip is not None:
            self.connections_per_ip[self._counted_ip] -= 1
            if self.connections_per_ip[self._counted_ip] <= 0:
                del self.connections_per_ip[self._counted_ip]
            self._counted_ip = None
        if self.transport is not None or self._handler_coroutine is not None:
            super().connection_lost(error)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_HELO(self, hostname: str) -> None:
        # RFC 2034 §3: no enhanced code in the reply to HELO either.
        self._in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", errors="replace")
        if not self._in_ehlo:
            status = with_enhanced_code(status)
        SMTP_REPLIES.labels(code=status[:3]).inc()
        await super().push(status)
        if status[:1] in {"4", "5"} and not status.startswith("421"):
            self.error_count += 1
            if self.error_count >= self.max_errors and self.transport is not None:
                await super().push("421 4.7.0 Too many errors in this session, closing connection")
                self.transport.close()

    @classmethod
    def close_all(cls) -> None:
        """Tell every open session we are going away (RFC 5321 §3.8) and close it."""
        for protocol in list(cls.live):
            if type(protocol) is not cls:
                continue  # each listener closes its own sessions
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
                transport.close()


# RFC 5321 §6.3: a message that has passed this many hosts is in a loop (two servers
# forwarding to each other, say); Postfix uses the same limit.
MAX_HOPS = 50
_RECEIVED = re.compile(rb"^Received:", re.IGNORECASE | re.MULTILINE)
_REPORT_TYPE = re.compile(rb"^Content-Type:[ \t]*multipart/report", re.IGNORECASE | re.MULTILINE)


def _header_section(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def hop_count(content: bytes) -> int:
    """How many Received headers the message carries."""
    return len(_RECEIVED.findall(_header_section(content)))


def is_delivery_report(content: bytes) -> bool:
    return bool(_REPORT_TYPE.search(_header_section(content)))


def _helo_label(session: Session) -> str:

    return SAFE_HELO.sub("", session.host_name or "unknown")[:255] or "unknown"


def received_header(*, session: Session, envelope: Envelope, queue_id: str) -> bytes:
    """Trace header (RFC 5321 §4.4) naming our host, the client and the protocol."""
    peer_ip = session.peer[0] if session.peer else "unknown"
    tls = session.ssl is not None
    protocol = ("UTF8SMTP" if envelope.smtp_utf8 else "ESMTP" if session.extended_smtp else "SMTP") + (
        "S" if tls else ""
    )
    recipient = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
    header = (
        f"Received: from {_helo_label(session)} ([{peer_ip}])\r\n"
        f"\tby {settings.A3_HOSTNAME} (A3Mailer) with {protocol} id {queue_id}{recipient};\r\n"
        f"\t{format_datetime(timezone.now())}\r\n"
    )
    return header.encode("utf-8")


def _mail_size(options: list[str]) -> int | None:
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _is_utf8(text: str) -> bool:
    """False for arguments with undecodable bytes (aiosmtpd keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sender_syntax_problem(envelope: Envelope, sender: str) -> str | None:
    """The reply refusing a MAIL FROM address on syntax alone, or None."""
    if not envelope.smtp_utf8 and not sender.isascii():
        return "553 5.6.7 Non-ASCII sender address requires SMTPUTF8"
    if CONTROL_CHARS.search(sender) or not _is_utf8(sender):
        return "553 5.1.7 Bad sender address syntax"
    return None


def recipient_limit_problem(envelope: Envelope, address: str) -> str | None:
    """The reply refusing one more RCPT before looking the address up, or None."""
    if len(envelope.rcpt_tos) >= settings.A3_SMTP_MAX_RECIPIENTS:
        return "452 4.5.3 Too many recipients"
    if not envelope.smtp_utf8 and not address.isascii():
        return "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8"
    return None


RCPT_REPLIES = {
    RecipientStatus.UNKNOWN: "550 5.1.1 No such user here",
    RecipientStatus.DISABLED: "550 5.2.1 Mailbox disabled, not accepting messages",
    RecipientStatus.OVER_QUOTA: "452 4.2.2 Mailbox full, try again later",
    RecipientStatus.NEVER_FITS: "552 5.2.2 Message is larger than the mailbox quota",
    RecipientStatus.BAD_SYNTAX: "501 5.1.3 Bad recipient address syntax",
    RecipientStatus.NOT_LOCAL: "554 5.7.1 Relay access denied",
}


def smtp_checks_module() -> ModuleType | None:
    """The SMTP-time threat checks (A3_SMTP_CHECKS names the module; empty: none). Loaded
    by name so that relay does not depend on the apps that implement them."""
    path = settings.A3_SMTP_CHECKS
    return importlib.import_module(path) if path else None


def _peer_ip(session: Session) -> str | None:
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) and peer else None


class InboundHandler:
    """aiosmtpd handler for the MX listener: local recipients only, durable before 250.

    With A3_SMTP_CHECKS set, it also runs the threat checks of that module: block lists
    once per connection, SPF at every MAIL FROM (recorded, never refused there), and a
    verdict at each local RCPT that may refuse it with 550 5.7.1. Their findings are
    stored with the message (Message.smtp_checks) for the scan after DATA."""

    def __init__(self, batcher: AcceptBatcher) -> None:
        self.batcher = batcher

    async def handle_exception(self, error: Exception) -> str:
        """Any unexpected failure (a locked or unreachable database, say) is temporary
        to the client: it will retry, nothing it sent is lost, and no internals leak."""
        logger.exception("SMTP session failed", exc_info=error)
        return "451 4.3.0 Temporary failure, try again later"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd advertises SIZE, 8BITMIME, SMTPUTF8 and STARTTLS itself; it also
        # handles pipelined commands, and every reply we send carries an enhanced code.
        # The MX takes no logins (that is the submission listener's job): aiosmtpd would
        # advertise AUTH after STARTTLS, with nothing able to accept it.
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        kept = [line for line in responses[:-1] if not line[4:].upper().startswith("AUTH")]
        return kept + extra + responses[-1:]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        sender = "" if address == "<>" else address
        problem = sender_syntax_problem(envelope, sender)
        if problem:
            return problem
        if len(sender.encode()) > 254:
            return "553 5.1.7 Sender address too long"
        envelope.mail_from = sender or "<>"
        envelope.mail_options.extend(mail_options)
        envelope.a3_size = _mail_size(mail_options)  # type: ignore[attr-defined]
        envelope.a3_checks = await self._sender_checks(session, sender)  # type: ignore[attr-defined]
        return "250 2.1.0 Sender OK"

    async def _sender_checks(self, session: Session, sender: str) -> list[Any] | None:
        """The block list check (once per connection) and SPF for this sender. DNS work
        runs on the listener's threads; nothing here refuses the MAIL command."""
        checks = smtp_checks_module()
        if checks is None:
            return None
        peer_ip = _peer_ip(session)
        connection = getattr(session, "a3_connection_check", None)
        if connection is None:
            connection = await run_io(checks.connection_check, peer_ip=peer_ip)
            session.a3_connection_check = connection  # type: ignore[attr-defined]
        sender_check = await run_io(
            checks.mail_from_check, peer_ip=peer_ip, helo=session.host_name or "", mail_from=sender
        )
        return [connection, sender_check]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        problem = recipient_limit_problem(envelope, address)
        if problem:
            return problem
        if relay_services.srs_is_address(address):
            return await self._srs_recipient(envelope, address)
        verdict = await run_db(
            mail_services.recipient_check, address=address, size=getattr(envelope, "a3_size", None)
        )
        if not verdict.accepted:
            return RCPT_REPLIES[verdict.status]
        if verdict.address in envelope.rcpt_tos:
            return "250 2.1.5 Recipient OK (duplicate ignored)"
        refusal = await self._threat_refusal(session, envelope, verdict.address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(verdict.address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def _threat_refusal(self, session: Session, envelope: Envelope, address: str) -> str | None:
        """The SMTP-time checks' 550 for this local recipient (its domain's policy and
        lists decide), or None."""
        found = getattr(envelope, "a3_checks", None)
        checks = smtp_checks_module()
        if checks is None or found is None:
            return None
        return await run_db(
            checks.recipient_address_check,
            peer_ip=_peer_ip(session),
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            address=address,
            checks=found,
        )

    async def _srs_recipient(self, envelope: Envelope, address: str) -> str:
        """One of our SRS addresses: a bounce of mail we forwarded, relayed back to the
        original sender. Only bounces (null sender) are taken: anything else would make
        every SRS address an open relay for its lifetime."""
        if envelope.mail_from not in ("<>", ""):
            return "550 5.7.1 This address accepts delivery reports only"
        try:
            original = await run_db(relay_services.srs_reverse, address=address)
        except relay_services.SrsError:
            return "550 5.1.1 No such user here (invalid or expired SRS address)"
        srs = getattr(envelope, "a3_srs", None)
        if srs is None:
            srs = envelope.a3_srs = {}  # type: ignore[attr-defined]
        srs[address] = original
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: bytes = envelope.original_content or b""
        if BARE_LINE_ENDING.search(content):
            SMTP_MESSAGES.labels(outcome="bare_line_ending").inc()
            return "550 5.6.0 Bare CR or LF in message; lines must end with CRLF (RFC 5321 2.3.8)"
        if hop_count(content) > MAX_HOPS:
            SMTP_MESSAGES.labels(outcome="loop").inc()
            return "554 5.4.6 Too many hops: mail loop detected (RFC 5321 6.3)"
        if getattr(envelope, "a3_srs", None) and not is_delivery_report(content):
            return "550 5.7.1 Our SRS addresses accept delivery reports (multipart/report) only"
        declared = getattr(envelope, "a3_size", None)
        if declared is None or len(content) > declared:  # RCPT checked the declared size only
            refusal = await self._quota_refusal(envelope, len(content))
            if refusal:
                return refusal
        queue_id = mail_services.new_queue_id()
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        trace = f"Return-Path: <{mail_from}>\r\n".encode() + received_header(
            session=session, envelope=envelope, queue_id=queue_id
        )
        srs: dict[str, str] = getattr(envelope, "a3_srs", {})
        found = getattr(envelope, "a3_checks", None)
        checks = smtp_checks_module() if found is not None else None
        incoming = IncomingMessage(
            queue_id=queue_id,
            mail_from=mail_from,
            recipients=tuple(r for r in envelope.rcpt_tos if r not in srs),
            raw=trace + content,
            peer_ip=session.peer[0] if session.peer else None,
            helo=_helo_label(session),
            smtp_checks=checks.smtp_checks_record(checks=found) if checks is not None else {},
        )
        try:
            if srs:
                await run_db(relay_services.srs_bounce_accept, incoming=incoming, srs_recipients=srs)
            else:
                await self.batcher.submit(incoming)
        except Exception:
            logger.exception("could not store message %s", queue_id)
            SMTP_MESSAGES.labels(outcome="temporary_failure").inc()
            return "451 4.3.0 Temporary failure storing the message, try again later"
        SMTP_MESSAGES.labels(outcome="accepted").inc()
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _quota_refusal(self, envelope: Envelope, size: int) -> str | None:
        """Without SIZE at MAIL, quotas are checked once the size is known: refuse only
        when no recipient can take the message (one reply covers them all)."""
        verdicts = [
            await run_db(mail_services.recipient_check, address=address, size=size)
            for address in envelope.rcpt_tos
        ]
        if any(v.accepted for v in verdicts):
            return None
        if all(v.status is RecipientStatus.NEVER_FITS for v in verdicts):
            return "552 5.2.2 Message is larger than the mailbox quota"
        if any(v.status is RecipientStatus.OVER_QUOTA for v in verdicts):
            return "452 4.2.2 Mailbox full, try again later"
        return None


def make_protocol_factory(handler: InboundHandler, *, tls_context: Any) -> Any:
    def factory() -> HardenedSMTP:
        return HardenedSMTP(
            handler,
            max_per_ip=settings.A3_SMTP_MAX_CONNECTIONS_PER_IP,
            max_errors=settings.A3_SMTP_MAX_ERRORS,
            data_size_limit=settings.A3_MAX_MESSAGE_SIZE,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.A3_HOSTNAME,
            ident="A3Mailer ESMTP",
            tls_context=tls_context,
            require_starttls=False,
            timeout=settings.A3_SMTP_TIMEOUT_SECONDS,
        )

    return factory
