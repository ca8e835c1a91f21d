"""An SMTP load generator on raw asyncio streams.

C sessions share one pool of N messages. Each session connects once, says EHLO, then
repeats MAIL / RCPT / DATA for as many messages as it can take from the pool (as
`smtp-source -d` does), waiting for every reply (no pipelining, like smtp-source). The
acknowledgement latency of a message is the time from the end of its DATA section being
handed to the kernel until its final reply arrives.

For a submission listener a session can also say STARTTLS (without checking the
certificate: the servers under test use self-signed ones) and AUTH PLAIN before its first
message. The acknowledgement time of every message is kept by sequence number, so the
outbound benchmark can match it with the time the message reached the remote sink.

Every message attempted is counted once: a session that loses its connection stops, and the
messages nobody could send are errors too, so a run always ends after at most N attempts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate

CRLF = b"\r\n"
BODY_LINE = 76  # characters per body line, the usual MUA wrap


class SmtpReplyError(Exception):
    """A reply we cannot continue the session after (EOF, garbage, 421)."""


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    messages: int
    concurrency: int
    size: int  # body bytes, headers excluded (like smtp-source -l)
    sender: str = "sender@bench.test"
    recipient: str = "bench@bench.test"
    tag: str = "bench"  # in every Message-ID, so no two runs send the same message
    reply_timeout: float = 120.0
    connect_timeout: float = 10.0
    starttls: bool = False  # STARTTLS after EHLO (then EHLO again)
    auth: tuple[str, str] | None = None  # AUTH PLAIN username, password


@dataclass
class LoadResult:
    attempted: int = 0
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, per accepted message
    error_replies: Counter[str] = field(default_factory=Counter)  # "RCPT 550 ..." → messages
    session_failures: Counter[str] = field(default_factory=Counter)  # before any message
    first_send: float | None = None  # time.monotonic() of the first MAIL command
    last_ack: float | None = None  # time.monotonic() of the last 250 after DATA
    acked_at: dict[int, float] = field(default_factory=dict)  # sequence number → time of its 250

    @property
    def errors(self) -> int:
        """Messages not acknowledged with 250 (refused, failed or never sent)."""
        return sum(self.error_replies.values())

    def accepted_rate(self) -> float | None:
        """Messages acknowledged per second, first send → last 250."""
        if not self.accepted or self.first_send is None or self.last_ack is None:
            return None
        return self.accepted / max(self.last_ack - self.first_send, 1e-9)

    def latency_ms(self, percentile: float) -> float | None:
        """Nearest-rank percentile of the acknowledgement latency, in milliseconds."""
        found = nearest_rank(self.latencies, percentile)
        return None if found is None else found * 1000

    def error(self, what: str) -> None:
        self.error_replies[what[:120]] += 1


def nearest_rank(values: list[float], percentile: float) -> float | None:
    """The nearest-rank percentile of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percentile / 100 * len(ordered))) - 1]


def message_body(size: int) -> bytes:
    """About `size` bytes (exact unless size % 76 == 1) of plain text in CRLF lines. No
    line starts with ".", so the body needs no dot-stuffing."""
    full, rest = divmod(size, BODY_LINE)
    body = (b"x" * (BODY_LINE - 2) + CRLF) * full
    if rest:
        body += b"y" * max(rest - 2, 0) + CRLF
    return body


def message_id(spec: LoadSpec, seq: int) -> str:
    return f"<{spec.tag}.{seq}@loadgen.bench.test>"


