"""The scanning benchmark: A3Mailer's built-in pipeline (the configured stages without
the external engines) on a throwaway installation with a trained Bayes store, in worker
processes, against private Rspamd and spamd instances fed the same corpus.

Everything started is registered on an ExitStack as soon as it exists, so a failure or
Ctrl-C stops the processes and removes the temporary directories.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings

from apps.core.benchmarks import NxdomainServer
from apps.threats.bench.corpus import CorpusMessage, build_corpus
from apps.threats.bench.engines import EngineRunner, EngineUnavailable, RspamdRunner, SpamdRunner
from apps.threats.bench.report import EngineRow, ScanReport, StageRow, percentile
from apps.threats.stages.external import EngineError, RspamdClient, SpamdClient

ROOT = Path(settings.BASE_DIR)
# Variables of the calling shell that would point the throwaway installation elsewhere.
_NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "A3_DATA_DIR")
RSPAMD_FLAGGED = {"add header", "rewrite subject", "soft reject", "reject"}


@dataclass(frozen=True)
class ScanBenchOptions:
    messages: int = 1000
    workers: int = 2  # A3Mailer scanning processes (one per core here)
    train: int = 400  # messages the Bayes store learns first (another seed: unseen mail)
    warmup: int = 20
    seed: int = 6
    rspamd_workers: int = 2
    rspamd_inflight: int = 4
    spamd_children: int = 4
    engine_messages: int | None = None  # default: the whole corpus
    skip_engines: bool = False
    output: Path = ROOT / "var" / "bench" / "scan.json"


def run_scan_bench(options: ScanBenchOptions, say: Callable[[str], None]) -> ScanReport:
    report = ScanReport(
        settings={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    )
    began = time.monotonic()
    say(f"corpus: building {options.messages} messages (+{options.train} to train Bayes)…")
    corpus = build_corpus(options.messages, seed=options.seed)
    training = build_corpus(options.train, seed=options.seed + 1000) if options.train else []
    report.settings["corpus"] = {
        "kinds": dict(Counter(m.kind for m in corpus)),
        "mean_bytes": round(sum(len(m.raw) for m in corpus) / max(1, len(corpus))),
    }
    with _teardown() as stack:
        try:
            _bench_ours(options, corpus, training, report, stack, say)
        except Exception as exc:  # noqa: BLE001 - report it, then measure the engines anyway
            _failure(report, "A3Mailer pipeline", exc, say)
    engines = corpus[: options.engine_messages] if options.engine_messages else corpus
    if options.skip_engines:
        report.notes.append("external engines: skipped (--skip-engines)")
    else:
        runners: list[tuple[str, Callable[[], EngineRunner]]] = [
            ("Rspamd", lambda: RspamdRunner(workers=options.rspamd_workers)),
            ("SpamAssassin (spamd)", lambda: SpamdRunner(children=options.spamd_children)),
        ]
        for name, make in runners:
            try:
                with _teardown() as stack:
                    runner = make()
                    stack.callback(runner.stop)
                    say(f"{name}: starting a private instance…")
                    runner.start()
                    report.engines.append(_bench_engine(name, runner, engines, options, say))
            except EngineUnavailable as exc:
                say(f"{name}: not installed ({exc})")
                report.notes.append(f"{name}: not installed ({exc})")
            except Exception as exc:  # noqa: BLE001 - report it, then measure the next one
                _failure(report, name, exc, say)
    report.add_ratios()
    report.elapsed_s = round(time.monotonic() - began, 1)
    return report


def _failure(report: ScanReport, what: str, exc: Exception, say: Callable[[str], None]) -> None:
    say(f"{what}: FAILED: {exc}")
    report.notes.append(f"{what}: FAILED: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
    report.failed = True


@contextlib.contextmanager
def _teardown() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose clean-up a second Ctrl-C or a SIGTERM cannot cut short."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        masked = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stack.close()
        finally:
            for sig, handler in masked.items():
                signal.signal(sig, handler)


# --- A3Mailer --------------------------------------------------------------------------


def _write_corpus(path: Path, messages: list[CorpusMessage]) -> None:
    with path.open("w") as out:
        for m in messages:
            item = {**asdict(m), "raw": base64.b64encode(m.raw).decode()}
            out.write(json.dumps(item) + "\n")


def _child_env(data_dir: Path, nameserver: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "a3mailer.settings",
            "A3_DATA_DIR": str(data_dir),
            "A3_DNS_NAMESERVERS": nameserver,
            "A3_LOG_LEVEL": "WARNING",
            "CELERY_BROKER_URL": "memory://",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    return env


def _spawn(mode: str, spec: dict, work: Path, env: dict[str, str], stack: contextlib.ExitStack, name: str):
    spec_path = work / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    log = (work / f"{name}.log").open("wb")
    stack.callback(log.close)
    popen = subprocess.Popen(  # noqa: S603 - our interpreter, our module
        [sys.executable, "-m", "apps.threats.bench.worker", mode, str(spec_path)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
        text=True,
    )

    def stop() -> None:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=10)

    stack.callback(stop)
    return popen


def _log_tail(work: Path, name: str) -> str:
    with contextlib.suppress(OSError):
        return (work / f"{name}.log").read_text(errors="replace")[-3000:]
    return ""


def _bench_ours(
    options: ScanBenchOptions,
    corpus: list[CorpusMessage],
    training: list[CorpusMessage],
    report: ScanReport,
    stack: contextlib.ExitStack,
    say: Callable[[str], None],
) -> None:
    work = Path(tempfile.mkdtemp(prefix="a3bench-scan-"))
    stack.callback(shutil.rmtree, work, ignore_errors=True)
    data_dir = work / "data"
    data_dir.mkdir(mode=0o700)
    _write_corpus(work / "corpus.jsonl", corpus)
    _write_corpus(work / "train.jsonl", training)
    dns = NxdomainServer().start()
    stack.callback(dns.stop)
    env = _child_env(data_dir, dns.address)

    say("A3Mailer: migrating a throwaway database, training Bayes…")
    spec = {"train": str(work / "train.jsonl"), "output": str(work / "setup-out.json")}
    setup = _spawn("setup", spec, work, env, stack, "setup")
    if setup.wait(timeout=1800) != 0:
        raise RuntimeError(f"setup exited with {setup.returncode}:\n{_log_tail(work, 'setup')}")
    prepared = json.loads((work / "setup-out.json").read_text())
    report.settings["stages"] = prepared["stages"]
    report.settings["bayes_trained"] = prepared["trained"]
    if prepared.get("note"):
        report.notes.append(prepared["note"])

    say(f"A3Mailer: scanning {len(corpus)} messages in {options.workers} processes…")
    workers = []
    for index in range(options.workers):
        spec = {
            "corpus": str(work / "corpus.jsonl"),
            "index": index,
            "workers": options.workers,
            "domain_id": prepared["domain_id"],
            "warmup": options.warmup,
            "output": str(work / f"scan-{index}-out.json"),
        }
        workers.append(_spawn("scan", spec, work, env, stack, f"scan-{index}"))
    for index, popen in enumerate(workers):
        line = popen.stdout.readline() if popen.stdout else ""
        if line.strip() != "ready":
            popen.wait(timeout=30)
            raise RuntimeError(f"scan worker {index} did not start:\n{_log_tail(work, f'scan-{index}')}")
    for popen in workers:  # all at once: the timed part starts together
        popen.stdin.write("go\n")  # type: ignore[union-attr]
        popen.stdin.flush()  # type: ignore[union-attr]
    for index, popen in enumerate(workers):
        if popen.wait(timeout=3600) != 0:
            raise RuntimeError(
                f"scan worker {index} exited with {popen.returncode}:\n{_log_tail(work, f'scan-{index}')}"
            )
    results = [json.loads((work / f"scan-{i}-out.json").read_text()) for i in range(options.workers)]
    records = [record for result in results for record in result["records"]]
    elapsed = max(r["finished"] for r in results) - min(r["started"] for r in results)
    header_score = settings.A3_SPAM_HEADER_SCORE

    def flagged(record: dict) -> bool:
        return record["score"] >= header_score or record["category"] in ("spam", "malware", "policy")

    row = EngineRow(
        engine="A3Mailer",
        setup=f"{options.workers} processes, built-in stages",
        messages=len(records),
        msgs_per_s=len(records) / elapsed if elapsed > 0 else None,
        p50_ms=percentile([r["ms"] for r in records], 0.50),
        p99_ms=percentile([r["ms"] for r in records], 0.99),
        errors=sum(1 for r in records if any(s[1] in ("error", "timeout") for s in r["stages"].values())),
        **_detection(records, flagged, lambda r: r["category"] == "malware"),
    )
    row.notes.append(
        f"p50 scan time per message = the latency scanning adds before delivery ({row.p50_ms} ms)"
    )
    report.engines.append(row)
    names = list(dict.fromkeys(name for r in records for name in r["stages"]))
    for name in names:
        timings = [r["stages"][name][0] for r in records if name in r["stages"]]
        report.stages.append(
            StageRow(
                stage=name,
                p50_ms=percentile(timings, 0.50),
                p99_ms=percentile(timings, 0.99),
                mean_ms=sum(timings) / len(timings) if timings else None,
                statuses=dict(Counter(r["stages"][name][1] for r in records if name in r["stages"])),
            )
        )
    say(f"A3Mailer: {row.msgs_per_s:.1f} msgs/s, p50 {row.p50_ms} ms, p99 {row.p99_ms} ms")


def _detection(
    records: list[dict], flagged: Callable[[dict], bool], malware: Callable[[dict], bool]
) -> dict[str, str]:
    def ratio(label: str | None, kind: str | None, test: Callable[[dict], bool]) -> str:
        chosen = [
            r
            for r in records
            if (label is None or r["label"] == label) and (kind is None or r["kind"] == kind)
        ]
        return f"{sum(1 for r in chosen if test(r))}/{len(chosen)}" if chosen else ""

    return {
        "spam_flagged": ratio("spam", None, flagged),
        "ham_flagged": ratio("ham", None, flagged),
        "gtube": ratio(None, "gtube", flagged),
        "eicar": ratio(None, "eicar", malware),
    }


# --- External engines ------------------------------------------------------------------


def _bench_engine(
    name: str,
    runner: EngineRunner,
    corpus: list[CorpusMessage],
    options: ScanBenchOptions,
    say: Callable[[str], None],
) -> EngineRow:
    timeout = 60.0
    if isinstance(runner, RspamdRunner):
        client = RspamdClient(runner.address, timeout=timeout)
        inflight = options.rspamd_inflight
        setup = f"{options.rspamd_workers} workers, {inflight} in flight (HTTP keep-alive)"

        def scan(m: CorpusMessage) -> dict:
            verdict = client.check(
                m.raw, {"IP": m.peer_ip, "From": m.mail_from, "Helo": m.helo, "Rcpt": "bench@bench.test"}
            )
            action = str(verdict.get("action", ""))
            return {"flagged": action in RSPAMD_FLAGGED, "score": verdict.get("score")}

    else:
        spamd = SpamdClient(runner.address, timeout=timeout)
        inflight = options.spamd_children
        setup = f"{inflight} children, {inflight} in flight"

        def scan(m: CorpusMessage) -> dict:
            result = spamd.report(m.raw)
            return {"flagged": result.is_spam, "score": result.score}

    for m in corpus[: options.warmup]:
        with contextlib.suppress(EngineError):
            scan(m)
    say(f"{name}: scanning {len(corpus)} messages, {inflight} in flight…")
    records: list[dict | None] = [None] * len(corpus)
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        m = corpus[index]
        began = time.monotonic()
        try:
            outcome = scan(m)
        except EngineError as exc:
            with lock:
                errors.append(str(exc))
            return
        records[index] = {
            **outcome,
            "kind": m.kind,
            "label": m.label,
            "ms": (time.monotonic() - began) * 1000,
        }

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=inflight) as pool:
        list(pool.map(one, range(len(corpus))))
    elapsed = time.monotonic() - started
    done = [r for r in records if r is not None]
    row = EngineRow(
        engine=name,
        setup=setup,
        messages=len(corpus),
        msgs_per_s=len(done) / elapsed if elapsed > 0 and done else None,
        p50_ms=percentile([r["ms"] for r in done], 0.50),
        p99_ms=percentile([r["ms"] for r in done], 0.99),
        errors=len(errors),
        **_detection(done, lambda r: r["flagged"], lambda r: r["flagged"]),
    )
    if errors:
        row.notes.append(f"{len(errors)} scans failed, first: {errors[0][:200]}")
    row.notes.append("no ClamAV behind it: EICAR counts as found only if the message was flagged")
    rate = "n/a" if row.msgs_per_s is None else f"{row.msgs_per_s:.1f}"
    say(f"{name}: {rate} msgs/s, p50 {row.p50_ms and round(row.p50_ms, 1)} ms")
    return row
