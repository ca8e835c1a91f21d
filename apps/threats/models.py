"""Threat detection and quarantine: scan verdicts, the per-domain verdict policy, allow and
block lists, content rules, the quarantine and its review, the Bayesian token store,
digest links and the behaviour analysis of sending accounts."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.mailboxes.models import Domain, Mailbox, Message


class Category(models.TextChoices):
    """Why a message is held; also the quarantine's sections."""

    SPAM = "spam", "Spam"
    MALWARE = "malware", "Malware"
    POLICY = "policy", "Policy"  # blocked attachments, DLP, block lists
    UNSCANNABLE = "unscannable", "Unscannable"


class Action(models.TextChoices):
    """What the verdict policy does with a message, mildest first."""

    DELIVER = "deliver", "Deliver"
    HEADER = "header", "Add spam header"
    JUNK = "junk", "File to Junk"
    QUARANTINE = "quarantine", "Quarantine"
    REJECT = "reject", "Reject at SMTP time"


class ScannerFailureMode(models.TextChoices):
    FAIL_OPEN = "open", "Fail open (deliver, tagged)"
    FAIL_CLOSED = "closed", "Fail closed (quarantine)"


class DigestFrequency(models.TextChoices):
    NEVER = "never", "Never"
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"


class DomainPolicy(models.Model):
    """The verdict policy of one domain; a domain without a row uses the server defaults
    (the A3_SPAM_* and A3_QUARANTINE_DAYS settings, which these field defaults mirror).
    A score at or above a threshold triggers its action."""

    domain = models.OneToOneField(Domain, on_delete=models.CASCADE, related_name="threat_policy")
    header_score = models.FloatField(default=5.0)
    junk_score = models.FloatField(default=6.0)
    quarantine_score = models.FloatField(default=10.0)
    reject_score = models.FloatField(default=15.0)
    unscannable_action = models.CharField(max_length=12, choices=Action.choices, default=Action.QUARANTINE)
    scanner_failure = models.CharField(
        max_length=8, choices=ScannerFailureMode.choices, default=ScannerFailureMode.FAIL_OPEN
    )
    quarantine_days = models.PositiveIntegerField(default=30)
    digest_default = models.CharField(
        max_length=8, choices=DigestFrequency.choices, default=DigestFrequency.DAILY
    )
    bayes_enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "domain policies"

    def __str__(self) -> str:
        return f"policy of {self.domain.name}"


class ListEntry(models.Model):
    """An allow or block list entry. Scope: server-wide (no domain, no mailbox), a domain,
    or one mailbox (its user's own list)."""

    class Kind(models.TextChoices):
        ALLOW = "allow", "Allow"
        BLOCK = "block", "Block"

    class Match(models.TextChoices):
        SENDER = "sender", "Sender address"
        DOMAIN = "domain", "Sender domain"
        IP = "ip", "IP address or network"

    kind = models.CharField(max_length=5, choices=Kind.choices)
    match = models.CharField(max_length=6, choices=Match.choices)
    value = models.CharField(max_length=254)  # normalised: lower-case address/domain, CIDR
    domain = models.ForeignKey(Domain, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    mailbox = models.ForeignKey(Mailbox, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    comment = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "match", "value"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "match", "value", "domain", "mailbox"], name="listentry_unique"
            ),
            models.CheckConstraint(
                condition=Q(domain__isnull=True) | Q(mailbox__isnull=True), name="listentry_one_scope"
            ),
        ]
        indexes = [models.Index(fields=["match", "value"], name="listentry_match_value")]

    def __str__(self) -> str:
        return f"{self.kind} {self.match} {self.value}"


class ContentRule(models.Model):
    """An administrator's regex rule: a match adds `score` (negative scores are allowed).
    Server-wide without a domain."""

    class Target(models.TextChoices):
        HEADER = "header", "Header"
        BODY = "body", "Body text"
        SUBJECT = "subject", "Subject"

    name = models.CharField(max_length=100)
    target = models.CharField(max_length=8, choices=Target.choices)
    header_name = models.CharField(max_length=100, blank=True)  # for target=header
    pattern = models.CharField(max_length=1000)
    score = models.FloatField()
    is_active = models.BooleanField(default=True)
    domain = models.ForeignKey(Domain, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class ScanVerdict(models.Model):
    """A message's full verdict: every stage's score, reasons and time."""

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="verdict")
    score = models.FloatField(default=0)
    # The strongest category a stage found ("" when only a score): malware and policy
    # findings quarantine whatever the score.
    category = models.CharField(max_length=12, choices=Category.choices, blank=True)
    # [{"stage", "score", "reasons": [...], "ms", "status", "category"}]
    stages = models.JSONField(default=list)
    auth_results = models.TextField(blank=True)  # the Authentication-Results value we added
    allow_listed = models.BooleanField(default=False)
    block_listed = models.BooleanField(default=False)
    scanned_at = models.DateTimeField(default=timezone.now, db_index=True)
    duration_ms = models.FloatField(default=0)
    # The action taken per mailbox: {"<mailbox id>": "junk", ...}
    actions = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"verdict of {self.message.queue_id}: {self.score:.1f}"


