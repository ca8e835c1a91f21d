"""Scanning a received message: run the pipeline, store the full verdict, and add the
Authentication-Results and spam headers to the stored copy."""

from __future__ import annotations

import logging
import re
import time

from django.conf import settings
from django.db import IntegrityError, transaction

from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Domain, Mailbox, Message, MessageRecipient
from apps.threats.metrics import MESSAGES_SCANNED, SCAN_SECONDS
from apps.threats.models import ScanVerdict
from apps.threats.pipeline import PipelineResult, ScanContext, pipeline_run
from apps.threats.policy import policy_for_domain

logger = logging.getLogger(__name__)

__all__ = ["message_scan", "message_scan_then_deliver", "scan_context_for", "stamp_headers"]

# Headers we write. Copies arriving from outside are removed first, so that nobody can
# forge our verdict (RFC 8601 §5: remove A-R headers claiming our authserv-id).
_OWN_HEADERS = ("x-spam-flag", "x-spam-score", "x-spam-status", "x-a3-verdict")
_FOLDED = re.compile(rb"\r\n[ \t]")


def _authserv_id() -> str:
    return settings.A3_HOSTNAME


_COMMENT = re.compile(rb"\([^()]*\)")


def _authserv_id_of(value: bytes) -> bytes:
    """The authserv-id an Authentication-Results value claims (RFC 8601 §2.2): the first
    token, after unfolding and removing comments, before any version or ";"."""
    unfolded = _FOLDED.sub(b" ", value)
    for _ in range(5):  # nested comments, a few levels
        unfolded = _COMMENT.sub(b" ", unfolded)
    first = unfolded.split(b";", 1)[0].split()
    return first[0].lower() if first else b""


def _drop_forged(header_block: bytes) -> bytes:
    """Remove our own header names, and Authentication-Results claiming our authserv-id,
    judging each field as a whole (first line and its continuation lines)."""
    fields: list[list[bytes]] = []
    for line in header_block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    own_id = _authserv_id().lower().encode()
    kept: list[bytes] = []
    for lines in fields:
        name, _, value = lines[0].partition(b":")
        lowered = name.strip().lower()
        forged = lowered.decode("latin-1") in _OWN_HEADERS or (
            lowered == b"authentication-results"
            and _authserv_id_of(b"\r\n".join([value, *lines[1:]])) == own_id
        )
        if not forged:
            kept.extend(lines)
    return b"\r\n".join(kept)


def _fold(name: str, value: str) -> bytes:
    """One header field, folded at "; " so that no line passes 78 characters by much."""
    text = f"{name}: {value}"
    if len(text) <= 78:
        return text.encode("utf-8", errors="replace") + b"\r\n"
    pieces = value.split("; ")
    out = f"{name}: {pieces[0]}"
    for piece in pieces[1:]:
        out += ";\r\n\t" + piece
    return out.encode("utf-8", errors="replace") + b"\r\n"


