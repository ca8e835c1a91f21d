"""Outbound checks: mail our users submit is scanned for malware before it is taken.

An infected client or a compromised account sending malware should get an immediate
refusal (and the administrators an alert), not have the message bounced or, worse,
delivered. Only the malware stages decide here; attachment policy findings do not stop
outbound mail (what a domain may send is the recipient's policy to judge), and a scanner
that fails lets the message through, as submission must not depend on an optional engine.
"""

from __future__ import annotations

import logging

from apps.threats.models import Category
from apps.threats.pipeline import ScanContext, configured_stages, pipeline_run

logger = logging.getLogger(__name__)

__all__ = ["outbound_malware_problem"]


def outbound_malware_problem(*, raw: bytes, mailbox_id: int, domain_id: int) -> str | None:
    """The 554 reply refusing a submitted message that carries malware, or None."""
    from apps.alerts.services import emit
    from apps.mailboxes.models import Mailbox

    stages = [stage for stage in configured_stages() if getattr(stage, "for_submissions", False)]
    context = ScanContext(raw=raw, submitted=True, recipient_domain_ids=[domain_id])
    result = pipeline_run(context, stages=stages)
    if result.category != Category.MALWARE:
        return None
    found = next(
        (s["reasons"][0] for s in result.stages if s["category"] == Category.MALWARE and s["reasons"]),
        "malware found",
    )
    address = Mailbox.objects.filter(pk=mailbox_id).values_list("address", flat=True).first() or "?"
    logger.warning("submission from %s refused: %s", address, found)
    emit(
        "threats.outbound_malware",
        "critical",
        f"{address} tried to send malware ({found}); the message was refused. The account or "
        "its device may be compromised.",
        domain_id=domain_id,
        mailbox_id=mailbox_id,
    )
    return f"554 5.7.1 Message refused: {found[:200]}"
