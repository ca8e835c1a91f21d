"""The effective verdict policy of a domain, and allow/block list matching."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields

from django.conf import settings
from django.db.models import Q

from apps.threats.models import Action, DigestFrequency, DomainPolicy, ListEntry, ScannerFailureMode


@dataclass(frozen=True)
class EffectivePolicy:
    header_score: float
    junk_score: float
    quarantine_score: float
    reject_score: float
    unscannable_action: str
    scanner_failure: str
    quarantine_days: int
    digest_default: str
    bayes_enabled: bool


def server_policy() -> EffectivePolicy:
    return EffectivePolicy(
        header_score=settings.A3_SPAM_HEADER_SCORE,
        junk_score=settings.A3_SPAM_JUNK_SCORE,
        quarantine_score=settings.A3_SPAM_QUARANTINE_SCORE,
        reject_score=settings.A3_SPAM_REJECT_SCORE,
        unscannable_action=Action.QUARANTINE,
        scanner_failure=ScannerFailureMode.FAIL_OPEN,
        quarantine_days=settings.A3_QUARANTINE_DAYS,
        digest_default=DigestFrequency.DAILY,
        bayes_enabled=True,
    )


def policy_for_domain(domain_id: int | None) -> EffectivePolicy:
    row = DomainPolicy.objects.filter(domain_id=domain_id).first() if domain_id else None
    if row is None:
        return server_policy()
    # The domain's row has a column for every setting of the effective policy.
    return EffectivePolicy(**{field.name: getattr(row, field.name) for field in fields(EffectivePolicy)})


def _ip_matches(value: str, ip: str | None) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False


def list_match(
    *, sender: str, peer_ip: str | None, domain_id: int | None = None, mailbox_id: int | None = None
) -> ListEntry | None:
    """The list entry that decides for this sender and client, or None. Scopes: the
    mailbox's own list first, then its domain's, then the server's; within a scope an
    allow entry wins over a block entry (an explicit exception)."""
    sender = sender.lower()
    sender_domain = sender.rpartition("@")[2] if "@" in sender else ""
    scope = Q(domain__isnull=True, mailbox__isnull=True)
    if domain_id is not None:
        scope |= Q(domain_id=domain_id, mailbox__isnull=True)
    if mailbox_id is not None:
        scope |= Q(mailbox_id=mailbox_id)
    values = Q(match=ListEntry.Match.IP)
    if sender:
        values |= Q(match=ListEntry.Match.SENDER, value=sender)
    if sender_domain:
        labels = sender_domain.split(".")
        values |= Q(
            match=ListEntry.Match.DOMAIN, value__in=[".".join(labels[i:]) for i in range(len(labels))]
        )
    entries = list(ListEntry.objects.filter(scope & values))

    def rank(entry: ListEntry) -> tuple[int, int]:
        level = 0 if entry.mailbox_id is not None else 1 if entry.domain_id is not None else 2
        return level, 0 if entry.kind == ListEntry.Kind.ALLOW else 1

    for entry in sorted(entries, key=rank):
        if entry.match != ListEntry.Match.IP or _ip_matches(entry.value, peer_ip):
            return entry
    return None
