"""The outbound queue: creating items, delivering them to remote servers with aiosmtplib,
retrying with backoff, bouncing with a delivery report, and the sweep that re-enqueues
items whose task was lost.

A delivery pass leases the due items of one destination domain (up to A3_RELAY_BATCH),
reads and signs them, then talks SMTP in one connection per host, outside any database
transaction (the network part is asyncio and touches no ORM). The results are written back
per item in short transactions, together with any delivery report they cause, so a crash
at any point leaves each item either still leased (the sweep gives it back), or recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.encoders
import email.parser
import email.policy
import email.utils
import functools
import logging
import secrets
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiosmtplib
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from apps.core.addresses import AddressError, parse_address
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import Message
from apps.relay.dns import DnsNoSuchDomain, DnsTemporaryError, MailHost, host_addresses, mail_hosts
from apps.relay.metrics import RELAY_ATTEMPTS, RELAY_RECIPIENTS
from apps.relay.models import DeliveryAttempt, QueueItem, QueueRecipient
from apps.relay.services.routing import Route, route_for_domain

logger = logging.getLogger(__name__)

__all__ = [
    "clean_text",
    "queue_deliver",
    "queue_item_report",
    "queue_items_create",
    "queue_requeue_stalled",
    "queue_watch",
    "report_send",
    "retry_delay",
]

State = QueueItem.State
RState = QueueRecipient.State


# --- Creating --------------------------------------------------------------------------


def _domain_of(address: str) -> str:
    try:
        return parse_address(address).domain
    except AddressError:
        return address.rpartition("@")[2].lower()


def queue_items_create(
    *,
    message: Message,
    sender: str,
    recipients: Iterable[tuple[str, str]],
    report_to: str | None = None,
    kind: str = QueueItem.Kind.SUBMISSION,
) -> list[QueueItem]:
    """Queue `message` for remote `recipients` ((address, original address) pairs), one
    item per recipient domain. Runs in the caller's transaction; delivery is woken once
    it commits. `report_to` defaults to the sender; "" means no delivery reports (a DSN
    itself, or a null sender)."""
    from apps.relay.tasks import queue_deliver_task

    by_domain: dict[str, dict[str, str]] = {}
    for address, original in recipients:
        by_domain.setdefault(_domain_of(address), {}).setdefault(address, original)
    items = []
    for domain, addresses in sorted(by_domain.items()):
        item = QueueItem.objects.create(
            message=message,
            kind=kind,
            sender=sender,
            report_to=sender if report_to is None else report_to,
            domain=domain,
        )
        QueueRecipient.objects.bulk_create(
            QueueRecipient(item=item, address=address, original_address=original)
            for address, original in addresses.items()
        )
        queue_deliver_task.delay_on_commit(item_id=item.pk)
        items.append(item)
    return items


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff: the minimum after the first failure, doubling, capped."""
    exponent = max(0, attempts - 1)
    seconds = settings.A3_RELAY_RETRY_MIN_SECONDS * (2 ** min(exponent, 30))
    return timedelta(seconds=min(seconds, settings.A3_RELAY_RETRY_MAX_SECONDS))


# --- Leasing ---------------------------------------------------------------------------


def _due() -> Q:
    return Q(state__in=[State.QUEUED, State.DEFERRED], on_hold=False, next_attempt_at__lte=timezone.now())


def _lease(item_id: int) -> list[QueueItem]:
    """Claim `item_id` and other due items of its domain for this pass, unless the domain
    already has A3_RELAY_DESTINATION_CONCURRENCY passes running (the running passes wake
    the next one when they finish)."""
    domain = QueueItem.objects.filter(pk=item_id).values_list("domain", flat=True).first()
    if domain is None:
        return []
    running = (
        QueueItem.objects.filter(domain=domain, state=State.SENDING).values("lease_token").distinct().count()
    )
    if running >= settings.A3_RELAY_DESTINATION_CONCURRENCY:
        return []
    others = list(
        QueueItem.objects.filter(_due(), domain=domain)
        .exclude(pk=item_id)
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[: max(0, settings.A3_RELAY_BATCH - 1)]
    )
    token = secrets.token_hex(8)
    with transaction.atomic():
        claimed = QueueItem.objects.filter(_due(), pk__in=[item_id, *others]).update(
            state=State.SENDING, lease_token=token, leased_at=timezone.now()
        )
    if not claimed:
        return []
    return list(
        QueueItem.objects.filter(lease_token=token, state=State.SENDING)
        .select_related("message")
        .order_by("id")
    )


