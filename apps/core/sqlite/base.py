"""Django's SQLite backend, with write transactions queued in-process.

SQLite allows one writer at a time. When two threads collide on `BEGIN IMMEDIATE`, the
loser waits in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) rather
than waking when the lock is free; under steady concurrent writes (SMTP acceptance and
delivery in one `serve` process) that sleeping dominated. A process-wide lock taken
before BEGIN and released at COMMIT/ROLLBACK lets writers hand over immediately. It
changes nothing across processes, where the busy timeout still applies; multi-process
deployments use PostgreSQL.
"""

from __future__ import annotations

import threading

from django.db.backends.sqlite3 import base

_WRITE_LOCK = threading.Lock()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def _start_transaction_under_autocommit(self) -> None:
        _WRITE_LOCK.acquire()
        self._holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            _WRITE_LOCK.release()

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