def message_bytes(spec: LoadSpec, seq: int, body: bytes) -> bytes:
    """One unique RFC 5322 message with the shared body (plus the CRLF that ends DATA)."""
    headers = (
        f"From: <{spec.sender}>\r\n"
        f"To: <{spec.recipient}>\r\n"
        f"Subject: bench {spec.tag} #{seq}\r\n"
        f"Message-ID: {message_id(spec, seq)}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    return headers + body + b".\r\n"


async def read_reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    """One (possibly multi-line) SMTP reply: its code and its last line's text."""
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line.endswith(b"\n"):
            raise SmtpReplyError("connection closed by the server")
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if len(text) < 3 or not text[:3].isdigit():
            raise SmtpReplyError(f"malformed reply {text[:60]!r}")
        if text[3:4] != "-":
            code = int(text[:3])
            if code == 421:
                raise SmtpReplyError(text)
            return code, text


class _Pool:
    """The messages still to send; sessions take sequence numbers until it is empty."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    def take(self) -> int | None:
        if self.taken >= self.total:
            return None
        self.taken += 1
        return self.taken

    def remaining(self) -> int:
        return self.total - self.taken


class _Session:
    def __init__(self, spec: LoadSpec, pool: _Pool, body: bytes, result: LoadResult) -> None:
        self.spec = spec
        self.pool = pool
        self.body = body
        self.result = result
        self.size_param = False

    async def command(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, line: str):
        writer.write(line.encode() + CRLF)
        await writer.drain()
        return await read_reply(reader, self.spec.reply_timeout)

    async def run(self) -> None:
        spec = self.spec
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(spec.host, spec.port), spec.connect_timeout
        )
        try:
            code, text = await read_reply(reader, spec.reply_timeout)
            if code != 220:
                raise SmtpReplyError(f"greeting {text}")
            await self._hello(reader, writer)
            if spec.starttls:
                code, text = await self.command(writer, reader, "STARTTLS")
                if code != 220:
                    raise SmtpReplyError(f"STARTTLS {text}")
                await writer.start_tls(_insecure_tls())
                await self._hello(reader, writer)  # RFC 3207: forget what was said before TLS
            if spec.auth:
                username, password = spec.auth
                token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
                code, text = await self.command(writer, reader, f"AUTH PLAIN {token}")
                if code != 235:
                    raise SmtpReplyError(f"AUTH {text}")
            while (seq := self.pool.take()) is not None:
                try:
                    await self.send_one(reader, writer, seq)
                except (SmtpReplyError, OSError, TimeoutError) as exc:
                    self.result.error(f"session: {exc or type(exc).__name__}")
                    return  # this message is counted; the others go to live sessions
            with contextlib.suppress(SmtpReplyError, OSError, TimeoutError):
                await self.command(writer, reader, "QUIT")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.size_param = False
        writer.write(b"EHLO loadgen.bench.test\r\n")
        await writer.drain()
        code, text = await self._ehlo(reader)
        if code != 250:
            raise SmtpReplyError(f"EHLO {text}")

    async def _ehlo(self, reader: asyncio.StreamReader) -> tuple[int, str]:
        # Read the EHLO lines ourselves to learn whether SIZE is offered: real MTAs
        # declare the size at MAIL when it is, and servers may check quotas with it.
        while True:
            line = await asyncio.wait_for(reader.readline(), self.spec.reply_timeout)
            if not line.endswith(b"\n"):
                raise SmtpReplyError("connection closed during EHLO")
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text[4:].upper().split(" ")[0] == "SIZE":
                self.size_param = True
            if text[3:4] != "-":
                return int(text[:3]) if text[:3].isdigit() else 0, text

    async def send_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seq: int) -> None:
        spec, result = self.spec, self.result
        data = message_bytes(spec, seq, self.body)
        result.attempted += 1
        if result.first_send is None:
            result.first_send = time.monotonic()
        size = f" SIZE={len(data)}" if self.size_param else ""
        for verb, line, expected in (
            ("MAIL", f"MAIL FROM:<{spec.sender}>{size}", 250),
            ("RCPT", f"RCPT TO:<{spec.recipient}>", 250),
            ("DATA", "DATA", 354),
        ):
            code, text = await self.command(writer, reader, line)
            if code != expected:
                result.error(f"{verb} {text}")
                # The next message starts clean; if the connection is gone, the next
                # command finds out and ends the session.
                with contextlib.suppress(SmtpReplyError, OSError, TimeoutError):
                    await self.command(writer, reader, "RSET")
                return
        writer.write(data)
        await writer.drain()
        sent = time.monotonic()
        code, text = await read_reply(reader, spec.reply_timeout)
        acked = time.monotonic()
        if code == 250:
            result.accepted += 1
            result.latencies.append(acked - sent)
            result.last_ack = acked
            result.acked_at[seq] = acked
        else:
            result.error(f"DATA-END {text}")


def _insecure_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the servers under test present self-signed certificates
    return context


async def run_load(spec: LoadSpec) -> LoadResult:
    """Send spec.messages messages over spec.concurrency sessions; never raises for
    server-side failures, which are counted in the result instead."""
    result = LoadResult()
    pool = _Pool(spec.messages)
    body = message_body(spec.size)

    async def session() -> None:
        try:
            await _Session(spec, pool, body, result).run()
        except (SmtpReplyError, OSError, TimeoutError) as exc:
            # No message was in flight: the pool's messages go to the other sessions.
            result.session_failures[f"{exc or type(exc).__name__}"[:120]] += 1

    await asyncio.gather(*(session() for _ in range(max(1, spec.concurrency))))
    if pool.remaining():  # every session died: what was never sent failed too
        result.error_replies["not sent: no live session"] += pool.remaining()
    return result
