"""Full-text search schema: FTS5 on SQLite, a tsvector column with a GIN index on
PostgreSQL (see apps/mailboxes/search.py)."""

from django.db import migrations


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite":
        schema_editor.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS mailboxes_message_fts USING fts5("
            "subject, addresses, body, tokenize = 'unicode61 remove_diacritics 2')"
        )
    elif vendor == "postgresql":
        schema_editor.execute("ALTER TABLE mailboxes_message ADD COLUMN IF NOT EXISTS search_tsv tsvector")
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS mailboxes_message_search_gin ON mailboxes_message USING GIN (search_tsv)"
        )


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite":
        schema_editor.execute("DROP TABLE IF EXISTS mailboxes_message_fts")
    elif vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS mailboxes_message_search_gin")
        schema_editor.execute("ALTER TABLE mailboxes_message DROP COLUMN IF EXISTS search_tsv")


class Migration(migrations.Migration):
    dependencies = [("mailboxes", "0002_messages")]
    operations = [migrations.RunPython(create, drop)]
