"""Data classification: what personal data a message holds, and outbound DLP policies."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

__all__ = ["DlpHit", "DlpPolicy", "MessageClassification"]


class MessageClassification(models.Model):
    """The categories of personal data found in one message, with counts."""

    message = models.OneToOneField(
        "mailboxes.Message", on_delete=models.CASCADE, related_name="classification"
    )
    categories = models.JSONField(default=dict)  # {"payment_card": 3, "iban": 1, ...}
    classified_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.message_id}: {', '.join(self.categories) or 'none'}"


class DlpPolicy(models.Model):
    """Outbound rule: mail from the domain to external recipients carrying more than
    `threshold` items of `category` is held (or only alerted about)."""

    class Action(models.TextChoices):
        HOLD = "hold", "Hold in the queue"
        ALERT = "alert", "Alert only"

    domain = models.ForeignKey("mailboxes.Domain", on_delete=models.CASCADE, related_name="+")
    category = models.CharField(max_length=32)
    threshold = models.PositiveIntegerField(default=0)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.HOLD)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain__name", "category"]
        constraints = [models.UniqueConstraint(fields=["domain", "category"], name="dlp_policy_unique")]

    def __str__(self) -> str:
        return f"{self.domain.name}: {self.category} > {self.threshold} → {self.action}"


class DlpHit(models.Model):
    """An outbound message a DLP policy matched, and what was done."""

    policy = models.ForeignKey(DlpPolicy, null=True, on_delete=models.SET_NULL, related_name="hits")
    message = models.ForeignKey("mailboxes.Message", on_delete=models.CASCADE, related_name="+")
    category = models.CharField(max_length=32)
    count = models.PositiveIntegerField()
    action = models.CharField(max_length=8)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.category} x{self.count} in {self.message_id}"
