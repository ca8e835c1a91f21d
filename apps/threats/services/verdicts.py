"""Applying a verdict at delivery: per destination mailbox, the mailbox's domain policy
and the allow/block lists decide between the INBOX, Junk and the quarantine."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.mailboxes.models import Folder, Mailbox
from apps.mailboxes.parsing import parse_message
from apps.mailboxes.services import DeliveryContext
from apps.threats.metrics import QUARANTINED, VERDICTS
from apps.threats.models import (
    Action,
    Category,
    ListEntry,
    QuarantineItem,
    QuarantineRecipient,
    ScannerFailureMode,
    ScanVerdict,
)
from apps.threats.policy import EffectivePolicy, list_match, policy_for_domain
from apps.threats.services.scan import message_scan

logger = logging.getLogger(__name__)

__all__ = ["Decision", "apply_verdict_stage", "decide", "explain"]


@dataclass(frozen=True)
class Decision:
    action: str  # Action value
    category: str = ""  # for quarantine
    reason: str = ""


def decide(
    *,
    verdict: ScanVerdict,
    policy: EffectivePolicy,
    sender: str,
    peer_ip: str | None,
    domain_id: int | None,
    mailbox_id: int | None,
    failed_stages: list[str] | None = None,
) -> Decision:
    """What happens to a scanned message for one mailbox. Malware and policy findings
    hold the message whatever the lists say; then the lists; then the score."""
    if verdict.category == Category.MALWARE:
        return Decision(Action.QUARANTINE, Category.MALWARE, explain(verdict) or "malware found")
    if verdict.category == Category.POLICY:
        return Decision(
            Action.QUARANTINE, Category.POLICY, explain(verdict) or "blocked by the attachment policy"
        )
    if verdict.category == Category.UNSCANNABLE:
        action = policy.unscannable_action
        if action == Action.REJECT:  # too late to reject after DATA
            action = Action.QUARANTINE
        return Decision(action, Category.UNSCANNABLE, explain(verdict) or "the message could not be scanned")
    failed = (
        failed_stages
        if failed_stages is not None
        else [stage["stage"] for stage in verdict.stages if stage.get("status") in ("error", "timeout")]
    )
    if failed and policy.scanner_failure == ScannerFailureMode.FAIL_CLOSED:
        return Decision(
            Action.QUARANTINE, Category.UNSCANNABLE, f"a scanner was unavailable ({', '.join(failed)})"
        )
    entry = list_match(sender=sender, peer_ip=peer_ip, domain_id=domain_id, mailbox_id=mailbox_id)
    if entry is not None and entry.kind == ListEntry.Kind.ALLOW:
        if entry.match != ListEntry.Match.IP and _sender_forged(verdict):
            # Anyone can claim an allowed sender: an allow entry for an address or domain
            # counts only for mail that did not fail its sender's SPF or DMARC.
            entry = None
        else:
            return Decision(Action.DELIVER, reason=f"allow-listed ({entry.match} {entry.value})")
    if entry is not None:
        return Decision(
            Action.QUARANTINE, Category.SPAM, f"the sender is block-listed ({entry.match} {entry.value})"
        )
    if verdict.score >= policy.quarantine_score:
        return Decision(Action.QUARANTINE, Category.SPAM, explain(verdict))
    if verdict.score >= policy.junk_score:
        return Decision(Action.JUNK, reason=explain(verdict))
    if verdict.score >= policy.header_score:
        return Decision(Action.HEADER, reason=explain(verdict))
    return Decision(Action.DELIVER)


def _sender_forged(verdict: ScanVerdict) -> bool:
    results = verdict.auth_results.lower()
    return "dmarc=fail" in results or "spf=fail" in results


def explain(verdict: ScanVerdict) -> str:
    """The verdict in plain words: the findings that weighed most, strongest first."""
    findings = [
        (stage.get("category") != "", abs(stage.get("score", 0)), reason)
        for stage in verdict.stages
        for reason in stage.get("reasons", [])
        if stage.get("score") or stage.get("category")
    ]
    findings.sort(key=lambda f: (f[0], f[1]), reverse=True)
    reasons = list(dict.fromkeys(reason for _, _, reason in findings))[:4]
    text = "; ".join(reasons)
    return (f"score {verdict.score:.1f}: {text}" if text else f"score {verdict.score:.1f}")[:500]


def _release_pass(context: DeliveryContext, item: QuarantineItem) -> None:
    """Delivering a quarantined message again after a release: only the released
    mailboxes not yet served get it, into the INBOX. Mailboxes that were never held were
    served by the first pass (and may have deleted the message since); undecided ones
    keep it in quarantine."""
    rows = list(item.recipients.values_list("pk", "mailbox_id", "state", "filed_at"))
    due = {
        pk: mailbox_id
        for pk, mailbox_id, state, filed_at in rows
        if state == QuarantineRecipient.State.RELEASED and filed_at is None
    }
    active = set(Mailbox.objects.filter(pk__in=due.values(), is_active=True).values_list("pk", flat=True))
    context.targets = {
        mailbox_id: Folder.SpecialUse.INBOX for mailbox_id in due.values() if mailbox_id in active
    }
    context.forwards.clear()  # forwarding copies are never made of held mail
    waiting = {QuarantineRecipient.State.HELD, QuarantineRecipient.State.RELEASE_REQUESTED}
    context.partly_held = any(state in waiting for _, _, state, _ in rows)
    if not context.targets:
        context.held = item.category
    served = [pk for pk, mailbox_id in due.items() if mailbox_id in active]

    def record(ctx: DeliveryContext) -> None:
        QuarantineRecipient.objects.filter(pk__in=served).update(filed_at=timezone.now())
        # A release committed while this pass ran: go once more for it.
        ctx.again = (
            QuarantineRecipient.objects.filter(
                item=item, state=QuarantineRecipient.State.RELEASED, filed_at__isnull=True
            )
            .exclude(pk__in=served)
            .exists()
        )

    context.on_record.append(record)


def apply_verdict_stage(context: DeliveryContext) -> None:
    """Delivery stage: scan the message if the scan queue has not yet, then route each
    target mailbox by its policy; held mailboxes become the message's quarantine. With
    scanning switched off (A3_SCANNING) it only limits the release of mail held earlier
    to the released mailboxes."""
    message = context.message
    if not settings.A3_SCANNING:
        held_item = QuarantineItem.objects.filter(message=message).first()
        if held_item is not None:
            _release_pass(context, held_item)
        return
    verdict, raw = message_scan(message=message, raw=None)
    if raw != context.raw:
        context.raw = raw
        context.parsed = parse_message(raw)
    item = QuarantineItem.objects.filter(message=message).first()
    if item is not None:
        _release_pass(context, item)
        return
    domains = dict(Mailbox.objects.filter(pk__in=list(context.targets)).values_list("id", "domain_id"))
    policies: dict[int | None, EffectivePolicy] = {}
    held: dict[int, Decision] = {}
    actions: dict[str, str] = {}
    for mailbox_id, folder in list(context.targets.items()):
        if folder != Folder.SpecialUse.INBOX:  # the sender's own Sent copy
            continue
        domain_id = domains.get(mailbox_id)
        if domain_id not in policies:
            policies[domain_id] = policy_for_domain(domain_id)
        decision = decide(
            verdict=verdict,
            policy=policies[domain_id],
            sender=message.mail_from,
            peer_ip=message.peer_ip,
            domain_id=domain_id,
            mailbox_id=mailbox_id,
        )
        actions[str(mailbox_id)] = decision.action
        VERDICTS.labels(action=decision.action).inc()
        if decision.action == Action.JUNK:
            context.targets[mailbox_id] = Folder.SpecialUse.JUNK
        elif decision.action == Action.QUARANTINE:
            held[mailbox_id] = decision
            del context.targets[mailbox_id]
    if context.forwards and _withhold_forwards(verdict, held):
        # Never forward what we would hold to other providers: malware, policy hits and
        # spam over the quarantine score (junk-level spam goes on, flagged in its header).
        actions["forwards"] = "withheld"
        withheld = sorted(context.forwards)
        context.forwards.clear()
        context.on_record.append(lambda ctx: _alert_forwards_withheld(ctx, verdict, withheld))
    if held:
        context.partly_held = True
        if not context.targets:
            context.held = next(iter(held.values())).category
        context.on_record.append(lambda ctx: _record_quarantine(ctx, verdict, held))
    # Written with the delivery, in its transaction: one write less per message.
    context.on_record.append(lambda ctx: ScanVerdict.objects.filter(pk=verdict.pk).update(actions=actions))


def _withhold_forwards(verdict: ScanVerdict, held: dict[int, Decision]) -> bool:
    if held or verdict.category in (Category.MALWARE, Category.POLICY):
        return True
    return verdict.score >= policy_for_domain(None).quarantine_score


def _alert_forwards_withheld(context: DeliveryContext, verdict: ScanVerdict, addresses: list[str]) -> None:
    from apps.alerts.services import emit

    message = context.message
    emit(
        "threats.forward_withheld",
        "warning",
        f"Not forwarded to {', '.join(addresses)[:200]}: message {message.queue_id} from "
        f"{message.mail_from or '<>'} was judged {verdict.category or 'spam'} ({explain(verdict)[:200]})",
        queue_id=message.queue_id,
        addresses=addresses[:20],
    )


def _record_quarantine(context: DeliveryContext, verdict: ScanVerdict, held: dict[int, Decision]) -> None:
    """Inside the delivery transaction: the quarantine item, one row per held mailbox,
    and the live alert."""
    from apps.alerts.services import emit

    message = context.message
    _rank = [Category.SPAM, Category.UNSCANNABLE, Category.POLICY, Category.MALWARE]
    strongest = max(held.values(), key=lambda d: _rank.index(d.category) if d.category in _rank else 0)
    domains = dict(Mailbox.objects.filter(pk__in=list(held)).values_list("id", "domain_id"))
    days = max(policy_for_domain(domain_id).quarantine_days for domain_id in set(domains.values()) or {None})
    item, created = QuarantineItem.objects.get_or_create(
        message=message,
        defaults={
            "category": strongest.category,
            "score": verdict.score,
            "reason": strongest.reason[:500],
            "sender": message.mail_from[:998],
            "from_header": context.parsed.from_header,
            "subject": context.parsed.subject,
            "size": message.size,
            "expires_at": timezone.now() + timedelta(days=days),
        },
    )
    QuarantineRecipient.objects.bulk_create(
        [QuarantineRecipient(item=item, mailbox_id=mailbox_id) for mailbox_id in sorted(held)],
        ignore_conflicts=True,
    )
    if not created:
        return
    QUARANTINED.labels(category=item.category).inc()
    level = {Category.MALWARE: "critical", Category.POLICY: "warning"}.get(item.category, "info")
    domain_id = next(iter(sorted(domains.values())), None)
    emit(
        f"threats.quarantined.{item.category}",
        level,
        f"Quarantined ({item.category}): {item.subject[:120] or '(no subject)'} from "
        f"{item.sender or '<>'}: {item.reason[:200]}",
        domain_id=domain_id,
        quarantine_id=item.pk,
        category=item.category,
        queue_id=message.queue_id,
    )
