"""Django's SQLite backend, with write transactions queued in-process.

SQLite allows one writer at a time. When two threads collide on `BEGIN IMMEDIATE`, the
loser waits in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) rather
than waking when the lock is free; under steady concurrent writes (SMTP acceptance and
delivery in one `serve` process) that sleeping dominated. A process-wide lock taken
before BEGIN and released at COMMIT/ROLLBACK lets writers hand over immediately, and
lets commits that someone is waiting on (the one before an SMTP "250", see
apps.core.db.durable_atomic) go ahead of background writes such as delivery.

It changes nothing across processes, where the busy timeout still applies; multi-process
deployments use PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db.backends.sqlite3 import base


class _WriterQueue:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._busy = False
        self._urgent_waiting = 0

    def acquire(self, *, urgent: bool) -> None:
        with self._condition:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._busy or (not urgent and self._urgent_waiting):
                    self._condition.wait()
                self._busy = True
            finally:
                if urgent:
                    self._urgent_waiting -= 1

    def release(self) -> None:
        with self._condition:
            self._busy = False
            self._condition.notify_all()


_WRITERS = _WriterQueue()
_urgency = threading.local()


@contextmanager
def urgent_writes() -> Iterator[None]:
    """Transactions begun by this thread inside the block jump the writer queue."""
    previous = getattr(_urgency, "active", False)
    _urgency.active = True
    try:
        yield
    finally:
        _urgency.active = previous


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def _start_transaction_under_autocommit(self) -> None:
        _WRITERS.acquire(urgent=getattr(_urgency, "active", False))
        self._holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            _WRITERS.release()

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._release_write_lock()