# --- Preparing (sync: database, blobs, DKIM) --------------------------------------------


@dataclass
class Job:
    item_id: int
    sender: str
    recipients: list[str]
    payload: bytes
    payload_7bit: bytes | None  # for a next hop without 8BITMIME; None: cannot be converted
    needs_8bit: bool
    needs_smtputf8: bool


@dataclass
class RecipientResult:
    code: int | None
    reply: str
    host: str = ""

    @property
    def state(self) -> str:
        if self.code is not None and 200 <= self.code < 300:
            return RState.SENT
        if self.code is not None and self.code >= 500:
            return RState.BOUNCED
        return RState.DEFERRED


@dataclass
class JobResult:
    recipients: dict[str, RecipientResult] = field(default_factory=dict)
    host: str = ""
    port: int | None = None
    tls: bool = False
    tried: list[str] = field(default_factory=list)  # hosts and what happened there


def _header_from_domain(raw: bytes) -> str:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    _, address = email.utils.parseaddr(str(headers.get("From", "")))
    return _domain_of(address) if "@" in address else ""


def _sign(raw: bytes) -> bytes:
    """Prepend a DKIM signature when the From domain is ours and has an active key."""
    from apps.relay.services.dkim import dkim_sign

    domain = _header_from_domain(raw)
    if not domain:
        return raw
    try:
        return dkim_sign(raw=raw, domain=domain) + raw
    except Exception:  # an unsignable message still goes out, as it would without a key
        logger.exception("DKIM signing failed for a message from %s", domain)
        return raw


def _headers_are_ascii(raw: bytes) -> bool:
    end = raw.find(b"\r\n\r\n")
    return (raw if end < 0 else raw[:end]).isascii()


def to_7bit(raw: bytes) -> bytes | None:
    """The message with every 8-bit body part re-encoded (quoted-printable for text,
    base64 otherwise), per RFC 6152 §3 for a next hop without 8BITMIME; None when the
    headers themselves are 8-bit (that needs SMTPUTF8, which cannot be downgraded)."""
    if not _headers_are_ascii(raw):
        return None
    message = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(raw)
    for part in message.walk():
        if part.is_multipart():
            continue
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if cte not in {"8bit", "binary", "7bit", ""}:
            continue  # already quoted-printable or base64
        body = part.get_payload(decode=True) or b""
        if body.isascii():
            continue
        del part["Content-Transfer-Encoding"]
        part.set_payload(body)
        if part.get_content_maintype() == "text":
            email.encoders.encode_quopri(part)
        else:
            email.encoders.encode_base64(part)
    return message.as_bytes(policy=email.policy.SMTP)


def _prepare(items: list[QueueItem]) -> tuple[list[Job], dict[int, JobResult]]:
    """Jobs for the leased items, and results for items that fail before any network
    talk (their stored content is gone)."""
    jobs: list[Job] = []
    failed: dict[int, JobResult] = {}
    pending = _pending_recipients([item.pk for item in items])
    for item in items:
        addresses = pending.get(item.pk, [])
        try:
            raw = blob_store().read(item.message.blob_sha256)
        except BlobNotFound:
            logger.error("content of queued message %s is missing", item.message.queue_id)
            failed[item.pk] = JobResult(
                recipients={
                    a: RecipientResult(554, "5.3.0 Stored message content is missing") for a in addresses
                }
            )
            continue
        try:
            jobs.append(_job(item, raw, addresses))
        except Exception:  # one unreadable message must not stop its destination's queue
            logger.exception("could not prepare queued message %s", item.message.queue_id)
            failed[item.pk] = JobResult(
                recipients={
                    a: RecipientResult(554, "5.6.0 The message could not be prepared for sending")
                    for a in addresses
                }
            )
    return jobs, failed


