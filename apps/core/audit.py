"""The way lower apps write audit events without importing apps.compliance.

accounts, mailboxes and relay sit below compliance in the dependency order; they call
`audit(...)`, which resolves the recorder named in A3_AUDIT_RECORDER on first use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from django.conf import settings
from django.db.models import Model
from django.utils.module_loading import import_string


class _Recorder(Protocol):
    def __call__(self, *, action: str, **kwargs: object) -> object: ...


@lru_cache(maxsize=2)
def _recorder(path: str) -> _Recorder:
    return import_string(path)


def audit(action: str, **kwargs: object) -> object:
    """Append an audit event (see apps.compliance.services.audit.audit_record for the
    keywords: actor, target, changes, request, client, subjects, and context extras).
    Joins the caller's transaction, so a rolled-back change leaves no event."""
    return _recorder(settings.A3_AUDIT_RECORDER)(action=action, **kwargs)


def audit_diff(before: dict[str, object], after: dict[str, object]) -> dict[str, list[object]]:
    """{"field": [before, after]} for the fields that differ."""
    keys = sorted(set(before) | set(after))
    return {key: [before.get(key), after.get(key)] for key in keys if before.get(key) != after.get(key)}


_SKIPPED_FIELDS = frozenset({"id", "created_at", "updated_at", "last_login", "used_bytes"})


def snapshot(instance: Model, **extra: object) -> dict[str, object]:
    """The instance's own column values (foreign keys as ids), JSON-ready, for a diff.
    Bookkeeping columns are left out; secrets are redacted later by the recorder."""
    values: dict[str, object] = {}
    for field in instance._meta.concrete_fields:
        if field.name in _SKIPPED_FIELDS:
            continue
        value = getattr(instance, field.attname)
        values[field.name] = (
            value if value is None or isinstance(value, bool | int | float | str) else str(value)
        )
    return {**values, **extra}


def audit_changes(before: dict[str, object], instance: Model, **extra: object) -> dict[str, list[object]]:
    """The diff between a snapshot taken before a change and the instance now."""
    return audit_diff(before, snapshot(instance, **extra))
