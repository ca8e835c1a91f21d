from __future__ import annotations

import random

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.core.addresses import domain_to_unicode
from apps.core.models import TimeStampedModel
from apps.mailboxes.querysets import AliasQuerySet, DomainQuerySet, MailboxQuerySet

GIB = 1024**3


class Domain(TimeStampedModel):
    """A mail domain we are the final destination for. `name` is the IDNA A-label."""

    name = models.CharField(max_length=253, unique=True)
    description = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField(default=True)
    max_mailboxes = models.PositiveIntegerField(default=0, help_text="0 means no limit.")
    max_aliases = models.PositiveIntegerField(default=0, help_text="0 means no limit.")
    default_quota_bytes = models.PositiveBigIntegerField(default=GIB)
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