def stamp_headers(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    """`raw` with our headers on top (after a leading Return-Path) and forged copies of
    them removed. Works on bytes: the body and every other header stay byte for byte."""
    end = raw.find(b"\r\n\r\n")
    head, rest = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
    head = _drop_forged(head)
    return_path = b""
    if head[:12].lower() == b"return-path:":
        first_end = head.find(b"\r\n")
        return_path, head = (
            (head + b"\r\n", b"") if first_end < 0 else (head[: first_end + 2], head[first_end + 2 :])
        )
    added = b"".join(_fold(name, value) for name, value in headers)
    return return_path + added + head + rest


def scan_context_for(message: Message, raw: bytes) -> ScanContext:
    addresses = list(
        MessageRecipient.objects.filter(message=message, folder="").values_list("address", flat=True)
    )
    names = sorted({address.rpartition("@")[2].lower() for address in addresses})
    domains = dict(Domain.objects.filter(name__in=names).values_list("name", "id"))
    # The first recipient's domain leads (its policy stamps the spam header, its Bayes
    # store scores the message).
    ordered = [
        domains[name]
        for name in dict.fromkeys(a.rpartition("@")[2].lower() for a in addresses)
        if name in domains
    ]
    return ScanContext(
        raw=raw,
        mail_from=message.mail_from,
        peer_ip=message.peer_ip,
        helo=message.helo,
        smtp_checks=message.smtp_checks or {},
        recipient_domain_ids=ordered,
        # Our users' submissions and mail the platform wrote itself (digests, reports:
        # no client address) get the malware and attachment checks only.
        submitted=message.submitted_by_id is not None or not message.peer_ip,
        message=message,
    )


def _headers_for(result: PipelineResult, context: ScanContext) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if result.auth_results:
        headers.append(("Authentication-Results", "; ".join([_authserv_id(), *result.auth_results])))
    if context.submitted:
        return headers
    policy = policy_for_domain(context.primary_domain_id)
    flagged = result.score >= policy.header_score
    tests = ",".join(sorted({s["stage"] for s in result.stages if s["score"] or s["category"]})) or "none"
    headers.append(("X-Spam-Flag", "YES" if flagged else "NO"))
    headers.append(("X-Spam-Score", f"{result.score:.1f}"))
    headers.append(
        (
            "X-Spam-Status",
            f"{'Yes' if flagged else 'No'}, score={result.score:.1f} required={policy.header_score:.1f} tests={tests}",
        )
    )
    return headers


def message_scan(*, message: Message, raw: bytes | None = None) -> tuple[ScanVerdict, bytes]:
    """The message's verdict and its stored bytes, scanning it first if that has not
    happened yet. Safe to call concurrently: one scan's verdict and headers win."""
    existing = ScanVerdict.objects.filter(message=message).first()
    if existing is not None:
        current = Message.objects.filter(pk=message.pk).values_list("blob_sha256", flat=True).first()
        if current and current != message.blob_sha256:
            message.blob_sha256 = current
        return existing, blob_store().read(message.blob_sha256)
    if raw is None:
        raw = blob_store().read(message.blob_sha256)
    started = time.monotonic()
    context = scan_context_for(message, raw)
    result = pipeline_run(context)
    MESSAGES_SCANNED.labels(source="submission" if context.submitted else "inbound").inc()
    headers = _headers_for(result, context)
    # Stamped even with nothing to add: forged copies of our headers go either way.
    stamped = stamp_headers(raw, headers)
    sha256 = blob_store().put(stamped) if stamped != raw else message.blob_sha256
    auth_value = next((value for name, value in headers if name == "Authentication-Results"), "")
    try:
        with transaction.atomic():
            verdict = ScanVerdict.objects.create(
                message=message,
                score=result.score,
                category=result.category,
                stages=result.stages,
                auth_results=auth_value[:4000],
                duration_ms=result.duration_ms,
            )
            Message.objects.filter(pk=message.pk).update(blob_sha256=sha256)
    except IntegrityError:  # another worker scanned it meanwhile: theirs stands
        return message_scan(message=message)
    # The copy without our headers is left to the orphan sweep (after its grace period):
    # a delivery or relay pass that read the old hash may still be about to read it.
    message.blob_sha256 = sha256
    SCAN_SECONDS.observe(time.monotonic() - started)
    if result.failed_stages:
        _alert_scanner_failure(message, result.failed_stages, context.primary_domain_id)
    return verdict, stamped


def _alert_scanner_failure(message: Message, stages: list[str], domain_id: int | None) -> None:
    """A scanner that is down is never silent: one alert per stage and 10 minutes."""
    from django.core.cache import cache

    from apps.alerts.services import emit

    for stage in stages:
        if cache.add(f"threats:scanner-down:{stage}", 1, timeout=600):
            emit(
                "threats.scanner_failed",
                "error",
                f"Scan stage {stage} failed or timed out (message {message.queue_id}); "
                "the domain policy's fail-open/fail-closed setting applied.",
                domain_id=domain_id,
                stage=stage,
                queue_id=message.queue_id,
            )


def mailbox_domains(mailbox_ids: list[int]) -> dict[int, int]:
    return dict(Mailbox.objects.filter(pk__in=mailbox_ids).values_list("id", "domain_id"))


def message_scan_then_deliver(*, message_id: int) -> None:
    """The scan queue's task body: scan a received message, then queue its delivery. A
    message already scanned, delivered or gone is handed on untouched (delivery itself
    does nothing for it), so a redelivered task is harmless."""
    from apps.mailboxes.tasks import message_deliver_task

    message = Message.objects.filter(pk=message_id, state=Message.State.RECEIVED).first()
    if message is not None:
        try:
            message_scan(message=message)
        except Exception:  # delivery scans it again: a scan failure must not strand mail
            logger.exception("scanning message %s failed; delivery will retry the scan", message.queue_id)
    message_deliver_task.delay(message_id=message_id)
