"""Remote mail servers for tests: real aiosmtpd servers on loopback ports that accept,
refuse temporarily or permanently, drop the connection in DATA, or stall, so the relay
talks real SMTP to them."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    content: bytes
    tls: bool
    mail_options: list[str]


@dataclass
class Behaviour:
    """What the server does. Replies are full SMTP lines ("451 4.3.0 Try later")."""

    rcpt_reply: dict[str, str] = field(default_factory=dict)  # per recipient
    rcpt_default: str = ""  # "" accepts
    data_reply: str = ""  # "" accepts with 250
    drop_in_data: bool = False  # close the connection instead of answering DATA
    stall: str = ""  # "rcpt" or "data": never answer
    no_8bitmime: bool = False
    no_smtputf8: bool = False
    size_limit: int = 0


class _Handler:
    def __init__(self, server: RemoteMta) -> None:
        self.server = server

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        session.host_name = hostname
        behaviour = self.server.behaviour
        kept = []
        for line in responses:
            text = line[4:].upper()
            if behaviour.no_8bitmime and text.startswith("8BITMIME"):
                continue
            if behaviour.no_smtputf8 and text.startswith("SMTPUTF8"):
                continue
            if text.startswith("SIZE") and behaviour.size_limit:
                line = f"{line[:4]}SIZE {behaviour.size_limit}"
            kept.append(line)
        if kept and not kept[-1].startswith("250 "):
            kept[-1] = "250 " + kept[-1][4:]
        return kept

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options):
        behaviour = self.server.behaviour
        self.server.rcpt_seen.append(address)
        if behaviour.stall == "rcpt":
            await asyncio.sleep(3600)
        reply = behaviour.rcpt_reply.get(address, behaviour.rcpt_default)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
        behaviour = self.server.behaviour
        if behaviour.stall == "data":
            await asyncio.sleep(3600)
        if behaviour.drop_in_data:
            server.transport.close()
            return "421 closing"
        if behaviour.data_reply:
            return behaviour.data_reply
        self.server.received.append(
            Received(
                mail_from=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                content=envelope.original_content or b"",
                tls=session.ssl is not None,
                mail_options=list(envelope.mail_options),
            )
        )
        self.server.arrived.set()
        return f"250 2.0.0 Ok: queued as R{len(self.server.received)}"


class _Controller(Controller):
    def __init__(self, server: RemoteMta, **kwargs) -> None:
        self.remote = server
        super().__init__(_Handler(server), **kwargs)

    def factory(self) -> SMTP:
        behaviour = self.remote.behaviour
        return SMTP(
            self.handler,
            hostname="remote.test",
            decode_data=False,
            enable_SMTPUTF8=not behaviour.no_smtputf8,
            tls_context=self.remote.tls_context,
            data_size_limit=behaviour.size_limit or 33554432,
        )


class RemoteMta:
    """One remote server on 127.0.0.1 (or another loopback address) and a free port."""

    def __init__(self, behaviour: Behaviour | None = None, *, host: str = "127.0.0.1", starttls: bool = True):
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self.port = free_port(host)
        self.received: list[Received] = []
        self.rcpt_seen: list[str] = []
        self.arrived = threading.Event()
        self.tls_context = _tls_context() if starttls else None
        self._controller = _Controller(self, hostname=host, port=self.port, ready_timeout=10)

    def start(self) -> RemoteMta:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


_PAIR: tuple[Path, Path] | None = None


def _tls_context() -> ssl.SSLContext:
    global _PAIR
    from apps.relay.tls import self_signed_pair

    if _PAIR is None:
        _PAIR = self_signed_pair(Path(tempfile.mkdtemp(prefix="a3remote-")), "remote.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*_PAIR)
    return context
