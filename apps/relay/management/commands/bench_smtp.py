"""`manage.py bench_smtp` (`make bench`): SMTP throughput of A3Mailer against Postfix,
receiving (inbound) and relaying (outbound)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.relay.bench.runner import MODES, PARTS, BenchOptions, run_bench


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _modes(value: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise CommandError(f"--modes: choose from {', '.join(MODES)}")
    return modes


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every server started so far is stopped.
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Benchmark SMTP reception and delivery (inbound) and relaying to a remote MTA "
        "(outbound): A3Mailer (embedded and scale-out, each on a fresh installation) against "
        "a private Postfix, on loopback. Prints Markdown tables and writes var/bench/latest.json."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = BenchOptions()
        parser.add_argument("--messages", type=_positive, default=defaults.messages, help="N per run")
        parser.add_argument(
            "--concurrency", type=_positive, default=defaults.concurrency, help="concurrent SMTP sessions"
        )
        parser.add_argument("--size", type=_positive, default=defaults.size, help="body bytes per message")
        parser.add_argument("--modes", default=",".join(MODES), help="A3Mailer modes: embedded,scaleout")
        parser.add_argument(
            "--only",
            choices=PARTS,
            default=None,
            help="run one part: inbound (reception) or outbound (relaying); default both",
        )
        parser.add_argument("--skip-postfix", action="store_true", help="do not run the Postfix anchor")
        parser.add_argument(
            "--scaleout-messages",
            type=_positive,
            default=None,
            help="N for scale-out mode (default: --messages)",
        )
        parser.add_argument(
            "--warmup",
            type=int,
            default=defaults.warmup,
            help="unmeasured messages per server first (0: none)",
        )
        parser.add_argument("--output", type=Path, default=defaults.output, help="where to write the JSON")

    def handle(self, *args: object, **options: object) -> None:
        bench = BenchOptions(
            messages=options["messages"],
            concurrency=options["concurrency"],
            size=options["size"],
            modes=_modes(str(options["modes"])),
            parts=(str(options["only"]),) if options["only"] else PARTS,
            skip_postfix=bool(options["skip_postfix"]),
            warmup=max(0, int(options["warmup"])),
            scaleout_messages=options["scaleout_messages"],
            output=Path(options["output"]).resolve(),
        )
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            report = run_bench(bench, self._say)
        except KeyboardInterrupt:
            raise CommandError("interrupted; everything the benchmark started has been stopped") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        report.write_json(bench.output)
        self.stdout.write("\n" + report.markdown() + "\n")
        load = ", ".join(f"{x:.2f}" for x in report.loadavg_at_start)
        self.stdout.write(
            f"\nJSON: {bench.output} (whole run: {report.elapsed_s:.0f} s; "
            f"load average at start: {load} on {os.cpu_count()} CPUs)"
        )
        if report.failed:
            raise CommandError("some servers could not be measured; see above")

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
