"""The scanning benchmark's child processes, on a throwaway installation (A3_DATA_DIR
and its SQLite database set by the parent through the environment):

    python -m apps.threats.bench.worker setup SPEC.json   migrate, bench domain, Bayes
    python -m apps.threats.bench.worker scan SPEC.json    scan one share of the corpus

`scan` warms up, prints "ready", waits for a line on stdin (so that every worker starts
at once), scans its share and writes its measurements to the spec's "output" file.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

EXTERNAL_PREFIX = "apps.threats.stages.external."


def read_corpus(path: Path) -> list[dict]:
    """The corpus file the parent wrote: one JSON object a line, raw bytes in base64."""
    items = []
    with path.open() as lines:
        for line in lines:
            item = json.loads(line)
            item["raw"] = base64.b64decode(item["raw"])
            items.append(item)
    return items


def builtin_stage_paths() -> list[str]:
    from django.conf import settings

    return [path for path in settings.A3_SCAN_STAGES if not path.startswith(EXTERNAL_PREFIX)]


def setup(spec: dict) -> dict:
    """Migrate, create the bench domain, train its Bayes store; what the scans need."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from apps.mailboxes.services.directory import domain_create

    call_command("migrate", verbosity=0, interactive=False)
    admin = get_user_model().objects.create_superuser("bench-admin@bench.test", None)
    domain = domain_create(actor=admin, name="bench.test")
    trained = {"spam": 0, "ham": 0}
    note = ""
    try:
        from apps.threats.services.learning import bayes_train_raw
    except ImportError:
        note = "Bayes: no bayes_train_raw service; the store stays empty"
    else:
        for item in read_corpus(Path(spec["train"])):
            if item["label"] in ("spam", "ham"):
                bayes_train_raw(domain_id=domain.pk, raw=item["raw"], is_spam=item["label"] == "spam")
                trained[item["label"]] += 1
    return {"domain_id": domain.pk, "trained": trained, "stages": builtin_stage_paths(), "note": note}


def scan(spec: dict) -> None:
    from django.utils.module_loading import import_string

    from apps.threats.pipeline import ScanContext, pipeline_run

    stages = [import_string(path) for path in builtin_stage_paths()]
    corpus = read_corpus(Path(spec["corpus"]))
    mine = corpus[spec["index"] :: spec["workers"]]

    def one(item: dict) -> dict:
        context = ScanContext(
            raw=item["raw"],
            mail_from=item["mail_from"],
            peer_ip=item["peer_ip"],
            helo=item["helo"],
            recipient_domain_ids=[spec["domain_id"]],
        )
        result = pipeline_run(context, stages=stages)
        return {
            "kind": item["kind"],
            "label": item["label"],
            "ms": result.duration_ms,
            "score": result.score,
            "category": result.category,
            "stages": {s["stage"]: [s["ms"], s["status"]] for s in result.stages},
        }

    for item in mine[: spec["warmup"]]:  # imports, caches, SQLite pages: paid before timing
        one(item)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    records = [one(item) for item in mine]
    finished = time.monotonic()
    Path(spec["output"]).write_text(
        json.dumps({"started": started, "finished": finished, "records": records})
    )


def main() -> None:
    import django

    django.setup()
    mode, spec_path = sys.argv[1], Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    if mode == "setup":
        Path(spec["output"]).write_text(json.dumps(setup(spec)))
    elif mode == "scan":
        scan(spec)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
