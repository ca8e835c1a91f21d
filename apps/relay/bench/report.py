"""Results: one row per (server, mode, generator), as a Markdown table and as JSON."""

from __future__ import annotations

import json
import os
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
class Report:
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # servers skipped or failed
    failed: bool = False  # a server could not be measured although it was available
    elapsed_s: float | None = None  # the whole benchmark, start-ups and clean-ups included
    # Other work on the machine skews every figure: kept so a reader can tell.
    loadavg_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add_ratios(self) -> None:
        """Postfix is the yardstick: absolute rates drift between runs, the ratio less so."""
        anchors = {r.generator: r.e2e_per_s for r in self.rows if r.server == "Postfix"}
        for row in self.rows:
            anchor = anchors.get(row.generator)
            if row.e2e_per_s and anchor:
                row.e2e_vs_postfix = row.e2e_per_s / anchor

    def markdown(self) -> str:
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
        notes = [f"- {r.server} {r.mode} {r.generator}: {n}" for r in self.rows for n in r.notes]
        notes += [f"- {n}" for n in self.notes]
        return "\n".join(lines + (["", *notes] if notes else []))

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
            "notes": self.notes,
        }
        path.write_text(json.dumps(body, indent=2) + "\n")


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"  # small ratios keep a digit


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
