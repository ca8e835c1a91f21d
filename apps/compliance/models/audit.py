"""The audit log: append-only, hash-chained events of every administrative action."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

__all__ = ["AuditEvent", "AuditStreamState"]


class AuditEvent(models.Model):
    """One administrative or security event. Rows are never updated except to pseudonymise
    personal fields on erasure, which the chain is built to survive: `content_hash` covers
    the canonical content with every personal value replaced by its keyed hash, so
    replacing the readable value by that same pseudonym leaves the hash unchanged.
    `hash` = SHA-256(prev_hash + content_hash) links each row to the one before."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_display = models.CharField(max_length=254, blank=True)  # personal: pseudonymised on erasure
    actor_role = models.CharField(max_length=20, blank=True)
    action = models.CharField(max_length=64, db_index=True)  # "mailbox.create", "auth.login_ok", ...
    target_type = models.CharField(max_length=64, blank=True, db_index=True)
    target_id = models.CharField(max_length=64, blank=True, db_index=True)
    target_display = models.CharField(max_length=300, blank=True)  # personal
    changes = models.JSONField(default=dict, blank=True)  # {"field": [before, after]}, secrets redacted
    ip = models.CharField(max_length=64, blank=True)  # personal
    user_agent = models.CharField(max_length=300, blank=True)  # personal
    request_id = models.CharField(max_length=64, blank=True)
    # Keyed hashes (HMAC) of the identities the event is about: how erasure finds them.
    subject_keys = models.JSONField(default=list, blank=True)
    pseudonymised_at = models.DateTimeField(null=True, blank=True)
    content_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"


class AuditStreamState(models.Model):
    """How far each SIEM destination (syslog, webhook) has been sent."""

    destination = models.CharField(max_length=32, unique=True)
    last_event_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.destination} @ {self.last_event_id}"
