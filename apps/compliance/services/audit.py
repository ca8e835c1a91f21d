"""The audit log: a hash chain of administrative and security events (docs/compliance.md).

Every row's `content_hash` is the SHA-256 of a canonical JSON form of its content in which
each personal value (actor_display, target_display, ip, user_agent) is replaced by its keyed
hash, `subject_key(value)`. `hash` = SHA-256(prev_hash + content_hash). Pseudonymising a
row on erasure swaps the readable value for "pseudonym:<that same key>", so the canonical
form, and the chain, do not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.services import ClientInfo
from apps.compliance.models import AuditEvent, AuditStreamState
from apps.core.addresses import normalize_domain
from apps.core.exceptions import ApplicationError, TemporaryFailure
from apps.core.logging import request_id_var

__all__ = [
    "GENESIS_HASH",
    "PSEUDONYM_PREFIX",
    "VerifyResult",
    "audit_diff",
    "audit_event_as_dict",
    "audit_event_list",
    "audit_prune",
    "audit_pseudonymise",
    "audit_record",
    "audit_stream_send",
    "audit_syslog_line",
    "audit_verify",
    "audit_webhook_signature",
    "subject_key",
]

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
PSEUDONYM_PREFIX = "pseudonym:"
REDACTED = "[redacted]"
PERSONAL_FIELDS = ("actor_display", "target_display", "ip", "user_agent")
# Diff keys that name people rather than settings: stored as their keyed hash from the start,
# because `changes` is covered by the content hash as-is and could not be erased later.
PERSONAL_CHANGE_KEYS = frozenset({"email", "full_name"})
_SECRET_MARKERS = ("password", "secret", "token", "key", "otp")
# Any constant will do: it names the one advisory lock that serialises appends on PostgreSQL.
_CHAIN_LOCK_ID = 0x0A3A0D17
_VERIFY_BATCH = 1000

# --- Keyed hashes -------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _pseudonym_key(secret: str, explicit: str) -> bytes:
    if explicit:
        return explicit.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"a3mailer-audit", info=b"pseudonym").derive(
        secret.encode()
    )


def subject_key(identity: str) -> str:
    """The keyed hash (HMAC-SHA256) of an identity, case-folded and trimmed.

    Truncated to 128 bits (32 hex digits) so that "pseudonym:<key>" fits the narrowest
    personal column (ip, 64 characters); 128 bits of a keyed hash is far beyond guessing.
    The key is A3_AUDIT_PSEUDONYM_KEY, or one derived from the secret key: rotating either
    leaves old rows verifiable (their keys are stored) but unfindable by identity.
    """
    key = _pseudonym_key(settings.SECRET_KEY, getattr(settings, "A3_AUDIT_PSEUDONYM_KEY", ""))
    return hmac.new(key, _identity_canonical(identity).encode(), hashlib.sha256).hexdigest()[:32]


def _identity_canonical(identity: str) -> str:
    """One spelling per identity: an address's domain in its IDNA A-label form, so the
    display form (bücher.test) and the stored form (xn--bcher-kva.test) are one subject."""
    text = identity.strip().lower()
    local, sep, domain = text.rpartition("@")
    if sep and domain and not domain.isascii():
        with contextlib.suppress(ApplicationError):
            domain = normalize_domain(domain)
        text = f"{local}@{domain}"
    return text


def _canonical_personal(value: str) -> str:
    """What a personal value contributes to the content hash: its key. A pseudonymised value
    already is that key, which is why erasure leaves the hash intact."""
    if not value:
        return ""
    if value.startswith(PSEUDONYM_PREFIX):
        return value[len(PSEUDONYM_PREFIX) :]
    return subject_key(value)


# --- Canonical form and hashes ------------------------------------------------------------


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _canonical(row: Mapping[str, object]) -> str:
    """Sorted-key, whitespace-free JSON of the hashed content.

    The actor foreign key is left out: deleting a user sets it to NULL, and the actor is
    bound by the keyed hash of actor_display instead.
    """
    content = {
        "created_at": _timestamp(row["created_at"]),  # type: ignore[arg-type]
        "actor_role": row["actor_role"],
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "changes": row["changes"],
        "request_id": row["request_id"],
        "subject_keys": row["subject_keys"],
    }
    for name in PERSONAL_FIELDS:
        content[name] = _canonical_personal(str(row[name] or ""))
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _chain_hash(prev_hash: str, content_hash: str) -> str:
    return _sha256(prev_hash + content_hash)


# --- Recording ----------------------------------------------------------------------------


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    if lowered.endswith(("_id", "_ids", "_count")):
        return False  # a token's or key's id says which one, not what it is
    return any(marker in lowered for marker in _SECRET_MARKERS)


def _scrub(value: object) -> object:
    """JSON-safe copy of `value` with secrets redacted at any depth."""
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            key = str(key)
            if _is_secret(key):
                out[key] = REDACTED
            elif key in PERSONAL_CHANGE_KEYS:
                out[key] = _pseudonymise_value(item)
            else:
                out[key] = _scrub(item)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return _timestamp(value)
    return str(value)


def _pseudonymise_value(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_pseudonymise_value(item) for item in value]
    if value in (None, ""):
        return value
    return PSEUDONYM_PREFIX + subject_key(str(value))


def audit_diff(before: Mapping[str, object], after: Mapping[str, object]) -> dict[str, list[object]]:
    """{"field": [before, after]} for every field whose value differs (missing = None)."""
    changed: dict[str, list[object]] = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            changed[key] = [old, new]
    return changed


def _target_parts(target: object) -> tuple[str, str, str]:
    if target is None:
        return "", "", ""
    if isinstance(target, tuple):
        kind, pk, display = target
        return str(kind), "" if pk is None else str(pk), str(display or "")
    # A model instance: its model name, primary key and str().
    meta = target._meta  # type: ignore[attr-defined]
    return meta.model_name, str(target.pk), str(target)  # type: ignore[attr-defined]


def _lock_chain() -> None:
    """Serialise appends so the chain stays linear. SQLite already allows one writer at a
    time; on PostgreSQL two transactions could otherwise read the same last row and fork."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_ID])


