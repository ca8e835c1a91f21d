"""Full-text search over messages, behind one pair of functions.

PostgreSQL (scale-out): a `search_tsv` tsvector column on mailboxes_message with a GIN
index, filled at delivery, queried with websearch_to_tsquery. SQLite (embedded): an FTS5
table keyed by message id. Both use language-neutral tokenising ('simple' / unicode61
without diacritics) because mail is multilingual. The schema for both is created by
migration 0003, only on the matching database.
"""

from __future__ import annotations

import re

from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

from apps.mailboxes.models import MailItem, Message

SQLITE_TABLE = "mailboxes_message_fts"
_TERM = re.compile(r"\w[\w.@+'-]*", re.UNICODE)


def _document(message: Message) -> tuple[str, str, str]:
    addresses = " ".join(
        filter(None, [message.from_header, message.to_header, message.cc_header, message.mail_from])
    )
    return message.subject or "", addresses, message.body_text or ""


def index_message(message: Message) -> None:
    """(Re)index one message's subject, addresses and body text. Idempotent."""
    subject, addresses, body = _document(message)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "UPDATE mailboxes_message SET search_tsv = "
                "setweight(to_tsvector('simple', %s), 'A') || "
                "setweight(to_tsvector('simple', %s), 'B') || "
                "to_tsvector('simple', %s) WHERE id = %s",
                [subject, addresses, body, message.pk],
            )
        elif connection.vendor == "sqlite":
            cursor.execute(f"DELETE FROM {SQLITE_TABLE} WHERE rowid = %s", [message.pk])  # noqa: S608
            cursor.execute(
                f"INSERT INTO {SQLITE_TABLE} (rowid, subject, addresses, body) VALUES (%s, %s, %s, %s)",  # noqa: S608
                [message.pk, subject, addresses, body],
            )


def unindex_messages(message_ids: list[int]) -> None:
    if connection.vendor == "sqlite" and message_ids:
        with connection.cursor() as cursor:
            marks = ",".join(["%s"] * len(message_ids))
            cursor.execute(f"DELETE FROM {SQLITE_TABLE} WHERE rowid IN ({marks})", message_ids)  # noqa: S608


def _fts5_query(text: str) -> str:
    # Quote every term: user input must never be parsed as FTS5 query syntax.
    terms = _TERM.findall(text)[:20]
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def filter_items(queryset: QuerySet[MailItem], text: str) -> QuerySet[MailItem]:
    """Items whose message matches every word of `text` (subject, addresses or body)."""
    text = (text or "").strip()
    if not text:
        return queryset
    if connection.vendor == "postgresql":
        matching = RawSQL(
            "SELECT id FROM mailboxes_message WHERE search_tsv @@ websearch_to_tsquery('simple', %s)",
            [text[:500]],
        )
        return queryset.filter(message_id__in=matching)
    if connection.vendor == "sqlite":
        query = _fts5_query(text)
        if not query:
            return queryset.none()
        # The table name is a constant; the query is a bound parameter.
        matching = RawSQL(f"SELECT rowid FROM {SQLITE_TABLE} WHERE {SQLITE_TABLE} MATCH %s", [query])  # noqa: S608, S611
        return queryset.filter(message_id__in=matching)
    # Any other database: a plain substring search.
    from django.db.models import Q

    condition = Q()
    for term in _TERM.findall(text)[:10]:
        condition &= (
            Q(message__subject__icontains=term)
            | Q(message__from_header__icontains=term)
            | Q(message__to_header__icontains=term)
            | Q(message__body_text__icontains=term)
        )
    return queryset.filter(condition)
