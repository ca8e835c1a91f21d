"""The outbound scenario: messages submitted to a server, which relays them to a remote
MTA (our sink, a process of its own on loopback that discards). Measured: the rate from
the first submission until the last message reaches the sink, and per message the time
from its 250 at the server to its arrival at the sink (p50/p99).

The yardstick is Postfix relaying the same load to the same sink: a private instance
(apps.relay.bench.postfix) that accepts from loopback with STARTTLS offered and passes
everything to the sink through its relayhost. A3Mailer is submitted to as a mail client
would (its submission listener: STARTTLS, then AUTH PLAIN), signs with DKIM and relays
through a transport rule; Postfix gets STARTTLS without AUTH (it has no SASL backend
here) and signs nothing. Both talk plain SMTP to the sink, which offers no STARTTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from apps.relay.bench.loadgen import LoadSpec, message_id, run_load
from apps.relay.bench.postfix import PostfixUnavailable, PrivatePostfix, postfix_installed
from apps.relay.bench.probes import RssSampler, wait_delivered
from apps.relay.bench.report import OutboundRow, Report
from apps.relay.bench.sink import read_arrivals
from apps.relay.bench.targets import (
    OUTBOUND_RECIPIENT,
    OUTBOUND_SENDER,
    ROOT,
    ManagedProcess,
    Unavailable,
    free_port,
    spawn,
    start_a3mailer,
    teardown_on_exit,
)

if TYPE_CHECKING:
    from apps.relay.bench.runner import BenchOptions

A3_SUBMISSION = "STARTTLS + AUTH PLAIN"
POSTFIX_SUBMISSION = "STARTTLS, no AUTH"


@dataclass
class Sink:
    port: int
    log: Path
    proc: ManagedProcess

    def arrivals(self, tag: str) -> list[tuple[float, str]]:
        marker = f"<{tag}."
        return [(t, m) for t, m in read_arrivals(self.log) if m.startswith(marker)]

    def count(self, tag: str) -> int:
        return len({m for _, m in self.arrivals(tag)})

    def check_alive(self) -> None:
        if not self.proc.alive():
            raise RuntimeError(f"the sink exited: {self.proc.log_tail(500)}")


@dataclass
class RelayTarget:
    server: str
    mode: str
    port: int
    auth: tuple[str, str] | None
    submission: str
    pids: Callable[[], list[int]]
    check_alive: Callable[[], None]
    host: str = "127.0.0.1"
    notes: list[str] = field(default_factory=list)


def start_sink(stack: contextlib.ExitStack, work_dir: Path) -> Sink:
    port = free_port()
    log = work_dir / "arrivals.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = spawn(
        "sink",
        [sys.executable, "-m", "apps.relay.bench.sink", str(port), str(log)],
        env=env,
        log_dir=work_dir,
    )
    stack.callback(proc.stop)
    sink = Sink(port, log, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sink.check_alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as sock:
            if sock.recv(512).startswith(b"220"):
                sock.sendall(b"QUIT\r\n")
                return sink
        time.sleep(0.1)
    raise RuntimeError(f"the sink never answered on 127.0.0.1:{port}")


# Relaying is measured in these modes (the runner's "unscanned" differs from embedded only
# in the malware check of submissions).
RELAY_MODES = ("embedded", "scaleout")


def run_outbound(options: BenchOptions, report: Report, say: Callable[[str], None]) -> None:
    """Postfix relaying first (unless skipped), then each A3Mailer mode, all to one sink."""
    try:
        with teardown_on_exit() as stack:
            work_dir = Path(tempfile.mkdtemp(prefix="a3bench-outbound-"))
            stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
            sink = start_sink(stack, work_dir)
            if options.skip_postfix:
                report.notes.append("outbound postfix: skipped (--skip-postfix)")
            else:
                _postfix_relay(options, report, say, sink)
            for mode in (m for m in options.modes if m in RELAY_MODES):
                _a3mailer_relay(mode, options, report, say, sink)
    except Exception as exc:  # noqa: BLE001 - the sink itself failed: report it
        report.record_failure("outbound sink", exc, say)
    if report.outbound and not any(r.server == "Postfix" and r.relayed_per_s for r in report.outbound):
        report.notes.append(
            "outbound: no Postfix relay figures in this run, so the A3Mailer figures are absolute "
            "only (they drift with the machine's load; compare runs with care)"
        )


def _postfix_relay(options: BenchOptions, report: Report, say: Callable[[str], None], sink: Sink) -> None:
    say("outbound postfix: starting a private relay instance…")
    try:
        if not postfix_installed():
            raise PostfixUnavailable("postfix is not installed (apt-get install postfix)")
        with teardown_on_exit() as stack:
            from apps.relay.tls import self_signed_pair

            base = Path(tempfile.mkdtemp(prefix="a3bench-pfrelay-"))
            stack.callback(shutil.rmtree, base, ignore_errors=True)
            hostname = "relay.postfix.bench.test"
            tls_dir = base / "tls"
            tls_dir.mkdir(parents=True)
            postfix = PrivatePostfix(
                base,
                port=free_port(),
                hostname=hostname,
                relay_to=("127.0.0.1", sink.port),
                tls_pair=self_signed_pair(tls_dir, hostname),
            )
            stack.callback(postfix.stop)
            postfix.start()

            def check_alive() -> None:
                if postfix.master_pid() is None:
                    raise RuntimeError("the Postfix master is not running")

            target = RelayTarget(
                "Postfix",
                "relay",
                postfix.port,
                auth=None,
                submission=POSTFIX_SUBMISSION,
                pids=lambda: [pid] if (pid := postfix.master_pid()) else [],
                check_alive=check_alive,
            )
            _warm_up(target, sink, options)
            report.outbound.append(_measure(target, sink, options.messages, options, say))
    except (PostfixUnavailable, Unavailable) as exc:
        say(f"outbound postfix: not available ({exc})")
        report.notes.append(f"outbound postfix: not available ({exc})")
    except Exception as exc:  # noqa: BLE001 - report it, then measure A3Mailer anyway
        report.record_failure("outbound Postfix relay", exc, say)


def _a3mailer_relay(
    mode: str, options: BenchOptions, report: Report, say: Callable[[str], None], sink: Sink
) -> None:
    say(f"outbound {mode}: starting A3Mailer…")
    try:
        with teardown_on_exit() as stack:
            server = start_a3mailer(
                mode, stack, keep_logs_in=options.output.parent / "logs", outbound_sink=sink.port
            )
            target = RelayTarget(
                "A3Mailer",
                mode,
                server.submission_port,
                auth=(OUTBOUND_SENDER, server.sender_password),
                submission=A3_SUBMISSION,
                pids=server.pids,
                check_alive=server.check_alive,
            )
            _warm_up(target, sink, options)
            report.outbound.append(_measure(target, sink, options.messages_for(mode), options, say))
            say(f"outbound {mode}: stopping…")
    except Unavailable as exc:
        say(f"outbound {mode}: not available ({exc})")
        report.notes.append(f"outbound A3Mailer {mode}: not available ({exc})")
    except Exception as exc:  # noqa: BLE001 - report it, then measure the other modes
        report.record_failure(f"outbound A3Mailer {mode}", exc, say)


def _spec(target: RelayTarget, options: BenchOptions, messages: int, what: str) -> LoadSpec:
    return LoadSpec(
        host=target.host,
        port=target.port,
        messages=messages,
        concurrency=options.concurrency,
        size=options.size,
        sender=OUTBOUND_SENDER,
        recipient=OUTBOUND_RECIPIENT,
        tag=f"out-{target.mode}-{what}-{uuid.uuid4().hex[:8]}",
        starttls=True,
        auth=target.auth,
    )


def _warm_up(target: RelayTarget, sink: Sink, options: BenchOptions) -> None:
    if options.warmup <= 0:
        return
    spec = _spec(target, options, options.warmup, "warmup")
    result = asyncio.run(run_load(spec))
    if result.accepted == 0:
        raise RuntimeError(
            f"warm-up: no message accepted: {dict(result.error_replies)} {dict(result.session_failures)}"
        )
    waited = wait_delivered(lambda: sink.count(spec.tag), result.accepted, stall_seconds=120)
    if waited.finished_at is None:
        raise RuntimeError(f"warm-up messages never reached the sink ({waited.reason})")


def _measure(
    target: RelayTarget, sink: Sink, messages: int, options: BenchOptions, say: Callable[[str], None]
) -> OutboundRow:
    spec = _spec(target, options, messages, "run")
    with RssSampler(target.pids) as rss:
        result = asyncio.run(run_load(spec))
        # A lost task waits for the stalled-delivery sweep (a minute by default): give it time.
        waited = wait_delivered(lambda: sink.count(spec.tag), result.accepted, stall_seconds=150)
    target.check_alive()
    sink.check_alive()
    arrivals = sink.arrivals(spec.tag)
    first_arrival: dict[str, float] = {}
    for stamp, mid in arrivals:
        first_arrival.setdefault(mid, stamp)
    latencies = [
        first_arrival[message_id(spec, seq)] - acked
        for seq, acked in result.acked_at.items()
        if message_id(spec, seq) in first_arrival
    ]
    row = OutboundRow(
        target.server,
        target.mode,
        messages,
        submission=target.submission,
        accepted_per_s=result.accepted_rate(),
        ack_p50_ms=result.latency_ms(50),
        ack_p99_ms=result.latency_ms(99),
        relay_p50_ms=_percentile_ms(latencies, 50),
        relay_p99_ms=_percentile_ms(latencies, 99),
        peak_rss_mb=rss.peak / 2**20,
        errors=result.errors,
        relayed=len(first_arrival),
        duplicates=len(arrivals) - len(first_arrival),
        notes=list(target.notes),
    )
    if waited.finished_at is not None and result.accepted and result.first_send is not None:
        row.relayed_per_s = result.accepted / (max(first_arrival.values()) - result.first_send)
    elif result.accepted:
        row.notes.append(
            f"only {row.relayed} of {result.accepted} acknowledged messages reached the sink ({waited.reason})"
        )
    if result.error_replies:
        top = ", ".join(f"{n} x {what}" for what, n in result.error_replies.most_common(3))
        row.notes.append(f"errors: {top}")
    if result.session_failures:
        row.notes.append(f"sessions that never started: {dict(result.session_failures)}")
    if row.duplicates:
        row.notes.append(f"{row.duplicates} duplicate arrival(s) at the sink")
    say(
        f"outbound {target.server} {target.mode}: accepted {_fmt(row.accepted_per_s)}/s, relayed "
        f"{_fmt(row.relayed_per_s)}/s, 250→remote p50 {_fmt(row.relay_p50_ms, 1)} ms "
        f"p99 {_fmt(row.relay_p99_ms, 1)} ms, errors {row.errors}"
    )
    return row


def _percentile_ms(values: list[float], percentile: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percentile / 100 * len(ordered))) - 1] * 1000


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