class QuarantineItem(models.Model):
    """A held message. Each mailbox it was meant for has a QuarantineRecipient: that is
    what users review and what is released or deleted."""

    class State(models.TextChoices):
        HELD = "held", "Held"  # some recipient still waits for a decision
        RESOLVED = "resolved", "Resolved"  # every recipient released or deleted
        EXPIRED = "expired", "Expired"

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="quarantine")
    category = models.CharField(max_length=12, choices=Category.choices, db_index=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.HELD, db_index=True)
    score = models.FloatField(default=0)
    reason = models.CharField(max_length=500)  # the main reason, in plain words
    sender = models.CharField(max_length=998, blank=True)  # envelope sender
    from_header = models.TextField(blank=True)
    subject = models.TextField(blank=True)
    size = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "category", "-created_at"], name="quarantine_state_cat")]

    def __str__(self) -> str:
        return f"{self.category}: message {self.message_id}"


class QuarantineRecipient(models.Model):
    class State(models.TextChoices):
        HELD = "held", "Held"
        RELEASE_REQUESTED = "requested", "Release requested"
        RELEASED = "released", "Released"
        DELETED = "deleted", "Deleted"
        EXPIRED = "expired", "Expired"

    item = models.ForeignKey(QuarantineItem, on_delete=models.CASCADE, related_name="recipients")
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="quarantined")
    state = models.CharField(max_length=10, choices=State.choices, default=State.HELD, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    request_note = models.CharField(max_length=500, blank=True)
    digested_at = models.DateTimeField(null=True, blank=True)  # listed in a digest
    filed_at = models.DateTimeField(null=True, blank=True)  # delivered after its release

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "mailbox"], name="quarantine_recipient_unique")
        ]

    def __str__(self) -> str:
        return f"{self.item_id} → {self.mailbox_id}: {self.state}"


class QuarantinePreference(models.Model):
    """A mailbox user's quarantine settings: how often a digest arrives."""

    mailbox = models.OneToOneField(Mailbox, on_delete=models.CASCADE, related_name="quarantine_preference")
    digest = models.CharField(max_length=8, choices=DigestFrequency.choices, blank=True)  # "": domain default
    last_digest_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"digest {self.digest or 'default'} for mailbox {self.mailbox_id}"


class DigestLink(models.Model):
    """A one-click action from a digest mail. Only a hash of the token is stored; the link
    is single use and expires."""

    class Action(models.TextChoices):
        RELEASE = "release", "Release"
        DELETE = "delete", "Delete"
        ALLOW = "allow", "Allow sender"

    token_hash = models.CharField(max_length=64, unique=True)
    recipient = models.ForeignKey(QuarantineRecipient, on_delete=models.CASCADE, related_name="links")
    action = models.CharField(max_length=8, choices=Action.choices)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.action} link for recipient {self.recipient_id}"


class BayesCorpus(models.Model):
    """How many spam and ham messages one domain's token store has learnt."""

    domain = models.OneToOneField(Domain, on_delete=models.CASCADE, related_name="bayes_corpus")
    spam_count = models.PositiveIntegerField(default=0)
    ham_count = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"bayes store of domain {self.domain_id}: {self.spam_count} spam, {self.ham_count} ham"


class BayesToken(models.Model):
    """One token's counts in one domain's store. Tokens are kept as a 63-bit hash: the
    store never holds words of anyone's mail."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="+")
    token = models.BigIntegerField()
    spam = models.PositiveIntegerField(default=0)
    ham = models.PositiveIntegerField(default=0)
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["domain", "token"], name="bayestoken_unique")]

    def __str__(self) -> str:
        return f"token {self.token} of domain {self.domain_id}"


class BayesTraining(models.Model):
    """Which messages a store learnt from, and as what: retraining the same message
    moves it between classes instead of counting it twice."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    is_spam = models.BooleanField()
    trained_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["domain", "message"], name="bayestraining_unique")]

    def __str__(self) -> str:
        return f"message {self.message_id} as {'spam' if self.is_spam else 'ham'}"


class SendingActivity(models.Model):
    """One hour of one mailbox's outbound mail: the baseline behaviour analysis compares
    the current hour against."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()  # start of the hour, UTC
    messages = models.PositiveIntegerField(default=0)
    recipients = models.PositiveIntegerField(default=0)
    new_recipients = models.PositiveIntegerField(default=0)  # never written to before
    bounces = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mailbox", "hour"], name="sendingactivity_unique")]

    def __str__(self) -> str:
        return f"mailbox {self.mailbox_id} at {self.hour:%Y-%m-%d %H}:00"


class KnownRecipient(models.Model):
    """Addresses a mailbox has sent to before (as a keyed hash), for "new recipients"."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+")
    address_hash = models.CharField(max_length=64)
    first_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "address_hash"], name="knownrecipient_unique")
        ]

    def __str__(self) -> str:
        return f"known recipient of mailbox {self.mailbox_id}"


class SubmissionSuspension(models.Model):
    """A mailbox whose submission is stopped: by behaviour analysis or an administrator.
    Active while `lifted_at` is empty."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="suspensions")
    reason = models.CharField(max_length=500)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["mailbox"], condition=Q(lifted_at__isnull=True), name="suspension_one_active"
            )
        ]

    def __str__(self) -> str:
        return f"suspension of mailbox {self.mailbox_id}"


class LoginNetwork(models.Model):
    """Networks (IPv4 /24, IPv6 /48) a user has signed in from, for "never-seen network"."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    network = models.CharField(max_length=64)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "network"], name="loginnetwork_unique")]

    def __str__(self) -> str:
        return f"{self.network} for user {self.user_id}"
