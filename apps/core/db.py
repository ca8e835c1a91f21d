"""Database durability helpers shared by the apps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction


@contextmanager
def durable_atomic() -> Iterator[None]:
    """A transaction that is on stable storage when the block exits.

    PostgreSQL commits durably anyway. SQLite runs in WAL mode with synchronous=NORMAL
    (safe against crashes of the process, not against power loss) for everyday writes,
    and switches to FULL around commits that something outside relies on, such as the
    SMTP "250" for accepted mail. One FULL commit also syncs every earlier WAL frame.
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic():
            yield
        return
    from apps.core.sqlite.base import urgent_writes

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous=FULL")
    try:
        with urgent_writes(), transaction.atomic():
            yield

    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous=NORMAL")