def _last_hash() -> str:
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    return last or GENESIS_HASH


def audit_record(
    *,
    action: str,
    actor: User | None = None,
    target: object = None,
    changes: Mapping[str, object] | None = None,
    request: HttpRequest | None = None,
    client: ClientInfo | None = None,
    subjects: Iterable[str] = (),
    **extra: object,
) -> AuditEvent:
    """Append one event to the chain and return it.

    `target` is a model instance or a (type, id, display) tuple. Secrets in `changes` and
    `extra` are redacted; `extra` lands in `changes["context"]` (a `domain_id` there is what
    scopes the event to that domain's admins). The actor's and target's identities are
    added to `subjects` so erasure can find the event. Joins the caller's transaction.
    """
    if client is None:
        client = ClientInfo.from_request(request) if request is not None else ClientInfo()
    request_id = getattr(request, "request_id", "") or request_id_var.get()
    target_type, target_id, target_display = _target_parts(target)
    actor_display = actor.email if actor is not None else ""
    body: dict[str, object] = dict(_scrub(dict(changes or {})))  # type: ignore[arg-type]
    if extra:
        body["context"] = _scrub(extra)
    identities = {value for value in (actor_display, target_display, *subjects) if value}
    row: dict[str, object] = {
        "created_at": timezone.now(),
        "actor_display": actor_display[:254],
        "actor_role": (actor.role if actor is not None else "")[:20],
        "action": action[:64],
        "target_type": target_type[:64],
        "target_id": target_id[:64],
        "target_display": target_display[:300],
        "changes": body,
        "ip": (client.ip or "")[:64],
        "user_agent": (client.user_agent or "")[:300],
        "request_id": "" if request_id == "-" else request_id[:64],
        "subject_keys": sorted({subject_key(value) for value in identities}),
    }
    # Round-trip through JSON so the hash covers exactly what the database will return.
    row["changes"] = json.loads(json.dumps(row["changes"], default=str))
    content_hash = _sha256(_canonical(row))
    with transaction.atomic():
        _lock_chain()
        prev_hash = _last_hash()
        return AuditEvent.objects.create(
            actor=actor,
            content_hash=content_hash,
            prev_hash=prev_hash,
            hash=_chain_hash(prev_hash, content_hash),
            **row,
        )


