from __future__ import annotations

import random

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.core.addresses import domain_to_unicode
from apps.core.models import TimeStampedModel
from apps.mailboxes.querysets import AliasQuerySet, DomainQuerySet, MailboxQuerySet, MailItemQuerySet

GIB = 1024**3


class Domain(TimeStampedModel):
    """A mail domain we are the final destination for. `name` is the IDNA A-label."""

    name = models.CharField(max_length=253, unique=True)
    description = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField(default=True)
    max_mailboxes = models.PositiveIntegerField(default=0, help_text="0 means no limit.")
    max_aliases = models.PositiveIntegerField(default=0, help_text="0 means no limit.")
    default_quota_bytes = models.PositiveBigIntegerField(default=GIB)
    # Outbound limits for the whole domain; 0 means the server-wide default applies.
    max_messages_per_hour = models.PositiveIntegerField(default=0, help_text="0 means the server default.")
    max_recipients_per_hour = models.PositiveIntegerField(default=0, help_text="0 means the server default.")
    # Mailbox users of this domain must have a second factor too (admins always must).
    require_mfa = models.BooleanField(default=False)
    admins = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="administered_domains", blank=True)

    objects = DomainQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name_unicode

    @property
    def name_unicode(self) -> str:
        return domain_to_unicode(self.name)


class Mailbox(TimeStampedModel):
    """A place mail is delivered to. The password is for mail protocols (SMTP AUTH, IMAP)."""

    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="mailboxes")
    local_part = models.CharField(max_length=64)
    address = models.CharField(max_length=254, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="mailboxes")
    display_name = models.CharField(max_length=150, blank=True)
    password = models.CharField(max_length=256)
    quota_bytes = models.PositiveBigIntegerField(help_text="0 means no limit.")
    used_bytes = models.PositiveBigIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    save_sent_copy = models.BooleanField(
        default=True, help_text="File a copy of mail sent through submission into Sent."
    )
    # Outbound limits for this mailbox; 0 means the server-wide default applies.
    max_messages_per_hour = models.PositiveIntegerField(default=0, help_text="0 means the server default.")
    max_recipients_per_hour = models.PositiveIntegerField(default=0, help_text="0 means the server default.")

    objects = MailboxQuerySet.as_manager()

    class Meta:
        ordering = ["address"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "local_part"], name="mailbox_unique_local_part")
        ]

    def __str__(self) -> str:
        return self.address_display

    @property
    def address_display(self) -> str:
        return f"{self.local_part}@{domain_to_unicode(self.domain.name)}"

    @property
    def quota_percent(self) -> float | None:
        if not self.quota_bytes:
            return None
        return round(100 * self.used_bytes / self.quota_bytes, 1)


class Alias(TimeStampedModel):
    """An address that forwards to other addresses. An empty local part is the domain's
    catch-all: it receives mail for every local part with no mailbox or alias."""

    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="aliases")
    local_part = models.CharField(max_length=64, blank=True)
    address = models.CharField(max_length=254, unique=True)
    description = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField(default=True)
    # Mailboxes whose users may use this alias as their sender (MAIL FROM and From:).
    send_as = models.ManyToManyField(Mailbox, related_name="send_as_aliases", blank=True)

    objects = AliasQuerySet.as_manager()

    class Meta:
        ordering = ["address"]
        verbose_name_plural = "aliases"
        constraints = [
            models.UniqueConstraint(fields=["domain", "local_part"], name="alias_unique_local_part")
        ]

    def __str__(self) -> str:
        return self.address

    @property
    def is_catch_all(self) -> bool:
        return self.local_part == ""

    @property
    def address_display(self) -> str:
        return f"{self.local_part}@{domain_to_unicode(self.domain.name)}"


class AliasDestination(models.Model):
    alias = models.ForeignKey(Alias, on_delete=models.CASCADE, related_name="destinations")
    address = models.CharField(max_length=254, db_index=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["alias", "address"], name="alias_destination_unique")]

    def __str__(self) -> str:
        return f"{self.alias.address} -> {self.address}"


