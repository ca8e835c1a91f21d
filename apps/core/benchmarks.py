"""What the benchmarks (bench_smtp, bench_scan) share: an offline resolver that answers
NXDOMAIN to every query at once, over UDP on a loopback port (the servers compared with
ours make no DNS queries either: Postfix for local delivery, Rspamd with its network
modules off, spamd with -L, so no figure includes waiting for DNS), and the reporting
around a bench command's run."""

from __future__ import annotations

import os
import signal
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

import dns.exception
import dns.message
import dns.rcode
from django.core.management.base import BaseCommand, CommandError


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), self.client_address)


class NxdomainServer:
    def __init__(self) -> None:
        self.server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> NxdomainServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BenchReport(Protocol):
    loadavg_at_start: tuple[float, ...]
    elapsed_s: float
    failed: bool

    def write_json(self, path: Path) -> None: ...

    def markdown(self) -> str: ...


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a run the way Ctrl-C does: everything cleaned up


def bench_command_run(
    command: BaseCommand,
    run: Callable[[Callable[[str], None]], BenchReport],
    *,
    output: Path,
    failure: str,
) -> None:
    """What a bench management command does around its run: progress lines as they come,
    SIGTERM treated like Ctrl-C, then the Markdown tables, the JSON file and the load the
    run started under; CommandError(`failure`) if something could not be measured."""

    def say(line: str) -> None:
        command.stdout.write(line)
        command.stdout.flush()

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(say)
    except KeyboardInterrupt:
        raise CommandError("interrupted; everything the benchmark started has been stopped") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.write_json(output)
    command.stdout.write("\n" + report.markdown() + "\n")
    load = ", ".join(f"{x:.2f}" for x in report.loadavg_at_start)
    command.stdout.write(
        f"\nJSON: {output} (whole run: {report.elapsed_s:.0f} s; "
        f"load average at start: {load} on {os.cpu_count()} CPUs)"
    )
    if report.failed:
        raise CommandError(failure)
