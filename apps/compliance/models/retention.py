"""Retention policies, their runs, and legal holds."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

__all__ = ["BlockedDeletion", "LegalHold", "RetentionPolicy", "RetentionRun"]


class RetentionPolicy(models.Model):
    """Delete mail older than `days`: in a domain, optionally only in folders of one
    special use (Trash, Junk, ...); `domain` null applies to every domain."""

    domain = models.ForeignKey(
        "mailboxes.Domain", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    folder_special_use = models.CharField(max_length=10, blank=True)  # "" = all folders
    days = models.PositiveIntegerField()
    is_active = models.BooleanField(default=True)
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["domain__name", "folder_special_use"]

    def __str__(self) -> str:
        where = self.domain.name if self.domain_id else "all domains"
        return f"{where} {self.folder_special_use or 'all folders'}: {self.days} days"


class RetentionRun(models.Model):
    """One run of the retention job (or a dry run): what it deleted and what holds kept."""

    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    dry_run = models.BooleanField(default=False)
    deleted_items = models.PositiveIntegerField(default=0)
    deleted_bytes = models.PositiveBigIntegerField(default=0)
    deleted_blobs = models.PositiveIntegerField(default=0)
    held_items = models.PositiveIntegerField(default=0)
    per_mailbox = models.JSONField(default=dict, blank=True)  # address -> count
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"retention {self.started_at:%Y-%m-%d %H:%M} ({self.deleted_items})"


class LegalHold(models.Model):
    """Mail that must not be deleted: of a mailbox, a domain, or matching a search."""

    class Scope(models.TextChoices):
        MAILBOX = "mailbox", "Mailbox"
        DOMAIN = "domain", "Domain"
        SEARCH = "search", "Search"

    scope = models.CharField(max_length=10, choices=Scope.choices)
    mailbox = models.ForeignKey(
        "mailboxes.Mailbox", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    domain = models.ForeignKey(
        "mailboxes.Domain", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    sender = models.CharField(max_length=254, blank=True)  # search: envelope or From address contains
    date_from = models.DateTimeField(null=True, blank=True)
    date_to = models.DateTimeField(null=True, blank=True)
    reason = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"hold {self.pk} ({self.scope})"


class BlockedDeletion(models.Model):
    """A deletion a legal hold refused: by whom, of what, through which path."""

    hold = models.ForeignKey(LegalHold, on_delete=models.CASCADE, related_name="blocked")
    message = models.ForeignKey("mailboxes.Message", null=True, on_delete=models.SET_NULL, related_name="+")
    mailbox = models.ForeignKey("mailboxes.Mailbox", null=True, on_delete=models.SET_NULL, related_name="+")
    via = models.CharField(max_length=32)  # "retention", "user_delete", "expunge", "erasure", ...
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.via} blocked by hold {self.hold_id}"