# --- Verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str = ""


_HASHED_FIELDS = (
    "id",
    "created_at",
    "actor_role",
    "action",
    "target_type",
    "target_id",
    "changes",
    "request_id",
    "subject_keys",
    *PERSONAL_FIELDS,
    "content_hash",
    "prev_hash",
    "hash",
)


def _rows_in_order(batch: int) -> Iterator[dict[str, object]]:
    last_id = 0
    while True:
        rows = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id").values(*_HASHED_FIELDS)[:batch])
        if not rows:
            return
        yield from rows
        last_id = rows[-1]["id"]  # type: ignore[assignment]


def audit_verify(*, batch: int = _VERIFY_BATCH) -> VerifyResult:
    """Walk the whole chain in id order, a batch at a time, and report the first row whose
    content, link or hash does not hold. Read-only.

    The first row must link to the genesis hash, or, after retention pruned the head, to the
    `anchor_hash` of an `audit.prune` event further down the chain: removing the head without
    such a record is reported against the first remaining row.
    """
    checked = 0
    prev_hash: str | None = None
    head_id: int | None = None
    head_anchor: str | None = None
    anchors: set[str] = set()
    for row in _rows_in_order(batch):
        checked += 1
        row_id = int(row["id"])  # type: ignore[call-overload]
        if prev_hash is None:
            if row["prev_hash"] != GENESIS_HASH:
                head_id, head_anchor = row_id, str(row["prev_hash"])
        elif row["prev_hash"] != prev_hash:
            return VerifyResult(
                False, checked, row_id, "link broken: a row before this one was removed or altered"
            )
        if _sha256(_canonical(row)) != row["content_hash"]:
            return VerifyResult(False, checked, row_id, "content does not match its hash")
        if _chain_hash(str(row["prev_hash"]), str(row["content_hash"])) != row["hash"]:
            return VerifyResult(False, checked, row_id, "chain hash does not match")
        if row["action"] == "audit.prune":
            anchor = (row["changes"] or {}).get("context", {}).get("anchor_hash")  # type: ignore[union-attr]
            if anchor:
                anchors.add(str(anchor))
        prev_hash = str(row["hash"])
    if head_anchor is not None and head_anchor not in anchors:
        return VerifyResult(False, checked, head_id, "chain head removed without a retention record")
    return VerifyResult(True, checked)


# --- Erasure and retention ----------------------------------------------------------------


@transaction.atomic
def audit_pseudonymise(identity: str) -> int:
    """Replace the readable form of `identity` in every event about it by its pseudonym.

    Where the identity is the actor, the client's ip and user agent go too: they describe
    that person's device. Returns the number of events changed; running twice changes none.
    The chain still verifies, because the canonical form always used the keyed hashes.
    """
    key = subject_key(identity)
    pseudonym = PSEUDONYM_PREFIX + key
    changed = 0
    # subject_keys is a JSON list; filter it in Python so the same code runs on SQLite.
    candidates = AuditEvent.objects.filter(subject_keys__icontains=key).order_by("id")
    for event in candidates.iterator(chunk_size=500):
        if key not in (event.subject_keys or []):
            continue
        fields: list[str] = []
        if event.actor_display and subject_key(event.actor_display) == key:
            event.actor_display = pseudonym
            fields.append("actor_display")
            for name in ("ip", "user_agent"):
                value = getattr(event, name)
                if value and not value.startswith(PSEUDONYM_PREFIX):
                    setattr(event, name, PSEUDONYM_PREFIX + subject_key(value))
                    fields.append(name)
        if event.target_display and subject_key(event.target_display) == key:
            event.target_display = pseudonym
            fields.append("target_display")
        if fields:
            event.pseudonymised_at = timezone.now()
            event.save(update_fields=[*fields, "pseudonymised_at"])
            changed += 1
    return changed


