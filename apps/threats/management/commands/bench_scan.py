"""`manage.py bench_scan` (part of `make bench`): scanning throughput of A3Mailer's
built-in pipeline against private Rspamd and SpamAssassin (spamd) instances."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from apps.core.benchmarks import bench_command_run
from apps.threats.bench.runner import ScanBenchOptions, run_scan_bench


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Benchmark scanning: A3Mailer's built-in stages (throwaway installation, trained Bayes "
        "store, worker processes) on a generated corpus, then the same corpus through private "
        "Rspamd and spamd instances when installed. Prints Markdown tables and writes "
        "var/bench/scan.json; never fails on speed, only when an available engine could not "
        "be measured."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = ScanBenchOptions()
        parser.add_argument("--messages", type=_positive, default=defaults.messages, help="corpus size")
        parser.add_argument("--workers", type=_positive, default=defaults.workers, help="A3Mailer processes")
        parser.add_argument("--train", type=int, default=defaults.train, help="messages Bayes learns first")
        parser.add_argument("--seed", type=int, default=defaults.seed, help="corpus seed")
        parser.add_argument("--warmup", type=int, default=defaults.warmup, help="unmeasured messages first")
        parser.add_argument("--rspamd-workers", type=_positive, default=defaults.rspamd_workers)
        parser.add_argument("--rspamd-inflight", type=_positive, default=defaults.rspamd_inflight)
        parser.add_argument("--spamd-children", type=_positive, default=defaults.spamd_children)
        parser.add_argument(
            "--engine-messages",
            type=_positive,
            default=None,
            help="messages for each external engine (default: the whole corpus)",
        )
        parser.add_argument("--skip-engines", action="store_true", help="measure A3Mailer only")
        parser.add_argument("--output", type=Path, default=defaults.output, help="where to write the JSON")

    def handle(self, *args: object, **options: object) -> None:
        bench = ScanBenchOptions(
            messages=options["messages"],
            workers=options["workers"],
            train=max(0, int(options["train"])),
            warmup=max(0, int(options["warmup"])),
            seed=int(options["seed"]),
            rspamd_workers=options["rspamd_workers"],
            rspamd_inflight=options["rspamd_inflight"],
            spamd_children=options["spamd_children"],
            engine_messages=options["engine_messages"],
            skip_engines=bool(options["skip_engines"]),
            output=Path(options["output"]).resolve(),
        )
        bench_command_run(
            self,
            lambda say: run_scan_bench(bench, say),
            output=bench.output,
            failure="something available could not be measured; see above",
        )