class AppPassword(models.Model):
    """A per-device password for a mailbox's mail protocols (SMTP AUTH), usable in place of
    the mailbox password and revocable on its own. Only a hash of the secret is stored: it
    is random and long, so a fast hash is enough and AUTH stays cheap."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="app_passwords")
    name = models.CharField(max_length=100)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.mailbox.address}: {self.name}"

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None


def _new_uidvalidity() -> int:
    # IMAP UIDVALIDITY is a non-zero 32-bit value that must change if UIDs are reassigned.
    return random.randint(1, 2**31 - 1)  # noqa: S311 - uniqueness, not secrecy


class Folder(models.Model):
    """An IMAP-style folder with its UID bookkeeping (RFC 3501 §2.3.1.1)."""

    class SpecialUse(models.TextChoices):
        INBOX = "inbox", "Inbox"
        SENT = "sent", "Sent"
        DRAFTS = "drafts", "Drafts"
        JUNK = "junk", "Junk"
        TRASH = "trash", "Trash"
        NONE = "", "None"

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=255)
    special_use = models.CharField(max_length=10, choices=SpecialUse.choices, blank=True)
    uidvalidity = models.PositiveIntegerField(default=_new_uidvalidity)
    uidnext = models.PositiveIntegerField(default=1)
    subscribed = models.BooleanField(default=True)

    class Meta:
        ordering = ["mailbox", "id"]
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "name"], name="folder_unique_name"),
            models.UniqueConstraint(
                fields=["mailbox", "special_use"],
                condition=~Q(special_use=""),
                name="folder_unique_special_use",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox.address}/{self.name}"


DEFAULT_FOLDERS = [
    ("INBOX", Folder.SpecialUse.INBOX),
    ("Sent", Folder.SpecialUse.SENT),
    ("Drafts", Folder.SpecialUse.DRAFTS),
    ("Junk", Folder.SpecialUse.JUNK),
    ("Trash", Folder.SpecialUse.TRASH),
]


class Message(models.Model):
    """One received message: its raw bytes live in the blob store under `blob_sha256`.

    The row is the message's state machine (received → delivering → delivered | failed |
    quarantined), committed
    in the same transaction as its recipients before the SMTP 250, so nothing acknowledged
    can be lost; metadata is filled in, best effort, when it is delivered.
    """

    class State(models.TextChoices):
        RECEIVED = "received", "Received"
        DELIVERING = "delivering", "Delivering"  # leased by a worker (lease_token)
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        # Held by the threat scanner for some or all recipients (apps.threats): a release
        # sets it back to received and delivers again.
        QUARANTINED = "quarantined", "Quarantined"

    queue_id = models.CharField(max_length=24, unique=True)
    blob_sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveBigIntegerField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.RECEIVED)
    mail_from = models.CharField(max_length=998, blank=True)  # "" is the null reverse-path
    helo = models.CharField(max_length=255, blank=True)
    peer_ip = models.GenericIPAddressField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.CharField(max_length=16, blank=True, db_index=True)
    leased_at = models.DateTimeField(null=True, blank=True)
    delivery_attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Set for mail sent through authenticated submission: who sent it (rate limits, the
    # queue's sender filter) and how they authenticated.
    submitted_by = models.ForeignKey(
        Mailbox, null=True, blank=True, on_delete=models.SET_NULL, related_name="submitted_messages"
    )
    # What the SMTP-time checks found (DNSBL, SPF …), for the scanner's full verdict.
    smtp_checks = models.JSONField(default=dict, blank=True)

    # Indexed metadata, best effort (malformed mail keeps what could be read).
    parsed = models.BooleanField(default=False)
    message_id_header = models.CharField(max_length=998, blank=True, db_index=True)
    subject = models.TextField(blank=True)
    from_header = models.TextField(blank=True)
    to_header = models.TextField(blank=True)
    cc_header = models.TextField(blank=True)
    date_header = models.DateTimeField(null=True, blank=True)
    has_attachments = models.BooleanField(default=False)
    parse_problems = models.TextField(blank=True)
    body_text = models.TextField(blank=True)  # plain text for search, truncated

    class Meta:
        indexes = [
            models.Index(fields=["state", "received_at"], name="message_state_received"),
            models.Index(fields=["submitted_by", "received_at"], name="message_submitted_received"),
        ]

    def __str__(self) -> str:
        return self.queue_id


class MessageRecipient(models.Model):
    """An envelope recipient of a message, as accepted at RCPT."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="recipients")
    address = models.CharField(max_length=254)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    detail = models.CharField(max_length=500, blank=True)
    # Set for a copy filed straight into this mailbox's folder of that special use (the
    # sender's Sent copy), without alias expansion.
    folder = models.CharField(max_length=10, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "address"], name="recipient_unique_address")
        ]

    def __str__(self) -> str:
        return f"{self.message.queue_id} → {self.address}"


class MailItem(models.Model):
    """A message filed in a mailbox folder, with its IMAP UID and flags."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="items")
    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="items")
    message = models.ForeignKey(Message, on_delete=models.PROTECT, related_name="items")
    uid = models.PositiveIntegerField()
    size = models.PositiveBigIntegerField()
    internal_date = models.DateTimeField(default=timezone.now)
    seen = models.BooleanField(default=False)
    flagged = models.BooleanField(default=False)
    answered = models.BooleanField(default=False)
    deleted = models.BooleanField(default=False)  # IMAP \Deleted: gone at expunge

    objects = MailItemQuerySet.as_manager()

    class Meta:
        ordering = ["-internal_date", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["folder", "uid"], name="mailitem_unique_uid"),
            # One copy per mailbox: delivery is idempotent and two aliases to one mailbox
            # do not duplicate a message.
            models.UniqueConstraint(fields=["mailbox", "message"], name="mailitem_unique_message"),
        ]
        indexes = [
            models.Index(fields=["folder", "-internal_date"], name="mailitem_folder_date"),
            models.Index(fields=["folder", "seen"], name="mailitem_folder_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.folder} #{self.uid}"