def audit_prune(*, older_than_days: int | None = None) -> int:
    """Delete events older than the audit retention (A3_AUDIT_RETENTION_DAYS) and keep the
    chain verifiable: first an `audit.prune` event is appended that records the hash of the
    last row to go as `anchor_hash`, then the rows go. Returns the number deleted."""
    days = settings.A3_AUDIT_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    with transaction.atomic():
        _lock_chain()
        last = AuditEvent.objects.filter(created_at__lt=cutoff).order_by("-id").values("id", "hash").first()
        if last is None:
            return 0
        deleted, _ = AuditEvent.objects.filter(id__lte=last["id"]).delete()
        # Appended after the delete in the same transaction: the lock is already held, and the
        # new row still links to the newest remaining row (never to a deleted one, since the
        # newest row is younger than the cutoff or is the last deleted one, whose hash we hold).
        newest = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        _record_prune(
            anchor_hash=last["hash"], through_id=last["id"], deleted=deleted, prev=newest or last["hash"]
        )
    logger.info("audit log pruned", extra={"deleted": deleted, "through_id": last["id"]})
    return deleted


def _record_prune(*, anchor_hash: str, through_id: int, deleted: int, prev: str) -> AuditEvent:
    row: dict[str, object] = {
        "created_at": timezone.now(),
        "actor_display": "",
        "actor_role": "",
        "action": "audit.prune",
        "target_type": "",
        "target_id": "",
        "target_display": "",
        "changes": {"context": {"anchor_hash": anchor_hash, "through_id": through_id, "deleted": deleted}},
        "ip": "",
        "user_agent": "",
        "request_id": "",
        "subject_keys": [],
    }
    content_hash = _sha256(_canonical(row))
    return AuditEvent.objects.create(
        content_hash=content_hash, prev_hash=prev, hash=_chain_hash(prev, content_hash), **row
    )


# --- Reading ------------------------------------------------------------------------------


def audit_event_list(*, actor: User) -> QuerySet[AuditEvent]:
    """Events the actor may read: all for superadmins; for domain admins, the events whose
    context names one of their domains (`domain_id`); nothing for anyone else."""
    events = AuditEvent.objects.order_by("-id")
    if actor.is_superadmin:
        return events
    if not actor.is_domain_admin:
        return events.none()
    domain_ids = list(actor.administered_domains.values_list("id", flat=True))
    if not domain_ids:
        return events.none()
    return events.filter(Q(changes__context__domain_id__in=domain_ids))


def audit_event_as_dict(event: AuditEvent) -> dict[str, object]:
    """The exported and streamed form of one event."""
    return {
        "id": event.pk,
        "created_at": _timestamp(event.created_at),
        "actor_id": event.actor_id,
        "actor_display": event.actor_display,
        "actor_role": event.actor_role,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_display": event.target_display,
        "changes": event.changes,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "pseudonymised": event.pseudonymised_at is not None,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


# --- SIEM streaming -----------------------------------------------------------------------

# RFC 5424 facility 13 ("log audit"), severity 6 (informational).
_SYSLOG_PRI = 13 * 8 + 6
# The structured-data ID uses the enterprise number reserved for documentation (RFC 5612).
_SYSLOG_SD_ID = "a3audit@32473"


def _sd_escape(value: str) -> str:
    # RFC 5424 §6.3.3: '"', '\' and ']' are escaped inside PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(value: str, limit: int) -> str:
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)
    return (cleaned or "-")[:limit]