def _job(item: QueueItem, raw: bytes, addresses: list[str]) -> Job:
    # Only mail our users submitted is signed with our domains' keys: a forward or a
    # relayed report carries someone else's content, and signing it would let anyone
    # send DMARC-passing mail in our name through a forwarding alias.
    sign = item.message.submitted_by_id is not None
    needs_8bit = not raw.isascii()
    downgraded = None
    if needs_8bit:
        try:
            downgraded = to_7bit(raw)
        except Exception:  # malformed MIME: it can only go to 8BITMIME hosts
            logger.warning("message %s cannot be converted to 7 bit", item.message.queue_id, exc_info=True)
    return Job(
        item_id=item.pk,
        sender=item.sender,
        recipients=addresses,
        payload=_sign(raw) if sign else raw,
        payload_7bit=(_sign(downgraded) if sign else downgraded) if downgraded is not None else None,
        needs_8bit=needs_8bit,
        needs_smtputf8=not (item.sender.isascii() and all(a.isascii() for a in addresses))
        or not _headers_are_ascii(raw),
    )


def _pending_recipients(item_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for item_id, address in (
        QueueRecipient.objects.filter(item_id__in=item_ids, state__in=[RState.PENDING, RState.DEFERRED])
        .order_by("id")
        .values_list("item_id", "address")
    ):
        found.setdefault(item_id, []).append(address)
    return found


# --- Talking SMTP (async; no database) --------------------------------------------------


class _HostUnusable(Exception):
    """This host cannot take mail now (refused greeting, TLS required but missing…)."""

    def __init__(self, reply: str, code: int | None = None) -> None:
        super().__init__(reply)
        self.reply = reply
        self.code = code


@functools.lru_cache(maxsize=2)
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One context per kind and process: loading the CA store costs milliseconds."""
    context = ssl.create_default_context()
    if not verify:
        # Opportunistic TLS (RFC 7435): encryption without authentication beats plain text;
        # most MX certificates would not verify against the MX name anyway.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def clean_text(text: str) -> str:
    """Remote replies may hold undecodable bytes (kept as surrogates) or NULs; neither
    can be stored, and a reply must never stop us recording a result."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def _reply_text(code: int | None, message: str) -> str:
    text = " ".join(clean_text(message or "").split())
    return f"{code} {text}".strip() if code else text


async def _open(address: str, port: int, host_name: str, route: Route | None) -> aiosmtplib.SMTP:
    tls_mode = route.tls if route else "opportunistic"
    verify = bool(route and route.verify_certificate)
    context = _tls_context(verify)
    smtp = aiosmtplib.SMTP(
        # A verified implicit-TLS connection checks the certificate against the name we
        # connect to, so it must be the host's name (resolved by the system) not its address.
        hostname=host_name if tls_mode == "implicit" and verify else address,
        port=port,
        local_hostname=settings.A3_HOSTNAME,
        timeout=settings.A3_RELAY_COMMAND_TIMEOUT_SECONDS,
        use_tls=tls_mode == "implicit",
        start_tls=False,
        tls_context=context if tls_mode == "implicit" else None,
        validate_certs=verify,
    )
    await asyncio.wait_for(smtp.connect(), timeout=settings.A3_RELAY_CONNECT_TIMEOUT_SECONDS)
    try:
        await smtp.ehlo()
        if tls_mode in {"opportunistic", "required"}:
            if smtp.supports_extension("starttls"):
                await smtp.starttls(server_hostname=host_name, tls_context=context)
                await smtp.ehlo()  # RFC 3207 §4.2: what the server offers may change under TLS
            elif tls_mode == "required":
                raise _HostUnusable("STARTTLS is required for this destination but was not offered")
        if route and route.username:
            if not _is_tls(smtp):  # never hand a relay password to whoever strips STARTTLS
                raise _HostUnusable("will not log in to a next hop without TLS")
            await smtp.login(route.username, route.password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        smtp.close()
        raise _HostUnusable(_reply_text(exc.code, exc.message), exc.code) from exc
    except BaseException:
        smtp.close()
        raise
    return smtp


def _is_tls(smtp: aiosmtplib.SMTP) -> bool:
    return smtp.get_transport_info("sslcontext") is not None


async def _send(smtp: aiosmtplib.SMTP, job: Job, host: str) -> dict[str, RecipientResult]:
    """One transaction. Protocol replies become per-recipient results; a lost connection
    or a timeout propagates (the caller defers what is left)."""

    def every(code: int | None, reply: str) -> dict[str, RecipientResult]:
        return {address: RecipientResult(code, reply, host) for address in job.recipients}

    payload = job.payload
    options: list[str] = []
    encoding = "ascii"
    if job.needs_smtputf8:
        if not smtp.supports_extension("smtputf8"):
            return every(553, "5.6.7 The next hop does not support SMTPUTF8, which this message needs")
        options.append("SMTPUTF8")
        encoding = "utf-8"
    if job.needs_8bit:
        if smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        elif job.payload_7bit is not None:
            payload = job.payload_7bit
        else:
            return every(
                554, "5.6.3 The next hop does not support 8BITMIME and the message cannot be converted"
            )
    limit = smtp.esmtp_extensions.get("size", "")
    if limit.isdigit() and int(limit) and len(payload) > int(limit):
        return every(552, f"5.3.4 Message too big for the next hop (limit {limit} bytes)")
    if "size" in smtp.esmtp_extensions:
        options.append(f"SIZE={len(payload)}")
    try:
        await smtp.mail(job.sender, options=options, encoding=encoding)
    except aiosmtplib.SMTPSenderRefused as exc:
        if exc.code == 503:  # out of sync with the server: not a verdict on this message
            raise aiosmtplib.SMTPServerDisconnected(
                f"protocol error: {_reply_text(exc.code, exc.message)}"
            ) from exc
        await _reset(smtp)
        return every(exc.code, _reply_text(exc.code, exc.message))
    results: dict[str, RecipientResult] = {}
    accepted: list[str] = []
    for address in job.recipients:
        try:
            await smtp.rcpt(address, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            results[address] = RecipientResult(exc.code, _reply_text(exc.code, exc.message), host)
        else:
            accepted.append(address)
    if not accepted:
        await _reset(smtp)
        return results
    try:
        response = await smtp.data(payload)
    except aiosmtplib.SMTPDataError as exc:
        results.update(
            {a: RecipientResult(exc.code, _reply_text(exc.code, exc.message), host) for a in accepted}
        )
        await _reset(smtp)  # DATA refused before the content: the transaction is still open
        return results
    results.update(
        {
            a: RecipientResult(response.code, _reply_text(response.code, response.message), host)
            for a in accepted
        }
    )
    return results


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPResponseException):
        await smtp.rset()


async def _candidates(domain: str, route: Route | None) -> list[MailHost]:
    if route is not None:
        return [MailHost(name=route.host, preference=0, port=route.port)]
    return await mail_hosts(domain)


async def deliver_jobs(
    domain: str, route: Route | None, jobs: list[Job], *, deadline: float
) -> dict[int, JobResult]:
    """Deliver `jobs` (all for `domain`): hosts in MX order, each address in turn, one
    connection per host reused for every job. Jobs left over when every host failed, or
    when the deadline passed, get a temporary result (or none, if never tried)."""
    results = {job.item_id: JobResult() for job in jobs}

    def settle_all(code: int | None, reply: str) -> dict[int, JobResult]:
        for job in jobs:
            results[job.item_id].recipients = {a: RecipientResult(code, reply) for a in job.recipients}
        return results

    try:
        hosts = await _candidates(domain, route)
    except DnsNoSuchDomain:
        return settle_all(550, f"5.1.2 Recipient domain {domain} does not exist (NXDOMAIN)")
    except DnsTemporaryError as exc:
        return settle_all(None, f"4.4.3 DNS lookup failed: {exc}")
    if not hosts:
        return settle_all(556, f"5.1.10 Recipient domain {domain} accepts no mail (null MX, RFC 7505)")

    pending = list(jobs)
    last_problem = "4.4.1 No mail host could be reached"
    for host in hosts:
        try:
            addresses = await host_addresses(host.name)
        except DnsTemporaryError as exc:
            last_problem = f"4.4.3 {exc}"
            _note_tried(results, pending, f"{host.name}: {exc}")
            continue
        if not addresses:
            _note_tried(results, pending, f"{host.name}: no address records")
            continue
        for address in addresses:
            if not pending or time.monotonic() > deadline:
                break
            where = f"{host.name}[{address}]:{host.port}"
            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    smtp = await _open(address, host.port, host.name, route)
            except _HostUnusable as exc:
                last_problem = exc.reply if exc.code else f"4.7.4 {exc.reply}"
                _note_tried(results, pending, f"{where}: {exc.reply}")
                continue
            except aiosmtplib.SMTPResponseException as exc:  # refused greeting or EHLO
                last_problem = f"4.4.1 {where} said: {_reply_text(exc.code, exc.message)}"
                _note_tried(results, pending, f"{where}: {_reply_text(exc.code, exc.message)}")
                continue
            except (OSError, TimeoutError, aiosmtplib.SMTPException) as exc:
                last_problem = f"4.4.1 Connection to {where} failed: {exc or type(exc).__name__}"
                _note_tried(results, pending, f"{where}: {exc or type(exc).__name__}")
                continue
            tls = _is_tls(smtp)
            try:
                while pending and time.monotonic() <= deadline:
                    job = pending[0]
                    result = results[job.item_id]
                    result.host, result.port, result.tls = host.name, host.port, tls
                    result.tried.append(f"{where}: connected{' with TLS' if tls else ''}")
                    try:
                        # The pass must end before its lease can expire, whatever the
                        # remote server does: each transaction gets what is left.
                        async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                            result.recipients = await _send(smtp, job, host.name)
                    except (OSError, TimeoutError, aiosmtplib.SMTPException) as exc:
                        # Lost mid-transaction: defer this job (it may have arrived; a
                        # retry can duplicate it, never lose it) and stop using the host.
                        text = clean_text(f"4.4.2 Connection to {where} lost: {exc or type(exc).__name__}")
                        result.recipients = {
                            a: RecipientResult(None, text, host.name) for a in job.recipients
                        }
                        pending.pop(0)
                        break
                    pending.pop(0)
            finally:
                try:
                    await asyncio.wait_for(smtp.quit(), timeout=5)
                except (OSError, TimeoutError, aiosmtplib.SMTPException):
                    smtp.close()
        if not pending or time.monotonic() > deadline:
            break
    for job in pending:
        if results[job.item_id].tried:  # tried somewhere: a temporary failure
            results[job.item_id].recipients = {a: RecipientResult(None, last_problem) for a in job.recipients}
    return results


def _note_tried(results: dict[int, JobResult], jobs: list[Job], note: str) -> None:
    for job in jobs:
        results[job.item_id].tried.append(clean_text(note))


# --- Recording -------------------------------------------------------------------------


def _summary(result: JobResult) -> str:
    replies = list(dict.fromkeys(r.reply for r in result.recipients.values() if r.reply))
    return "; ".join(replies)[:2000]


def _outcome(states: list[str]) -> str:
    if all(s == RState.SENT for s in states):
        return DeliveryAttempt.Outcome.SENT
    if all(s == RState.BOUNCED for s in states):
        return DeliveryAttempt.Outcome.BOUNCED
    if all(s == RState.DEFERRED for s in states):
        return DeliveryAttempt.Outcome.DEFERRED
    return DeliveryAttempt.Outcome.PARTIAL


def _record(item: QueueItem, result: JobResult, started: datetime) -> None:
    """Write one item's attempt: recipients, state, next try, and the reports it causes."""
    now = timezone.now()
    with transaction.atomic():
        if (
            not QueueItem.objects.select_for_update()
            .filter(pk=item.pk, lease_token=item.lease_token)
            .exists()
        ):
            # The lease expired and another pass took the item: its result is the one kept.
            logger.warning("queue item %s changed hands during delivery; result not recorded", item.pk)
            return
        recipients = {
            r.address: r
            for r in QueueRecipient.objects.select_for_update().filter(
                item=item, state__in=[RState.PENDING, RState.DEFERRED]
            )
        }
        expired = now - item.created_at >= timedelta(seconds=settings.A3_RELAY_MAX_AGE_SECONDS)
        bounced: list[QueueRecipient] = []
        for address, outcome in result.recipients.items():
            recipient = recipients.get(address)
            if recipient is None:
                continue
            state = outcome.state
            reply = outcome.reply
            if state == RState.DEFERRED and expired:
                state = RState.BOUNCED
                reply = f"4.4.7 Delivery time expired; last reply: {reply}"
            recipient.state = state
            recipient.reply = reply[:2000]
            recipient.reply_code = outcome.code
            recipient.remote_host = outcome.host[:253]
            recipient.save(update_fields=["state", "reply", "reply_code", "remote_host", "updated_at"])
            if state == RState.BOUNCED:
                bounced.append(recipient)
        outcome = _outcome([o.state for o in result.recipients.values()])
        RELAY_ATTEMPTS.labels(outcome=outcome).inc()
        for recipient in recipients.values():
            if recipient.state != RState.PENDING:
                RELAY_RECIPIENTS.labels(state=recipient.state).inc()
        DeliveryAttempt.objects.create(
            item=item,
            started_at=started,
            finished_at=now,
            host=result.host[:253],
            port=result.port,
            tls=result.tls,
            outcome=outcome,
            reply_code=next((o.code for o in result.recipients.values() if o.code), None),
            reply=_summary(result),
            detail={
                "recipients": {a: {"code": o.code, "reply": o.reply} for a, o in result.recipients.items()},
                "tried": result.tried[-20:],
            },
        )
        states = list(QueueRecipient.objects.filter(item=item).values_list("state", flat=True))
        item.attempts += 1
        item.last_attempt_at = now
        item.last_reply = _summary(result)
        item.lease_token = ""
        if RState.DEFERRED in states or RState.PENDING in states:
            item.state = State.DEFERRED
            item.next_attempt_at = now + retry_delay(item.attempts)
        else:
            item.state = State.BOUNCED if RState.BOUNCED in states else State.SENT
            item.finished_at = now
        warn = (
            item.state == State.DEFERRED
            and item.delay_warned_at is None
            and settings.A3_RELAY_DELAY_WARNING_SECONDS
            and now - item.created_at >= timedelta(seconds=settings.A3_RELAY_DELAY_WARNING_SECONDS)
        )
        if warn:
            item.delay_warned_at = now
        # Only what the attempt decides: an admin's hold set meanwhile must survive.
        item.save(
            update_fields=[
                "attempts",
                "last_attempt_at",
                "last_reply",
                "lease_token",
                "state",
                "next_attempt_at",
                "finished_at",
                "delay_warned_at",
                "updated_at",
            ]
        )
        if bounced:
            queue_item_report(item, bounced, action="failed")
        if warn:
            deferred = list(QueueRecipient.objects.filter(item=item, state=RState.DEFERRED))
            queue_item_report(item, deferred, action="delayed")
        if item.state == State.DEFERRED:
            from apps.relay.tasks import queue_deliver_task

            delay = max(1.0, (item.next_attempt_at - now).total_seconds())
            transaction.on_commit(
                lambda: queue_deliver_task.apply_async(kwargs={"item_id": item.pk}, countdown=delay)
            )


def _release(item: QueueItem) -> None:
    """Give back an item this pass did not get to (deadline reached)."""
    QueueItem.objects.filter(pk=item.pk, lease_token=item.lease_token).update(
        state=State.QUEUED, lease_token=""
    )


# --- Delivery reports ------------------------------------------------------------------


def queue_item_report(item: QueueItem, recipients: list[QueueRecipient], *, action: str) -> None:
    """Send a DSN about `recipients` to the item's report address. Never for a DSN or a
    null sender (RFC 3464 §2: never bounce a bounce). Runs in the caller's transaction."""
    from apps.relay.services.bounces import DsnRecipient, dsn_build, dsn_status_for

    if not item.report_to or item.kind == QueueItem.Kind.BOUNCE or not recipients:
        return
    try:
        original = blob_store().read(item.message.blob_sha256)
    except BlobNotFound:
        original = b""
    until = item.created_at + timedelta(seconds=settings.A3_RELAY_MAX_AGE_SECONDS)
    report = dsn_build(
        original=original,
        report_to=item.report_to,
        recipients=[
            DsnRecipient(
                address=r.address,
                action=action,
                status=dsn_status_for(r.reply_code, r.reply),
                remote_mta=r.remote_host,
                diagnostic=r.reply,
                original_address=r.original_address,
                last_attempt=item.last_attempt_at,
                will_retry_until=until if action == "delayed" else None,
            )
            for r in recipients
        ],
        queue_id=item.message.queue_id,
        arrival=item.created_at,
    )
    report_send(raw=report, to=item.report_to)


def report_send(*, raw: bytes, to: str) -> Message:
    """Send a report we generated (null sender) to `to`: into the local mailbox when `to`
    is ours, else through the queue. Runs in the caller's transaction."""
    from apps.mailboxes import services as mail_services

    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(), mail_from="", recipients=(), raw=raw
    )
    verdict = mail_services.recipient_check(address=to)
    if verdict.accepted:
        incoming = mail_services.IncomingMessage(
            queue_id=incoming.queue_id, mail_from="", recipients=(verdict.address,), raw=raw
        )
        return mail_services.messages_accept(incoming=[incoming])[0]
    (message,) = mail_services.messages_accept(incoming=[incoming])
    queue_items_create(
        message=message, sender="", recipients=[(to, "")], report_to="", kind=QueueItem.Kind.BOUNCE
    )
    return message


# --- The pass --------------------------------------------------------------------------


def queue_deliver(*, item_id: int) -> int:
    """Run one delivery pass for the domain of `item_id`; returns how many items it
    recorded. Safe to call for an item that is not due, held, or gone (does nothing)."""
    items = _lease(item_id)
    if not items:
        return 0
    domain = items[0].domain
    started = timezone.now()
    deadline = time.monotonic() + settings.A3_RELAY_COMMAND_TIMEOUT_SECONDS * 2
    try:
        jobs, failed = _prepare(items)
        route = route_for_domain(domain)
        results = asyncio.run(
            deliver_jobs(domain, route, [j for j in jobs if j.recipients], deadline=deadline)
        )
    except SoftTimeLimitExceeded:
        for item in items:
            _release(item)
        raise
    except Exception:
        # Counted as an attempt, with backoff: a fault that repeats must not retry the
        # domain's whole queue every minute, nor keep mail from ever expiring.
        logger.exception("delivery pass for %s failed", domain)
        for item in items:
            _defer_after_error(item)
        return 0
    results.update(failed)
    recorded = 0
    for item in items:
        result = results.get(item.pk)
        if result is None or not result.recipients:
            if not _pending_recipients([item.pk]):
                _finish_empty(item)
            else:
                _release(item)
            continue
        try:
            _record(item, result, started)
        except Exception:  # one item's bookkeeping must not strand the rest of the pass
            logger.exception("recording the delivery of queue item %s failed", item.pk)
            _defer_after_error(item)
            continue
        recorded += 1
    _wake_next(domain)
    return recorded


def _defer_after_error(item: QueueItem) -> None:
    attempts = item.attempts + 1
    QueueItem.objects.filter(pk=item.pk, lease_token=item.lease_token).update(
        state=State.DEFERRED,
        attempts=attempts,
        last_attempt_at=timezone.now(),
        next_attempt_at=timezone.now() + retry_delay(attempts),
        last_reply="4.3.0 Internal error during delivery; will retry",
        lease_token="",
    )


def _finish_empty(item: QueueItem) -> None:
    """An item without open recipients (all handled by an earlier, interrupted pass)."""
    states = list(QueueRecipient.objects.filter(item=item).values_list("state", flat=True))
    QueueItem.objects.filter(pk=item.pk).update(
        state=State.BOUNCED if RState.BOUNCED in states else State.SENT,
        finished_at=timezone.now(),
        lease_token="",
    )


def _wake_next(domain: str) -> None:
    from apps.relay.tasks import queue_deliver_task

    next_id = (
        QueueItem.objects.filter(_due(), domain=domain)
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)
        .first()
    )
    if next_id is not None:
        queue_deliver_task.delay(item_id=next_id)


