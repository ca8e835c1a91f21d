from __future__ import annotations

from django.db import models
from django.utils import timezone

from apps.alerts.querysets import AlertQuerySet


class Alert(models.Model):
    """Something an administrator should know about, persisted and pushed live.

    `domain_id` scopes the alert: domain admins of that domain see it; alerts without a
    domain are for superadmins only. It is a plain integer, not a foreign key, because
    alerts sit below the mailboxes app and must outlive the domain they mention.
    """

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"
        CRITICAL = "critical", "Critical"

    kind = models.CharField(max_length=64, db_index=True)
    level = models.CharField(max_length=10, choices=Level.choices, db_index=True)
    message = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    domain_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"[{self.level}] {self.kind}: {self.message}"