def audit_syslog_line(event: AuditEvent) -> bytes:
    """One RFC 5424 message: header, structured data with id and hash, the event as JSON."""
    header = " ".join(
        [
            f"<{_SYSLOG_PRI}>1",
            _timestamp(event.created_at),
            _printable(settings.A3_HOSTNAME, 255),
            "a3mailer",
            "-",
            _printable(event.action, 32),
        ]
    )
    sd = f'[{_SYSLOG_SD_ID} id="{event.pk}" hash="{_sd_escape(event.hash)}"]'
    body = json.dumps(audit_event_as_dict(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{header} {sd} ".encode() + b"\xef\xbb\xbf" + body.encode()


def _syslog_send(events: list[AuditEvent], url: str) -> None:
    scheme, _, address = url.partition("://")
    host, _, port = address.rpartition(":")
    target = (host.strip("[]"), int(port or 514))
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    if scheme == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for event in events:
                sock.sendto(audit_syslog_line(event), target)
        return
    with socket.create_connection(target, timeout=10) as sock:
        for event in events:
            line = audit_syslog_line(event)
            # RFC 6587 octet counting: the frame survives newlines inside the JSON.
            sock.sendall(str(len(line)).encode() + b" " + line)


def audit_webhook_signature(body: bytes, secret: str) -> str:
    """The X-A3-Signature value a receiver recomputes: "sha256=" + HMAC-SHA256(body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _webhook_send(events: list[AuditEvent], url: str) -> None:
    body = json.dumps({"events": [audit_event_as_dict(event) for event in events]}, default=str).encode()
    request = urllib.request.Request(  # noqa: S310 - the operator configures an http(s) URL
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-A3-Signature": audit_webhook_signature(body, settings.A3_AUDIT_WEBHOOK_SECRET),
        },
    )
    with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
        if response.status >= 300:
            raise TemporaryFailure(f"audit webhook answered {response.status}")


def _destinations() -> dict[str, Callable[[list[AuditEvent]], None]]:
    found: dict[str, Callable[[list[AuditEvent]], None]] = {}
    if settings.A3_AUDIT_SYSLOG:
        found["syslog"] = lambda events: _syslog_send(events, settings.A3_AUDIT_SYSLOG)
    if settings.A3_AUDIT_WEBHOOK_URL:
        found["webhook"] = lambda events: _webhook_send(events, settings.A3_AUDIT_WEBHOOK_URL)
    return found


def audit_stream_send(*, max_batches: int = 50) -> dict[str, int]:
    """Send events past each destination's `last_event_id`, a batch at a time, and advance it
    after each batch is accepted. At-least-once: a crash between sending and saving resends
    that batch. Returns events sent per destination; raises TemporaryFailure when one fails
    (the others still ran)."""
    sent: dict[str, int] = {}
    failures: list[str] = []
    for destination, send in _destinations().items():
        sent[destination] = 0
        for _ in range(max_batches):
            with transaction.atomic():
                # The row lock keeps two runs from sending the same batch at once.
                state, _ = AuditStreamState.objects.get_or_create(destination=destination)
                state = AuditStreamState.objects.select_for_update().get(pk=state.pk)
                events = list(
                    AuditEvent.objects.filter(id__gt=state.last_event_id).order_by("id")[
                        : settings.A3_AUDIT_STREAM_BATCH
                    ]
                )
                if not events:
                    break
                try:
                    send(events)
                except (OSError, TemporaryFailure) as exc:
                    logger.warning("audit stream to %s failed: %s", destination, exc)
                    failures.append(destination)
                    break
                state.last_event_id = events[-1].pk
                state.save(update_fields=["last_event_id", "updated_at"])
                sent[destination] += len(events)
    if failures:
        raise TemporaryFailure(f"audit stream failed for {', '.join(failures)}")
    return sent
