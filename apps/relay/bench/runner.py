"""The scenario. Inbound: Postfix first (its install also brings smtp-source), then each
A3Mailer mode on a fresh installation; each server is measured with our generator and,
where it is installed, with smtp-source, and is stopped before the next one starts.
Outbound (apps.relay.bench.outbound): the same servers relaying to one sink."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from apps.relay.bench.loadgen import LoadSpec, message_body, message_bytes, nearest_rank, run_load
from apps.relay.bench.outbound import run_outbound
from apps.relay.bench.probes import RssSampler, wait_delivered
from apps.relay.bench.report import LatencyRow, Report, Row
from apps.relay.bench.targets import (
    RECIPIENT,
    ROOT,
    Postfix,
    Unavailable,
    postfix_anchor_path,
    start_a3mailer,
    teardown_on_exit,
)

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SENDER = "sender@bench.test"
# "unscanned": embedded with A3_SCANNING=false, the same build without the threat checks,
# so that the report can say what scanning costs.
MODES = ("embedded", "scaleout", "unscanned")
PARTS = ("inbound", "outbound")


class Target(Protocol):
    server: str
    mode: str
    host: str

    @property
    def port(self) -> int: ...

    def prepare(self) -> None: ...

    def delivered(self) -> int: ...

    def pids(self) -> list[int]: ...

    def check_alive(self) -> None: ...


@dataclass(frozen=True)
class BenchOptions:
    messages: int = 2000
    concurrency: int = 10
    size: int = 4096
    modes: tuple[str, ...] = MODES
    parts: tuple[str, ...] = PARTS  # inbound (reception), outbound (relaying)
    skip_postfix: bool = False
    warmup: int = 20
    latency_messages: int = 100  # one at a time, 250 → INBOX (0: not measured)
    scaleout_messages: int | None = None  # scale-out mode only; default: messages
    output: Path = ROOT / "var" / "bench" / "latest.json"

    def messages_for(self, mode: str) -> int:
        return (self.scaleout_messages or self.messages) if mode == "scaleout" else self.messages


@dataclass
class _Run:
    """One generator's pass over a server, before delivery is awaited."""

    started: float  # time.monotonic() of the first send
    accepted: int  # messages acknowledged with 250
    row: Row


def run_bench(options: BenchOptions, say: Callable[[str], None]) -> Report:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    settings["smtp_source"] = str(SMTP_SOURCE)
    settings["code"] = _code_version()
    report = Report(settings=settings)
    began = time.monotonic()
    if "inbound" in options.parts:
        if options.skip_postfix:
            report.notes.append("postfix: skipped (--skip-postfix)")
        else:
            _bench_postfix(options, report, say)
        for mode in options.modes:
            _bench_a3mailer(mode, options, report, say)
    if "outbound" in options.parts:
        run_outbound(options, report, say)
    report.add_ratios()
    report.elapsed_s = round(time.monotonic() - began, 1)
    return report


def _bench_postfix(options: BenchOptions, report: Report, say: Callable[[str], None]) -> None:
    say("postfix: starting the anchor (installs postfix on first use)…")
    try:
        with teardown_on_exit() as stack:
            postfix = Postfix(postfix_anchor_path())
            postfix.start(stack)
            _warm_up(postfix, options)
            report.rows += _measure_all(postfix, options.messages, options, say)
            _measure_latency(postfix, options, report, say)
    except Unavailable as exc:
        say(f"postfix: not available ({exc})")
        report.notes.append(f"postfix: not available ({exc})")
    except Exception as exc:  # noqa: BLE001 - report it, then measure A3Mailer anyway
        report.record_failure("Postfix anchor", exc, say)


def _bench_a3mailer(mode: str, options: BenchOptions, report: Report, say: Callable[[str], None]) -> None:
    say(f"{mode}: starting A3Mailer…")
    try:
        with teardown_on_exit() as stack:
            server = start_a3mailer(mode, stack, keep_logs_in=options.output.parent / "logs")
            _warm_up(server, options)
            report.rows += _measure_all(server, options.messages_for(mode), options, say)
            _measure_latency(server, options, report, say)
            say(f"{mode}: stopping…")
    except Unavailable as exc:
        say(f"{mode}: not available ({exc})")
        report.notes.append(f"A3Mailer {mode}: not available ({exc})")
    except Exception as exc:  # noqa: BLE001 - report it, then measure the other servers
        report.record_failure(f"A3Mailer {mode}", exc, say)


def _warm_up(target: Target, options: BenchOptions) -> None:
    """A few messages through the whole path before measuring: the first ones pay for
    lazy imports, connection pools and process spawning, on every server alike."""
    if options.warmup <= 0:
        return
    target.prepare()
    baseline = target.delivered()
    spec = _spec(target, options, options.warmup, "warmup")
    result = asyncio.run(run_load(spec))
    if result.accepted == 0:
        raise RuntimeError(f"warm-up: no message accepted: {dict(result.error_replies)}")
    waited = wait_delivered(target.delivered, baseline + result.accepted, stall_seconds=120)
    if waited.finished_at is None:
        raise RuntimeError(f"warm-up messages were not delivered ({waited.reason})")


def _spec(target: Target, options: BenchOptions, messages: int, generator: str) -> LoadSpec:
    return LoadSpec(
        host=target.host,
        port=target.port,
        messages=messages,
        concurrency=options.concurrency,
        size=options.size,
        sender=SENDER,
        recipient=RECIPIENT,
        tag=f"{target.mode}-{generator}-{uuid.uuid4().hex[:8]}",
    )


