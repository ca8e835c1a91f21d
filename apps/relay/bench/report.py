"""Results: one row per (server, mode, generator), as a Markdown table and as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Row:
    server: str  # "A3Mailer" or "Postfix"
    mode: str  # "embedded", "scaleout" or "anchor"
    generator: str  # "loadgen" (ours) or "smtp-source"
    messages: int
    accepted_per_s: float | None = None  # first send → last 250
    e2e_per_s: float | None = None  # first send → all delivered
    p50_ms: float | None = None  # acknowledgement latency (loadgen only)
    p99_ms: float | None = None
    peak_rss_mb: float | None = None  # summed over the server's process tree
    errors: int | None = None  # messages not acknowledged with 250
    delivered: int | None = None  # of those acknowledged, how many arrived
    e2e_vs_postfix: float | None = None  # this row's e2e rate / Postfix's, same generator
    notes: list[str] = field(default_factory=list)


@dataclass
class OutboundRow:
    """Relaying: messages submitted to the server under test, which passes them on to the
    benchmark's sink (a remote MTA on loopback that discards)."""

    server: str  # "A3Mailer" or "Postfix"
    mode: str  # "embedded", "scaleout" or "relay"
    messages: int
    submission: str = ""  # how the generator submitted (e.g. "STARTTLS + AUTH PLAIN")
    accepted_per_s: float | None = None  # first send → last 250 at the server under test
    relayed_per_s: float | None = None  # first send → last arrival at the sink
    ack_p50_ms: float | None = None  # acknowledgement latency at the server under test
    ack_p99_ms: float | None = None
    relay_p50_ms: float | None = None  # its 250 → arrival at the sink, per message
    relay_p99_ms: float | None = None
    peak_rss_mb: float | None = None
    errors: int | None = None  # messages not acknowledged with 250
    relayed: int | None = None  # of those acknowledged, how many reached the sink
    duplicates: int = 0  # arrivals beyond the first of a message
    relayed_vs_postfix: float | None = None  # this row's relayed rate / Postfix's
    notes: list[str] = field(default_factory=list)


