"""Private clamd, Rspamd and spamd instances for tests. The runners are the benchmark's
(apps.threats.bench.engines): each engine runs from a temporary directory of its own, on
loopback ports or a socket nobody else uses, never as the machine's service."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from apps.threats.bench.engines import (
    EICAR,
    EICAR_SIGNATURE,
    GTUBE,
    ClamdRunner,
    EngineRunner,
    RspamdRunner,
    SpamdRunner,
    free_port,
)

__all__ = [
    "EICAR",
    "EICAR_SIGNATURE",
    "GTUBE",
    "ClamdRunner",
    "RspamdRunner",
    "SpamdRunner",
    "closed_port",
    "running",
    "started",
]


def running(runner: EngineRunner) -> Iterator[EngineRunner]:
    """Start `runner` for a fixture and stop it however the tests end. Skips (with the
    reason) only when the engine is not installed: CI installs every one, so a failure to
    start is an error, not a skip."""
    if not runner.installed():
        runner.stop()
        missing = ", ".join(path for path in runner.required() if not os.access(path, os.X_OK))
        pytest.skip(f"{runner.name} is not installed ({missing}); .ci/run installs it")
    try:
        runner.start()
        yield runner
    finally:
        runner.stop()


def closed_port() -> str:
    """A loopback host:port where nothing listens (connections are refused)."""
    return f"127.0.0.1:{free_port()}"


@contextlib.contextmanager
def started(runner: EngineRunner) -> Iterator[EngineRunner]:
    """`running` for one test's own short-lived engine (the session ones are shared)."""
    generator = running(runner)
    try:
        yield next(generator)
    finally:
        generator.close()
