"""Outbound mail: the relay queue, its delivery attempts, transport rules and DKIM keys.

A queue item is one message on its way to one recipient domain. Its row is the state
machine (queued → sending → deferred → sent | bounced); Celery tasks only wake it up, and
the beat sweep re-enqueues any item whose task was lost.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.core.models import TimeStampedModel


class TransportRule(TimeStampedModel):
    """Where mail for a recipient domain goes instead of its MX hosts. `domain` is an IDNA
    A-label; "*" matches every domain (a smarthost kept in the database)."""

    class Tls(models.TextChoices):
        OPPORTUNISTIC = "opportunistic", "STARTTLS when offered"
        REQUIRED = "required", "STARTTLS required"
        IMPLICIT = "implicit", "Implicit TLS (SMTPS)"
        NONE = "none", "Plain text"

    domain = models.CharField(max_length=253, unique=True)
    host = models.CharField(max_length=253)
    port = models.PositiveIntegerField(default=25)
    tls = models.CharField(max_length=16, choices=Tls.choices, default=Tls.OPPORTUNISTIC)
    verify_certificate = models.BooleanField(default=False)
    username = models.CharField(max_length=254, blank=True)
    password = models.CharField(max_length=512, blank=True)  # encrypted at rest (apps.core.secrets)
    description = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return f"{self.domain} → {self.host}:{self.port}"


class DkimKey(TimeStampedModel):
    """A DKIM signing key of a local domain. One active key per domain signs; rotating adds
    a key under a new selector, and retired keys stay listed (their DNS record should stay
    published for a while so mail in flight still verifies)."""

    class Algorithm(models.TextChoices):
        RSA = "rsa-sha256", "RSA-2048"
        ED25519 = "ed25519-sha256", "Ed25519"

    domain = models.ForeignKey("mailboxes.Domain", on_delete=models.CASCADE, related_name="dkim_keys")
    selector = models.CharField(max_length=63)
    algorithm = models.CharField(max_length=16, choices=Algorithm.choices, default=Algorithm.RSA)
    private_key = models.TextField()  # PEM (PKCS#8), encrypted at rest (apps.core.secrets)
    public_key = models.TextField()  # base64 for the p= tag
    is_active = models.BooleanField(default=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["domain", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "selector"], name="dkim_unique_selector"),
            models.UniqueConstraint(
                fields=["domain"], condition=Q(is_active=True), name="dkim_one_active_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.selector}._domainkey.{self.domain.name}"


class QueueItem(models.Model):
    """One message on its way to one recipient domain."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"  # leased by a worker (lease_token)
        DEFERRED = "deferred", "Deferred"  # waiting for next_attempt_at
        SENT = "sent", "Sent"
        BOUNCED = "bounced", "Bounced"

    class Kind(models.TextChoices):
        SUBMISSION = "submission", "Submitted"
        FORWARD = "forward", "Forwarded"
        BOUNCE = "bounce", "Delivery report"

    message = models.ForeignKey("mailboxes.Message", on_delete=models.PROTECT, related_name="queue_items")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.SUBMISSION)
    # The reverse-path used at MAIL FROM ("" for a DSN), SRS-rewritten for forwards.
    sender = models.CharField(max_length=998, blank=True, db_index=True)
    # Where a delivery report goes: the original sender ("" never gets one).
    report_to = models.CharField(max_length=998, blank=True)
    domain = models.CharField(max_length=253, db_index=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    on_hold = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_reply = models.TextField(blank=True)
    delay_warned_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.CharField(max_length=16, blank=True, db_index=True)
    leased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="queue_state_next"),
            models.Index(fields=["domain", "state"], name="queue_domain_state"),
        ]

    def __str__(self) -> str:
        return f"{self.message.queue_id} → {self.domain} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in {self.State.SENT, self.State.BOUNCED}


class QueueRecipient(models.Model):
    """An envelope recipient of a queue item, with the remote server's last word on it."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DEFERRED = "deferred", "Deferred"
        SENT = "sent", "Sent"
        BOUNCED = "bounced", "Bounced"

    item = models.ForeignKey(QueueItem, on_delete=models.CASCADE, related_name="recipients")
    address = models.CharField(max_length=254)
    # For a forward: the local alias the message was addressed to (DSN Original-Recipient).
    original_address = models.CharField(max_length=254, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    reply_code = models.PositiveSmallIntegerField(null=True, blank=True)
    reply = models.TextField(blank=True)
    remote_host = models.CharField(max_length=253, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["item", "address"], name="queue_recipient_unique")]

    def __str__(self) -> str:
        return f"{self.address} ({self.state})"


class DeliveryAttempt(models.Model):
    """One try at handing a queue item to a remote server: the story the queue page tells."""

    class Outcome(models.TextChoices):
        SENT = "sent", "Sent"
        PARTIAL = "partial", "Partly sent"
        DEFERRED = "deferred", "Deferred"
        BOUNCED = "bounced", "Bounced"

    item = models.ForeignKey(QueueItem, on_delete=models.CASCADE, related_name="attempts_log")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    host = models.CharField(max_length=253, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    tls = models.BooleanField(default=False)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reply_code = models.PositiveSmallIntegerField(null=True, blank=True)
    reply = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)  # per-recipient replies, hosts tried

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.item_id} @ {self.started_at:%Y-%m-%d %H:%M:%S}: {self.outcome}"