# --- Sweep and watch -------------------------------------------------------------------


def queue_requeue_stalled(*, limit: int = 1000) -> int:
    """Wake every due item whose task may be lost, one per domain (a pass takes the rest
    of its domain), and give back leases of workers that died mid-pass."""
    from apps.relay.tasks import queue_deliver_task

    now = timezone.now()
    lease_expiry = settings.A3_RELAY_COMMAND_TIMEOUT_SECONDS * 4 + settings.A3_RELAY_SWEEP_AFTER_SECONDS
    QueueItem.objects.filter(state=State.SENDING, leased_at__lt=now - timedelta(seconds=lease_expiry)).update(
        state=State.QUEUED, lease_token=""
    )
    waited = now - timedelta(seconds=settings.A3_RELAY_SWEEP_AFTER_SECONDS)
    first_per_domain = (
        QueueItem.objects.filter(_due(), next_attempt_at__lte=waited)
        .values("domain")
        .annotate(count=Count("id"))
        .order_by("domain")[:limit]
    )
    woken = 0
    for row in first_per_domain:
        item_id = (
            QueueItem.objects.filter(_due(), domain=row["domain"])
            .order_by("next_attempt_at", "id")
            .values_list("id", flat=True)
            .first()
        )
        if item_id is not None:
            queue_deliver_task.delay(item_id=item_id)
            woken += 1
    if woken:
        logger.info("woke %d stalled destination(s) in the outbound queue", woken)
    return woken


