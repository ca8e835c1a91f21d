"""The scanning benchmark's results: rows per engine, per-stage timings, ratios against
the yardsticks, as Markdown tables and as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Targets: A3Mailer's built-in pipeline against the engines, same corpus, same machine.
TARGETS = {"SpamAssassin (spamd)": 10.0, "Rspamd": 0.5}


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class EngineRow:
    engine: str  # "A3Mailer", "Rspamd", "SpamAssassin (spamd)"
    setup: str  # how it ran: processes, in flight
    messages: int
    msgs_per_s: float | None = None
    p50_ms: float | None = None  # per message
    p99_ms: float | None = None
    errors: int = 0
    # What it found, to show the engines did comparable work: counts per corpus label.
    spam_flagged: str = ""  # "flagged/spam messages" at the engine's own threshold
    ham_flagged: str = ""  # false positives "flagged/ham messages"
    gtube: str = ""
    eicar: str = ""
    ours_vs_this: float | None = None  # A3Mailer's msgs/s ÷ this engine's
    target: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class StageRow:
    stage: str
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    statuses: dict[str, int]


@dataclass
class ScanReport:
    settings: dict[str, Any]
    engines: list[EngineRow] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False
    elapsed_s: float | None = None
    loadavg_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add_ratios(self) -> None:
        ours = next((row.msgs_per_s for row in self.engines if row.engine == "A3Mailer"), None)
        for row in self.engines:
            if row.engine in TARGETS:
                row.target = TARGETS[row.engine]
                if ours and row.msgs_per_s:
                    row.ours_vs_this = ours / row.msgs_per_s

    def markdown(self) -> str:
        lines = [
            "Scanning throughput (same corpus, same machine)",
            "",
            "| engine | setup | msgs | msgs/s | p50 ms | p99 ms | errors | spam flagged | ham flagged "
            "| GTUBE | EICAR | ours ÷ this | target |",
            "|---|---|" + "---:|" * 11,
        ]
        for r in self.engines:
            ratio = "n/a" if r.ours_vs_this is None else f"{r.ours_vs_this:.2f}x"
            if r.ours_vs_this is not None and r.target is not None:
                ratio += " ✓" if r.ours_vs_this >= r.target else " ✗"
            cells = [
                r.engine,
                r.setup,
                str(r.messages),
                _num(r.msgs_per_s, 1),
                _num(r.p50_ms, 2),
                _num(r.p99_ms, 2),
                str(r.errors),
                r.spam_flagged or "n/a",
                r.ham_flagged or "n/a",
                r.gtube or "n/a",
                r.eicar or "n/a",
                ratio,
                "" if r.target is None else f"≥ {r.target:g}x",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if self.stages:
            lines += [
                "",
                "A3Mailer per stage (built-in pipeline; time per message)",
                "",
                "| stage | p50 ms | p99 ms | mean ms | statuses |",
                "|---|---:|---:|---:|---|",
            ]
            for s in self.stages:
                statuses = ", ".join(f"{k} {v}" for k, v in sorted(s.statuses.items()))
                lines.append(
                    f"| {s.stage} | {_num(s.p50_ms, 3)} | {_num(s.p99_ms, 3)} | {_num(s.mean_ms, 3)} | {statuses} |"
                )
        notes = [f"- {r.engine}: {n}" for r in self.engines for n in r.notes] + [f"- {n}" for n in self.notes]
        if notes:
            lines += ["", *notes]
        return "\n".join(lines)

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
            "engines": [asdict(row) for row in self.engines],
            "stages": [asdict(row) for row in self.stages],
            "notes": self.notes,
        }
        path.write_text(json.dumps(body, indent=2) + "\n")


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
