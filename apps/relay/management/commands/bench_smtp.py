"""`manage.py bench_smtp` (`make bench`): SMTP throughput of A3Mailer against Postfix,
receiving (inbound) and relaying (outbound)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.benchmarks import bench_command_run
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
        parser.add_argument(
            "--modes",
            default=",".join(MODES),
            help="A3Mailer modes: embedded,scaleout,unscanned (embedded with A3_SCANNING=false)",
        )
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
        parser.add_argument(
            "--latency-messages",
            type=int,
            default=defaults.latency_messages,
            help="messages sent one at a time for the 250 → INBOX latency (0: not measured)",
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
            latency_messages=max(0, int(options["latency_messages"])),
            scaleout_messages=options["scaleout_messages"],
            output=Path(options["output"]).resolve(),
        )
        bench_command_run(
            self,
            lambda say: run_bench(bench, say),
            output=bench.output,
            failure="some servers could not be measured; see above",
        )
