"""What is measured beside the load: memory of a process tree, and delivered counts."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _parent_map() -> dict[int, int]:
    """pid → parent pid for every process we can see."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name may contain spaces and parentheses: split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(roots: Iterable[int]) -> set[int]:
    """The roots and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    parents = _parent_map()
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in parents]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident_pages * PAGE_SIZE
    return total


class RssSampler:
    """Samples the summed RSS of the trees under `roots()` every `interval` seconds on a
    thread, keeping the peak. roots is called each time, so restarts are followed."""

    def __init__(self, roots: Callable[[], list[int]], interval: float = 0.1) -> None:
        self.roots = roots
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        current = rss_bytes(process_tree(self.roots()))
        self.peak = max(self.peak, current)
        return current

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


@dataclass
class DeliveryWait:
    delivered: int  # the count when we stopped waiting
    finished_at: float | None  # time.monotonic() when the target was reached; None if never
    reason: str = ""  # why we gave up, when we did


def wait_delivered(
    count: Callable[[], int],
    target: int,
    *,
    interval: float = 0.05,
    stall_seconds: float = 120.0,
    limit_seconds: float = 1800.0,
) -> DeliveryWait:
    """Poll `count()` until it reaches `target`. Gives up when it has not moved for
    `stall_seconds` (longer than A3Mailer's stalled-delivery sweep, so a lost task gets
    its second chance) or after `limit_seconds` in all."""
    started = time.monotonic()
    last_count, last_change = -1, started
    while True:
        now = time.monotonic()
        current = count()
        if current >= target:
            return DeliveryWait(current, now)
        if current != last_count:
            last_count, last_change = current, now
        if now - last_change > stall_seconds:
            return DeliveryWait(current, None, f"no progress for {stall_seconds:.0f} s")
        if now - started > limit_seconds:
            return DeliveryWait(current, None, f"still not delivered after {limit_seconds:.0f} s")
        time.sleep(interval)