def _measure_all(
    target: Target, messages: int, options: BenchOptions, say: Callable[[str], None]
) -> list[Row]:
    generators = [_run_loadgen]
    if SMTP_SOURCE.exists():
        generators.append(_run_smtp_source)
    rows = []
    for generator in generators:
        row = _measure(target, generator, messages, options)
        say(
            f"{target.server} {target.mode} {row.generator}: accepted {_fmt(row.accepted_per_s)}/s, "
            f"e2e {_fmt(row.e2e_per_s)}/s, errors {row.errors}"
        )
        rows.append(row)
    if not SMTP_SOURCE.exists():
        rows[-1].notes.append(f"smtp-source not run: {SMTP_SOURCE} not installed")
    return rows


def _measure(
    target: Target,
    generator: Callable[[Target, int, BenchOptions], _Run],
    messages: int,
    options: BenchOptions,
) -> Row:
    target.prepare()
    baseline = target.delivered()
    with RssSampler(target.pids) as rss:
        run = generator(target, messages, options)
        # Polled only once sending is over (nothing can be delivered before it is
        # acknowledged), so the probe takes no CPU from the server while it receives.
        waited = wait_delivered(target.delivered, baseline + run.accepted)
    target.check_alive()
    row = run.row
    row.peak_rss_mb = rss.peak / 2**20
    row.delivered = waited.delivered - baseline
    if waited.finished_at is not None and run.accepted:
        row.e2e_per_s = run.accepted / (waited.finished_at - run.started)
    elif run.accepted:
        row.notes.append(
            f"only {row.delivered} of {run.accepted} acknowledged messages delivered ({waited.reason})"
        )
    return row


def _measure_latency(
    target: Target, options: BenchOptions, report: Report, say: Callable[[str], None]
) -> None:
    """One message at a time through one session: from its 250 until it is in the INBOX.
    What a user waits for when the server is not busy, scanning and delivery included."""
    if options.latency_messages <= 0:
        return
    target.prepare()
    row = LatencyRow(target.server, target.mode, options.latency_messages)
    spec = _spec(target, options, options.latency_messages, "latency")
    body = message_body(options.size)
    samples: list[float] = []
    with smtplib.SMTP(target.host, target.port, local_hostname="latency.bench.test", timeout=30) as client:
        for seq in range(options.latency_messages):
            before = target.delivered()
            client.sendmail(SENDER, [RECIPIENT], message_bytes(spec, seq, body)[: -len(b".\r\n")])
            acknowledged = time.monotonic()
            waited = wait_delivered(target.delivered, before + 1, interval=0.001, stall_seconds=30)
            if waited.finished_at is None:
                row.notes.append(f"message {seq + 1} was not delivered ({waited.reason})")
                break
            samples.append((waited.finished_at - acknowledged) * 1000)
    target.check_alive()
    row.p50_ms, row.p95_ms = nearest_rank(samples, 50), nearest_rank(samples, 95)
    row.max_ms = max(samples, default=None)
    report.latency.append(row)
    say(f"{target.server} {target.mode} latency: 250 → INBOX p50 {_fmt(row.p50_ms)} ms")


def _run_loadgen(target: Target, messages: int, options: BenchOptions) -> _Run:
    result = asyncio.run(run_load(_spec(target, options, messages, "loadgen")))
    row = Row(
        target.server,
        target.mode,
        "loadgen",
        messages,
        accepted_per_s=result.accepted_rate(),
        p50_ms=result.latency_ms(50),
        p99_ms=result.latency_ms(99),
        errors=result.errors,
    )
    if result.error_replies:
        top = ", ".join(f"{n} x {what}" for what, n in result.error_replies.most_common(3))
        row.notes.append(f"errors: {top}")
    if result.session_failures:
        row.notes.append(f"sessions that never started: {dict(result.session_failures)}")
    return _Run(result.first_send or time.monotonic(), result.accepted, row)


def _run_smtp_source(target: Target, messages: int, options: BenchOptions) -> _Run:
    """Postfix's own C generator as a cross-check of ours. -d keeps each session open for
    many messages, the workload our generator sends; its rate is wall-clock."""
    args = [
        str(SMTP_SOURCE),
        "-d",
        "-s",
        str(options.concurrency),
        "-m",
        str(messages),
        "-l",
        str(options.size),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"{target.host}:{target.port}",
    ]
    row = Row(target.server, target.mode, "smtp-source", messages)
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, our arguments
            args, capture_output=True, text=True, timeout=60 + messages * 0.25, check=False
        )
    except subprocess.TimeoutExpired:
        row.notes.append("smtp-source did not finish in time")
        return _Run(started, 0, row)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        # smtp-source stops at the first unexpected reply and does not say how many got
        # through, so neither rate means anything.
        row.notes.append(f"smtp-source exited {done.returncode}: {done.stderr.strip()[-300:]}")
        return _Run(started, 0, row)
    row.accepted_per_s = messages / elapsed
    row.errors = 0
    return _Run(started, messages, row)


def _git(*args: str) -> str:
    # Fixed git subcommands from this module only, never user input.
    return subprocess.run(  # noqa: S603
        ["git", *args],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def _code_version() -> str:
    """The commit measured, marked when the work tree differs from it: figures are only
    comparable between runs of the same code."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changes = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+changes" if changes else commit


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"
