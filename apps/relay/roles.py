"""The `smtp` role: the MX listener on A3_SMTP_LISTEN, hosted by `serve` or `smtpd`."""

from __future__ import annotations

import asyncio
import logging
import socket

from django.conf import settings

logger = logging.getLogger(__name__)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket with SO_REUSEPORT, so several smtpd processes can
    share one port and the kernel spreads connections across them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only disables Nagle (TCP_NODELAY) on sockets whose
    # proto is IPPROTO_TCP, and with Nagle on, each multi-line reply waits for the
    # client's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class SmtpRunner:
    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        default_host, default_port = settings.A3_SMTP_LISTEN
        self.host = host or default_host
        self.port = default_port if port is None else port
        self._server: asyncio.base_events.Server | None = None
        self._batcher = None

    async def start(self) -> None:
        from apps.relay.batching import AcceptBatcher
        from apps.relay.smtp import InboundHandler, make_protocol_factory
        from apps.relay.tls import server_tls_context

        tls_context = await asyncio.to_thread(server_tls_context)
        self._batcher = AcceptBatcher()
        self._batcher.start()
        factory = make_protocol_factory(InboundHandler(self._batcher), tls_context=tls_context)
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.get_running_loop().create_server(factory, sock=sock)

    async def stop(self) -> None:
        from apps.relay.smtp import HardenedSMTP

        if self._server is not None:
            self._server.close()  # stop accepting new sessions
        if self._batcher is not None:
            # Messages already past DATA are made durable and acknowledged first.
            await asyncio.wait_for(self._batcher.stop(), timeout=30)
        HardenedSMTP.close_all()

    def describe(self) -> str:
        return f"smtp://{self.host}:{self.port} (MX, STARTTLS)"


class SubmissionRunner:
    """The `submission` role: authenticated submission on A3_SUBMISSION_LISTEN (STARTTLS)
    and, when set, A3_SUBMISSIONS_LISTEN (implicit TLS)."""

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        default_host, default_port = settings.A3_SUBMISSION_LISTEN
        self.host = host or default_host
        self.port = default_port if port is None else port
        self.implicit: tuple[str, int] | None = settings.A3_SUBMISSIONS_LISTEN
        self._servers: list[asyncio.base_events.Server] = []

    async def start(self) -> None:
        from apps.relay.submission import make_submission_factory
        from apps.relay.tls import server_tls_context

        tls_context = await asyncio.to_thread(server_tls_context)
        loop = asyncio.get_running_loop()
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        factory = make_submission_factory(tls_context=tls_context, implicit_tls=False)
        self._servers.append(await loop.create_server(factory, sock=sock))
        if self.implicit is not None:
            sock = listening_socket(*self.implicit)
            self.implicit = (self.implicit[0], sock.getsockname()[1])
            factory = make_submission_factory(tls_context=tls_context, implicit_tls=True)
            self._servers.append(await loop.create_server(factory, sock=sock, ssl=tls_context))

    async def stop(self) -> None:
        from apps.relay.submission import SubmissionSMTP

        for server in self._servers:
            server.close()
        # Sessions past DATA finish storing first: their handler holds the transport.
        SubmissionSMTP.close_all()

    def describe(self) -> str:
        text = f"smtp://{self.host}:{self.port} (submission, STARTTLS)"
        if self.implicit is not None:
            text += f", smtps://{self.implicit[0]}:{self.implicit[1]} (submission, implicit TLS)"
        return text