def queue_watch() -> list[str]:
    """Alert when the queue grows past its threshold, or a destination has deferred for
    longer than allowed. One alert per condition per hour, not one per run."""
    from apps.alerts.models import Alert
    from apps.alerts.services import emit

    now = timezone.now()
    hour_ago = now - timedelta(hours=1)
    raised: list[str] = []
    waiting = QueueItem.objects.filter(state__in=[State.QUEUED, State.DEFERRED, State.SENDING]).count()
    if (
        waiting >= settings.A3_RELAY_QUEUE_ALERT_THRESHOLD
        and not Alert.objects.filter(kind="relay.queue_size", created_at__gte=hour_ago).exists()
    ):
        emit(
            "relay.queue_size",
            "warning",
            f"{waiting} messages are waiting in the outbound queue "
            f"(threshold {settings.A3_RELAY_QUEUE_ALERT_THRESHOLD}).",
            waiting=waiting,
        )
        raised.append("relay.queue_size")
    stuck_since = now - timedelta(seconds=settings.A3_RELAY_DEFERRED_ALERT_SECONDS)
    stuck = (
        QueueItem.objects.filter(state=State.DEFERRED, created_at__lt=stuck_since)
        .values("domain")
        .annotate(count=Count("id"))
        .order_by("-count")[:20]
    )
    for row in stuck:
        recent = Alert.objects.filter(
            kind="relay.destination_deferred", created_at__gte=hour_ago, data__domain=row["domain"]
        ).exists()
        if recent:
            continue
        emit(
            "relay.destination_deferred",
            "warning",
            f"Mail to {row['domain']} has been deferred for over "
            f"{settings.A3_RELAY_DEFERRED_ALERT_SECONDS // 60} minutes ({row['count']} item(s)).",
            domain=row["domain"],
            items=row["count"],
        )
        raised.append(f"relay.destination_deferred:{row['domain']}")
    return raised