@dataclass
class LatencyRow:
    """Delivery latency at low load: one message at a time through one SMTP session, from
    its 250 until it is in the recipient's INBOX (no queueing behind other messages)."""

    server: str
    mode: str
    messages: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None
    p50_vs_postfix: float | None = None  # this row's p50 / Postfix's (lower is better)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    outbound: list[OutboundRow] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # servers skipped or failed
    failed: bool = False  # a server could not be measured although it was available
    elapsed_s: float | None = None  # the whole benchmark, start-ups and clean-ups included
    # Other work on the machine skews every figure: kept so a reader can tell.
    loadavg_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def record_failure(self, what: str, exc: Exception, say: Callable[[str], None]) -> None:
        """A server that was available could not be measured: the run is marked failed."""
        say(f"{what}: FAILED: {exc}")  # in full: it carries the processes' log tails
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        self.notes.append(f"{what}: FAILED: {first_line}")
        self.failed = True

    def add_ratios(self) -> None:
        """Postfix is the yardstick: absolute rates drift between runs, the ratio less so."""
        anchors = {r.generator: r.e2e_per_s for r in self.rows if r.server == "Postfix"}
        for row in self.rows:
            anchor = anchors.get(row.generator)
            if row.e2e_per_s and anchor:
                row.e2e_vs_postfix = row.e2e_per_s / anchor
        latency_anchor = next((r.p50_ms for r in self.latency if r.server == "Postfix"), None)
        for row in self.latency:
            if row.p50_ms and latency_anchor:
                row.p50_vs_postfix = row.p50_ms / latency_anchor
        relay_anchor = next((r.relayed_per_s for r in self.outbound if r.server == "Postfix"), None)
        for row in self.outbound:
            if row.relayed_per_s and relay_anchor:
                row.relayed_vs_postfix = row.relayed_per_s / relay_anchor

    def markdown(self) -> str:
        parts = []
        if self.rows:
            parts.append(self._inbound_markdown())
        if self.latency:
            parts.append(self._latency_markdown())
        if self.outbound:
            parts.append(self._outbound_markdown())
        notes = [f"- {r.server} {r.mode} {r.generator}: {n}" for r in self.rows for n in r.notes]
        notes += [f"- latency {r.server} {r.mode}: {n}" for r in self.latency for n in r.notes]
        notes += self._scanning_cost()
        notes += [f"- outbound {r.server} {r.mode}: {n}" for r in self.outbound for n in r.notes]
        notes += [f"- {n}" for n in self.notes]
        if notes:
            parts.append("\n".join(notes))
        return "\n\n".join(parts)

    def _inbound_markdown(self) -> str:
        header = (
            "| server | mode | generator | msgs | accepted msgs/s | e2e msgs/s | p50 ms | p99 ms "
            "| peak RSS MB | errors | e2e vs Postfix |"
        )
        lines = [header, "|" + "---|" * 4 + "---:|" * 7]
        for r in self.rows:
            cells = [
                r.server,
                r.mode,
                r.generator,
                str(r.messages),
                _num(r.accepted_per_s, 0),
                _num(r.e2e_per_s, 0),
                _num(r.p50_ms, 1),
                _num(r.p99_ms, 1),
                _num(r.peak_rss_mb, 0),
                "n/a" if r.errors is None else str(r.errors),
                _ratio(r.e2e_vs_postfix),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "Inbound (SMTP reception and local delivery)\n\n" + "\n".join(lines)

    def _latency_markdown(self) -> str:
        header = "| server | mode | msgs | 250→INBOX p50 ms | p95 ms | max ms | p50 vs Postfix |"
        lines = [header, "|" + "---|" * 2 + "---:|" * 5]
        for r in self.latency:
            cells = [
                r.server,
                r.mode,
                str(r.messages),
                _num(r.p50_ms, 1),
                _num(r.p95_ms, 1),
                _num(r.max_ms, 1),
                _ratio(r.p50_vs_postfix),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "Delivery latency, one message at a time (its 250 → in the INBOX)\n\n" + "\n".join(lines)

    def _scanning_cost(self) -> list[str]:
        """What scanning adds, from the same build run with A3_SCANNING on and off."""
        p50 = {r.mode: r.p50_ms for r in self.latency if r.server == "A3Mailer"}
        e2e = {r.mode: r.e2e_per_s for r in self.rows if r.server == "A3Mailer" and r.generator == "loadgen"}
        notes = []
        if p50.get("embedded") and p50.get("unscanned"):
            notes.append(
                f"- scanning adds {p50['embedded'] - p50['unscanned']:.1f} ms to the p50 delivery latency "
                "(embedded with scanning on vs off)"
            )
        if e2e.get("embedded") and e2e.get("unscanned"):
            notes.append(
                f"- with scanning on, embedded inbound runs at {e2e['embedded'] / e2e['unscanned']:.0%} "
                "of its unscanned end-to-end rate"
            )
        return notes

    def _outbound_markdown(self) -> str:
        header = (
            "| server | mode | msgs | accepted msgs/s | relayed msgs/s | 250→remote p50 ms "
            "| 250→remote p99 ms | ack p50 ms | peak RSS MB | errors | relayed | relayed vs Postfix |"
        )
        lines = [header, "|" + "---|" * 2 + "---:|" * 10]
        for r in self.outbound:
            cells = [
                r.server,
                r.mode,
                str(r.messages),
                _num(r.accepted_per_s, 0),
                _num(r.relayed_per_s, 0),
                _num(r.relay_p50_ms, 1),
                _num(r.relay_p99_ms, 1),
                _num(r.ack_p50_ms, 1),
                _num(r.peak_rss_mb, 0),
                "n/a" if r.errors is None else str(r.errors),
                "n/a" if r.relayed is None else str(r.relayed),
                _ratio(r.relayed_vs_postfix),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "Outbound (submission → relay → remote sink)\n\n" + "\n".join(lines)

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "started_at": self.started_at,
            "elapsed_s": self.elapsed_s,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_at_start": self.loadavg_at_start,
                "loadavg_at_end": os.getloadavg(),
            },
            "settings": self.settings,
            "rows": [asdict(row) for row in self.rows],
            "outbound": [asdict(row) for row in self.outbound],
            "latency": [asdict(row) for row in self.latency],
            "notes": self.notes,
        }
        path.write_text(json.dumps(body, indent=2) + "\n")


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"  # small ratios keep a digit


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
