"""GDPR subject rights: access/portability exports (a ZIP of everything we hold about a
person) and erasure (everything removed, with a certificate saying what and when).

Both run as `ComplianceJob` rows driven by Celery tasks. A job is claimed with a
conditional UPDATE (a lease), renews its lease as it makes progress, and a beat sweep puts
jobs whose worker died back in the queue. Exports restart from scratch (the partial file
is thrown away); erasures resume, since every step is idempotent and records what it did
in `job.report` before the next one starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_otp import devices_for_user

from apps.accounts.models import ApiToken, AuthEvent, User, UserSession
from apps.compliance.models import AuditEvent, ComplianceJob, LegalHold
from apps.compliance.services.audit import audit_pseudonymise, audit_record, subject_key
from apps.compliance.services.holds import holds_covering_subject
from apps.core.addresses import parse_address
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import Alias, AppPassword, Folder, Mailbox, MailItem, Message

logger = logging.getLogger(__name__)

__all__ = [
    "ErasureCertificate",
    "compliance_jobs_requeue_stalled",
    "erasure_backups_statement",
    "erasure_get",
    "erasure_request",
    "erasure_run",
    "export_cancel",
    "export_get",
    "export_list",
    "export_open",
    "export_request",
    "export_run",
    "exports_expire",
    "job_list",
]

# A worker renews its lease at every progress update; one that has not for this long is
# presumed dead and the sweep hands its job to another.
LEASE_SECONDS = 600
PROGRESS_EVERY = 20  # messages between progress updates (and cancel checks)
CHUNK = 64 * 1024  # copy size: memory stays bounded whatever the message size
_ACTIVE = (ComplianceJob.State.QUEUED, ComplianceJob.State.RUNNING)
# mboxrd (RFC 4155 family): any line matching ^>*From gets one more ">", so the
# quoting can be undone exactly.
_MBOXRD_FROM = re.compile(rb"(?m)^>*From ")
_UNSAFE_PATH = re.compile(r"[^\w .@+=,-]")


class JobCancelled(Exception):
    """Internal: the job was cancelled while running."""


class LeaseLost(Exception):
    """Internal: another worker took the job over (our lease expired)."""


def _holds_covering(subject: Subject) -> list[LegalHold]:
    found: dict[int, LegalHold] = {}
    anchors: list[User | Mailbox] = [*subject.mailboxes, *([subject.user] if subject.user else [])]
    for anchor in anchors:
        for hold in holds_covering_subject(anchor):
            found.setdefault(hold.pk, hold)
    return list(found.values())


# --- Subjects --------------------------------------------------------------------------


@dataclass
class Subject:
    """A person as the data protection request names them: a user account, mailboxes, or
    both (the account whose login is the address, and every mailbox it owns)."""

    address: str
    user: User | None
    mailboxes: list[Mailbox] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        found = [self.address, *(m.address for m in self.mailboxes)]
        if self.user is not None:
            found.append(self.user.email)
        return sorted(set(found))


def _normalize(subject: str) -> str:
    try:
        return parse_address(subject, field="subject").value
    except ApplicationError:
        raise NotFoundError(f"No data subject {subject}.") from None


def _subject_resolve(*, actor: User, subject: str) -> Subject:
    """The subject as the actor may see it. Scope follows the mailbox funnel: superadmins
    anyone; domain admins the mailboxes of their domains and those mailboxes' owners
    (only the mailboxes in their domains); mailbox users themselves and their own
    mailboxes. Unknown and out-of-scope subjects get the same NotFoundError."""
    address = _normalize(subject)
    visible = Mailbox.objects.visible_to(actor).select_related("domain")
    if not actor.is_admin:
        # A disabled mailbox or domain is how an admin cuts a user off: not through here.
        visible = visible.filter(is_active=True, domain__is_active=True)
    user = User.objects.visible_to(actor).filter(email=address).first()
    mailboxes = visible.filter(Q(address=address) | Q(owner=user) if user else Q(address=address))
    found = list(mailboxes.order_by("address"))
    if user is None and not found:
        raise NotFoundError(f"No data subject {subject}.")
    if user is not None and not actor.is_superadmin and user.pk != actor.pk:
        # A domain admin exports the mailboxes of their domains only: the owner's account
        # (sessions, tokens, sign-ins, audit trail) spans other domains.
        if not found:
            raise NotFoundError(f"No data subject {subject}.")
        user = None
    return Subject(address=address, user=user, mailboxes=found)


def _subject_lock(subject: Subject) -> None:
    # Two requests for one subject serialise on its anchor row, so the second sees the
    # first's job (SQLite's IMMEDIATE transactions serialise writers anyway).
    if subject.user is not None:
        User.objects.select_for_update().filter(pk=subject.user.pk).exists()
    else:
        Mailbox.objects.select_for_update().filter(pk=subject.mailboxes[0].pk).exists()


def _job_create(*, actor: User, subject: Subject, kind: str) -> tuple[ComplianceJob, bool]:
    _subject_lock(subject)
    # Per requester: another requester's job may have a narrower scope, and they could not
    # see or download it.
    existing = ComplianceJob.objects.filter(
        kind=kind, subject=subject.address, state__in=_ACTIVE, requested_by=actor
    ).first()
    if existing is not None:
        return existing, False
    return ComplianceJob.objects.create(kind=kind, subject=subject.address, requested_by=actor), True


def job_list(*, actor: User, kind: str) -> QuerySet[ComplianceJob]:
    """Jobs the actor may see: superadmins all, everyone else the ones they asked for."""
    jobs = ComplianceJob.objects.filter(kind=kind).select_related("requested_by")
    if not (actor.is_authenticated and actor.is_active):
        return jobs.none()
    return jobs if actor.is_superadmin else jobs.filter(requested_by=actor)


def _job_get(*, actor: User, kind: str, job_id: int | str) -> ComplianceJob:
    try:
        return job_list(actor=actor, kind=kind).get(pk=int(job_id))
    except (ComplianceJob.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such job.") from None


def _lease(job_id: int, *, states: tuple[str, ...] = (ComplianceJob.State.QUEUED,)) -> ComplianceJob | None:
    """Claim a job for this worker; None when it is gone, finished or taken."""
    token = secrets.token_hex(8)
    now = timezone.now()
    claimed = ComplianceJob.objects.filter(pk=job_id, state__in=states, cancel_requested=False).update(
        state=ComplianceJob.State.RUNNING, lease_token=token, leased_at=now, started_at=now, error=""
    )
    if claimed != 1:
        return None
    return ComplianceJob.objects.get(pk=job_id)


def _checkpoint(job: ComplianceJob, **fields: object) -> None:
    """Save progress and renew the lease; stop if cancelled or taken over."""
    updated = ComplianceJob.objects.filter(
        pk=job.pk, lease_token=job.lease_token, state=ComplianceJob.State.RUNNING
    ).update(leased_at=timezone.now(), **fields)
    if updated != 1:
        raise LeaseLost(job.pk)
    if ComplianceJob.objects.filter(pk=job.pk, cancel_requested=True).exists():
        raise JobCancelled(job.pk)


def _finish(job: ComplianceJob, state: str, **fields: object) -> bool:
    return (
        ComplianceJob.objects.filter(pk=job.pk, lease_token=job.lease_token).update(
            state=state, finished_at=timezone.now(), lease_token="", **fields
        )
        == 1
    )


def compliance_jobs_requeue_stalled() -> int:
    """Put back jobs whose worker stopped renewing its lease, and wake queued jobs whose
    task was lost; returns how many were enqueued. Safe to run any time: running a job
    twice is harmless, the second claim fails."""
    from apps.compliance.tasks import erasure_run_task, export_run_task

    now = timezone.now()
    stale = now - timedelta(seconds=LEASE_SECONDS)
    ComplianceJob.objects.filter(state=ComplianceJob.State.RUNNING, leased_at__lt=stale).update(
        state=ComplianceJob.State.QUEUED, lease_token=""
    )
    waiting = ComplianceJob.objects.filter(
        state=ComplianceJob.State.QUEUED, created_at__lt=now - timedelta(minutes=2)
    ).values_list("pk", "kind")
    count = 0
    for job_id, kind in waiting:
        task = export_run_task if kind == ComplianceJob.Kind.EXPORT else erasure_run_task
        task.delay(job_id=job_id)
        count += 1
    return count


# --- Exports ---------------------------------------------------------------------------


def _exports_dir() -> Path:
    path = Path(settings.A3_DATA_DIR) / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


@transaction.atomic
def export_request(*, actor: User, subject: str) -> ComplianceJob:
    """Queue an export of everything held about `subject` (after commit). An export of
    the same subject that is already queued or running is returned instead of a second
    one. Raises NotFoundError when the subject is unknown or outside the actor's scope."""
    resolved = _subject_resolve(actor=actor, subject=subject)
    job, created = _job_create(actor=actor, subject=resolved, kind=ComplianceJob.Kind.EXPORT)
    if created:
        from apps.compliance.tasks import export_run_task

        audit_record(
            action="gdpr.export_requested",
            actor=actor,
            target=("gdpr_job", str(job.pk), resolved.address),
            subjects=resolved.addresses,
        )
        export_run_task.delay_on_commit(job_id=job.pk)
    return job


def export_list(*, actor: User) -> QuerySet[ComplianceJob]:
    return job_list(actor=actor, kind=ComplianceJob.Kind.EXPORT)


def export_get(*, actor: User, job_id: int | str) -> ComplianceJob:
    return _job_get(actor=actor, kind=ComplianceJob.Kind.EXPORT, job_id=job_id)


@transaction.atomic
def export_cancel(*, actor: User, job: ComplianceJob) -> ComplianceJob:
    """Cancel an export: a queued one at once, a running one at its next progress
    update (its partial file is deleted). Finished jobs raise ConflictError."""
    job = ComplianceJob.objects.select_for_update().get(pk=export_get(actor=actor, job_id=job.pk).pk)
    if job.state == ComplianceJob.State.QUEUED:
        job.state = ComplianceJob.State.CANCELLED
        job.finished_at = timezone.now()
        job.cancel_requested = True
        job.save(update_fields=["state", "finished_at", "cancel_requested"])
    elif job.state == ComplianceJob.State.RUNNING:
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested"])
    else:
        raise ConflictError(f"This export is already {job.get_state_display().lower()}.", code="job_finished")
    audit_record(
        action="gdpr.export_cancelled",
        actor=actor,
        target=("gdpr_job", str(job.pk), job.subject),
        subjects=[job.subject],
    )
    return job


def export_open(*, actor: User, job: ComplianceJob) -> BinaryIO:
    """The finished archive as an open file (the caller closes it), audited. Raises
    NotFoundError outside the actor's scope, ConflictError (code export_not_ready /
    export_expired) when there is nothing to download."""
    job = export_get(actor=actor, job_id=job.pk)
    if job.state != ComplianceJob.State.DONE or not job.file_path:
        code = "export_expired" if job.state == ComplianceJob.State.DONE else "export_not_ready"
        raise ConflictError("This export has no file to download.", code=code)
    if job.expires_at is None or job.expires_at <= timezone.now():
        raise ConflictError("This export's download link has expired.", code="export_expired")
    try:
        handle = (Path(settings.A3_DATA_DIR) / job.file_path).open("rb")
    except FileNotFoundError:
        raise ConflictError("This export's download link has expired.", code="export_expired") from None
    audit_record(
        action="gdpr.export_downloaded",
        actor=actor,
        target=("gdpr_job", str(job.pk), job.subject),
        subjects=[job.subject],
    )
    return handle


class _HashingWriter:
    """Passes bytes to a ZIP entry while hashing and counting them (for the manifest)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.raw.write(data)
        self.sha256.update(data)
        self.size += len(data)


@dataclass
class _Archive:
    zf: zipfile.ZipFile
    manifest: list[dict[str, object]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    @contextmanager
    def entry(self, name: str) -> Iterator[_HashingWriter]:
        if name in self.names:  # two folders sanitised to one name: keep both
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}-{len(self.names)}{dot}{ext}"
        self.names.add(name)
        with self.zf.open(name, "w", force_zip64=True) as raw:
            writer = _HashingWriter(raw)
            yield writer
        self.manifest.append({"path": name, "size": writer.size, "sha256": writer.sha256.hexdigest()})

    def write_json(self, name: str, payload: object) -> None:
        with self.entry(name) as out:
            out.write(json.dumps(payload, indent=2, default=str, ensure_ascii=False).encode())


def _safe_path(name: str) -> str:
    """A folder name as ZIP path components: IMAP hierarchy kept, nothing can climb out."""
    parts = [_UNSAFE_PATH.sub("_", part).strip() for part in name.split("/")]
    return "/".join(p for p in parts if p and p not in {".", ".."}) or "_"


def _copy_blob(sha256: str, out: _HashingWriter) -> None:
    with blob_store().open(sha256) as handle:
        while chunk := handle.read(CHUNK):
            out.write(chunk)


def _mbox_append(sha256: str, *, envelope_from: str, when: datetime, out: _HashingWriter) -> None:
    """One message in mboxrd form: a "From " line, the message with LF line ends and
    ^>*From lines quoted, and a blank line. Memory stays bounded by the block size."""
    sender = re.sub(r"\s", "", envelope_from) or "MAILER-DAEMON"
    out.write(f"From {sender} {time.asctime(when.astimezone(UTC).timetuple())}\n".encode())
    at_line_start = True
    carry = b""
    with blob_store().open(sha256) as handle:
        # Whole blocks, cut after their last line end, are rewritten at once: per-line
        # work costs far more than the bytes. At most one block plus one line is held.
        while True:
            block = handle.read(CHUNK)
            data = carry + block
            if not data:
                break
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if cut == 0:
                if len(data) < CHUNK:
                    carry = data
                    continue
                cut = len(data)  # a line longer than a block goes through in pieces
            piece, carry = data[:cut], data[cut:]
            piece = piece.replace(b"\r\n", b"\n")
            # The rest of a line begun in the previous piece is not a line start.
            start = 0 if at_line_start else (piece.find(b"\n") + 1 or len(piece))
            piece = piece[:start] + _MBOXRD_FROM.sub(rb">\g<0>", piece[start:])
            out.write(piece)
            at_line_start = piece.endswith(b"\n")
    out.write(b"\n" if at_line_start else b"\n\n")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _account_payload(subject: Subject) -> dict[str, object]:
    """Everything about the person's account and mailboxes, never a secret: no password
    hashes, no TOTP keys or backup codes, no token or app-password hashes."""
    user = subject.user
    mailboxes = []
    for mailbox in subject.mailboxes:
        aliases = Alias.objects.filter(destinations__address=mailbox.address).distinct()
        mailboxes.append(
            {
                "address": mailbox.address,
                "display_name": mailbox.display_name,
                "created_at": _iso(mailbox.created_at),
                "is_active": mailbox.is_active,
                "quota_bytes": mailbox.quota_bytes,
                "used_bytes": mailbox.used_bytes,
                "settings": {
                    "save_sent_copy": mailbox.save_sent_copy,
                    "max_messages_per_hour": mailbox.max_messages_per_hour,
                    "max_recipients_per_hour": mailbox.max_recipients_per_hour,
                },
                "folders": [
                    {"name": f.name, "special_use": f.special_use, "subscribed": f.subscribed}
                    for f in Folder.objects.filter(mailbox=mailbox)
                ],
                "aliases": [{"address": a.address, "description": a.description} for a in aliases],
                "send_as": list(mailbox.send_as_aliases.values_list("address", flat=True)),
                "app_passwords": [
                    {
                        "name": p.name,
                        "created_at": _iso(p.created_at),
                        "last_used_at": _iso(p.last_used_at),
                        "last_used_ip": p.last_used_ip,
                        "revoked_at": _iso(p.revoked_at),
                    }
                    for p in AppPassword.objects.filter(mailbox=mailbox)
                ],
            }
        )
    payload: dict[str, object] = {"subject": subject.address, "user": None, "mailboxes": mailboxes}
    if user is not None:
        payload["user"] = {
            "email": user.email,
            "full_name": user.full_name,
            "role": user.role,
            "is_active": user.is_active,
            "date_joined": _iso(user.date_joined),
            "last_login": _iso(user.last_login),
        }
        payload["mfa_devices"] = [
            {
                "type": device._meta.model_name,
                "name": device.name,
                "confirmed": device.confirmed,
                "created_at": _iso(getattr(device, "created_at", None)),
            }
            for device in devices_for_user(user, confirmed=None)
        ]
        payload["api_tokens"] = [
            {
                "name": t.name,
                "prefix": t.prefix,
                "scope": t.scope,
                "created_at": _iso(t.created_at),
                "expires_at": _iso(t.expires_at),
                "last_used_at": _iso(t.last_used_at),
                "revoked_at": _iso(t.revoked_at),
            }
            for t in ApiToken.objects.filter(user=user)
        ]
        payload["sessions"] = [
            {
                "created_at": _iso(s.created_at),
                "last_seen_at": _iso(s.last_seen_at),
                "ip": s.ip,
                "user_agent": s.user_agent,
                "method": s.method,
            }
            for s in UserSession.objects.filter(user=user)
        ]
        payload["sign_in_events"] = [
            {
                "kind": e.kind,
                "created_at": _iso(e.created_at),
                "ip": e.ip,
                "user_agent": e.user_agent,
                "channel": e.channel,
            }
            for e in AuthEvent.objects.filter(Q(user=user) | Q(email=user.email)).iterator()
        ]
    return payload


def _audit_events_about(subject: Subject) -> QuerySet[AuditEvent]:
    """Audit events about the subject: by its keyed hash, or naming it as target or actor."""
    about = Q(target_display__in=subject.addresses)
    about |= Q(target_type="mailbox", target_id__in=[str(m.pk) for m in subject.mailboxes])
    if subject.user is not None:
        about |= Q(actor=subject.user) | Q(target_type="user", target_id=str(subject.user.pk))
    # Keys are hex digests, so a substring match on the JSON text is exact (and portable:
    # SQLite has no JSON containment lookup).
    for address in subject.addresses:
        about |= Q(subject_keys__icontains=subject_key(address))
    return AuditEvent.objects.filter(about).order_by("id")


def _write_audit(archive: _Archive, subject: Subject) -> None:
    with archive.entry("audit.json") as out:
        out.write(b"[")
        for index, event in enumerate(_audit_events_about(subject).iterator()):
            row = {
                "created_at": _iso(event.created_at),
                "action": event.action,
                "actor": event.actor_display,
                "target": [event.target_type, event.target_id, event.target_display],
                "changes": event.changes,
                "ip": event.ip,
                "user_agent": event.user_agent,
            }
            out.write((b",\n" if index else b"\n") + json.dumps(row, default=str).encode())
        out.write(b"\n]\n")


def export_run(*, job_id: int) -> None:
    """Build the export archive for a queued job. Idempotent: a job that is not queued
    (done, cancelled, taken by another worker) is left alone. Cancellation and failure
    leave no file behind; success publishes the archive under its final name atomically."""
    job = _lease(job_id)
    if job is None:
        return
    temp = _exports_dir() / f".tmp-{job.pk}-{job.lease_token}.zip"
    try:
        _export_build(job, temp)
    except JobCancelled:
        temp.unlink(missing_ok=True)
        _finish(job, ComplianceJob.State.CANCELLED)
        return
    except LeaseLost:
        temp.unlink(missing_ok=True)
        return
    except Exception as exc:
        temp.unlink(missing_ok=True)
        logger.exception("export job %s failed", job.pk)
        message = (
            exc.message if isinstance(exc, ApplicationError) else "The export failed; see the server log."
        )
        _finish(job, ComplianceJob.State.FAILED, error=message)
        return

    digest = hashlib.sha256()
    with temp.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    final = _exports_dir() / f"export-{job.pk}-{secrets.token_hex(8)}.zip"
    os.replace(temp, final)  # same directory: atomic, never a half-written final file
    expires = timezone.now() + timedelta(hours=settings.A3_EXPORT_LINK_HOURS)
    published = _finish(
        job,
        ComplianceJob.State.DONE,
        file_path=str(final.relative_to(settings.A3_DATA_DIR)),
        file_size=final.stat().st_size,
        file_sha256=digest.hexdigest(),
        expires_at=expires,
        progress_done=job.progress_total,
    )
    if not published:  # taken over at the last moment: the other worker publishes
        final.unlink(missing_ok=True)
        return
    audit_record(
        action="gdpr.export_ready",
        actor=None,
        target=("gdpr_job", str(job.pk), job.subject),
        subjects=[job.subject],
    )


def _export_build(job: ComplianceJob, temp: Path) -> None:
    actor = job.requested_by
    if actor is None:
        raise ApplicationError("The person who asked for this export no longer exists.")
    subject = _subject_resolve(actor=actor, subject=job.subject)
    items = (
        MailItem.objects.filter(mailbox__in=subject.mailboxes)
        .select_related("message")
        # Only what the archive needs: the indexed text of a message can be large.
        .only("uid", "internal_date", "folder_id", "message__blob_sha256", "message__mail_from")
        .order_by("folder_id", "uid")
    )
    total = items.count()
    # Each message is read twice (.eml and mbox); the last unit is account, audit, manifest.
    job.progress_total = 2 * total + 1
    _checkpoint(job, progress_total=job.progress_total, progress_done=0)
    done = 0

    with zipfile.ZipFile(temp, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:
        archive = _Archive(zf)
        several = len(subject.mailboxes) > 1
        for folder in Folder.objects.filter(mailbox__in=subject.mailboxes).select_related("mailbox"):
            prefix = f"{_safe_path(folder.mailbox.address)}/" if several else ""
            folder_path = prefix + _safe_path(folder.name)
            folder_items = items.filter(folder=folder)
            # A ZIP entry must be written in one go: first every .eml, then the mbox.
            for item in folder_items.iterator(chunk_size=200):
                with archive.entry(f"mail/{folder_path}/{item.uid}.eml") as out:
                    _copy_or_note(item, out)
                done += 1
                if done % PROGRESS_EVERY == 0:
                    _checkpoint(job, progress_done=done)
            with archive.entry(f"mbox/{folder_path}.mbox") as out:
                for item in folder_items.iterator(chunk_size=200):
                    try:
                        _mbox_append(
                            item.message.blob_sha256,
                            envelope_from=item.message.mail_from,
                            when=item.internal_date,
                            out=out,
                        )
                    except BlobNotFound:
                        logger.error("export %s: blob of message %s missing", job.pk, item.message_id)
                    done += 1
                    if done % PROGRESS_EVERY == 0:
                        _checkpoint(job, progress_done=done)
        archive.write_json("account.json", _account_payload(subject))
        _write_audit(archive, subject)
        _checkpoint(job, progress_done=done)
        # The manifest cannot list itself; everything else is in it.
        archive.write_json(
            "manifest.json",
            {
                "subject": subject.address,
                "generated_at": timezone.now().isoformat(),
                "messages": total,
                "files": archive.manifest,
            },
        )


def _copy_or_note(item: MailItem, out: _HashingWriter) -> None:
    try:
        _copy_blob(item.message.blob_sha256, out)
    except BlobNotFound:
        # The row outlived its bytes (an operator's mistake): export what we have.
        logger.error("blob of message %s is missing", item.message_id)


def exports_expire() -> int:
    """Delete export files whose link has expired (the job row stays, without a file),
    and temporary files a crashed worker left behind; returns how many files went."""
    now = timezone.now()
    removed = 0
    for job in ComplianceJob.objects.filter(kind=ComplianceJob.Kind.EXPORT, expires_at__lte=now).exclude(
        file_path=""
    ):
        (Path(settings.A3_DATA_DIR) / job.file_path).unlink(missing_ok=True)
        ComplianceJob.objects.filter(pk=job.pk).update(file_path="")
        removed += 1
    cutoff = time.time() - 2 * LEASE_SECONDS
    for temp in _exports_dir().glob(".tmp-*.zip"):
        try:
            if temp.stat().st_mtime < cutoff:  # idle longer than any live lease
                temp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


# --- Erasure ---------------------------------------------------------------------------

ERASURE_STEPS = ("plan", "account", "mail", "blobs", "mailboxes", "auth_events", "user", "audit")


@dataclass(frozen=True)
class ErasureCertificate:
    """The erasure job's report as shown to people (page and API)."""

    job: ComplianceJob

    @property
    def data(self) -> dict[str, object]:
        return self.job.report


def erasure_backups_statement() -> str:
    """What the certificate says about copies of the erased data in backups."""
    days = getattr(settings, "A3_BACKUP_RETENTION_DAYS", None)
    if days:
        return (
            f"Copies in backups are not altered; they expire with the backup retention of {days} days, "
            "after which no copy remains."
        )
    return "backups: none configured"


@transaction.atomic
def erasure_request(*, actor: User, subject: str) -> ComplianceJob:
    """Queue the erasure of everything held about `subject` (superadmins only; after
    commit). Raises NotFoundError for unknown subjects, ConflictError code legal_hold
    while a legal hold covers any of the subject's mailboxes, and returns the queued or
    running erasure of the same subject instead of a second one."""
    if not actor.is_superadmin:
        raise PermissionDeniedError("Only a superadmin can erase a data subject.")
    resolved = _subject_resolve(actor=actor, subject=subject)
    if resolved.user is not None and resolved.user.pk == actor.pk:
        raise ConflictError("You cannot erase your own account.", code="erasure_self")
    _refuse_under_hold(resolved)
    job, created = _job_create(actor=actor, subject=resolved, kind=ComplianceJob.Kind.ERASURE)
    if created:
        from apps.compliance.tasks import erasure_run_task

        # The log names the job and the keyed hash, never the address being erased.
        key = subject_key(resolved.address)
        audit_record(
            action="gdpr.erasure_requested",
            actor=actor,
            target=("gdpr_job", str(job.pk), f"subject {key[:16]}"),
        )
        erasure_run_task.delay_on_commit(job_id=job.pk)
    return job


def _refuse_under_hold(subject: Subject) -> None:
    holds = _holds_covering(subject)
    if holds:
        ids = ", ".join(str(h.pk) for h in holds)
        raise ConflictError(
            f"A legal hold covers this subject (hold {ids}); release it before erasing.", code="legal_hold"
        )


def erasure_get(*, actor: User, job_id: int | str) -> ComplianceJob:
    return _job_get(actor=actor, kind=ComplianceJob.Kind.ERASURE, job_id=job_id)


def erasure_run(*, job_id: int) -> None:
    """Run (or resume) an erasure. Every step is idempotent and recorded in the report
    before the next starts, so a run interrupted anywhere finishes on the next one (a
    failed erasure may be run again). Raises whatever interrupted it, after marking the
    job failed; ends as done with the certificate in `job.report`."""
    job = _lease(job_id, states=(ComplianceJob.State.QUEUED, ComplianceJob.State.FAILED))
    if job is None:
        return
    try:
        _erasure_steps(job)
    except LeaseLost:
        return
    except Exception as exc:
        logger.exception("erasure job %s interrupted", job.pk)
        message = exc.message if isinstance(exc, ApplicationError) else f"Interrupted: {type(exc).__name__}"
        _finish(job, ComplianceJob.State.FAILED, error=message, report=job.report)
        raise
    report = job.report
    report["completed_at"] = timezone.now().isoformat()
    _finish(job, ComplianceJob.State.DONE, report=report, progress_done=len(ERASURE_STEPS))
    audit_record(
        action="gdpr.erasure_done",
        actor=job.requested_by,
        target=("gdpr_job", str(job.pk), f"subject {report['identity_key'][:16]}"),
    )


def _erasure_steps(job: ComplianceJob) -> None:
    report = job.report or {}
    job.report = report
    report.setdefault("steps_done", [])
    removed = report.setdefault("removed", {})
    actor = job.requested_by
    if actor is None or not actor.is_superadmin:
        raise ApplicationError("The superadmin who asked for this erasure can no longer act.")
    _checkpoint(job, progress_total=len(ERASURE_STEPS), report=report)

    def done(step: str) -> None:
        report["steps_done"].append(step)
        _checkpoint(job, report=report, progress_done=len(report["steps_done"]))

    def pending(step: str) -> bool:
        return step not in report["steps_done"]

    if pending("plan"):
        subject = _subject_resolve(actor=actor, subject=job.subject)
        _refuse_under_hold(subject)
        report.update(
            subject=job.subject,
            identity_key=subject_key(job.subject),
            requested_by=actor.email,
            requested_at=job.created_at.isoformat(),
            started_at=timezone.now().isoformat(),
            user_id=subject.user.pk if subject.user else None,
            mailbox_ids=[m.pk for m in subject.mailboxes],
            addresses=subject.addresses,
            pending_blobs=[],
            backups=erasure_backups_statement(),
        )
        done("plan")
    else:
        # Resumed: a hold placed since the last run stops us too (what is left stays).
        remaining = Mailbox.objects.filter(pk__in=report["mailbox_ids"]).select_related("domain")
        user = User.objects.filter(pk=report["user_id"]).first() if report["user_id"] else None
        _refuse_under_hold(Subject(address=job.subject, user=user, mailboxes=list(remaining)))

    user = User.objects.filter(pk=report["user_id"]).first() if report["user_id"] else None
    mailboxes = Mailbox.objects.filter(pk__in=report["mailbox_ids"])

    if pending("account"):
        if user is not None:
            from apps.accounts.web_sessions import web_sessions_revoke_all

            revoked = web_sessions_revoke_all(
                actor=actor, user=user, keep_current=None, revoke_tokens=False, reason="erasure"
            )
            devices = list(devices_for_user(user, confirmed=None))
            for device in devices:
                device.delete()
            tokens, _ = ApiToken.objects.filter(user=user).delete()
            removed.update(sessions=revoked.sessions, mfa_devices=len(devices), api_tokens=tokens)
        done("account")

    if pending("mail"):
        _erase_mail(job, mailboxes, report, actor)
        done("mail")

    if pending("blobs"):
        _erase_blobs(job, report)
        done("blobs")

    if pending("mailboxes"):
        from apps.mailboxes.services import mailbox_delete

        for mailbox in mailboxes.select_related("domain", "owner"):
            removed["app_passwords"] = removed.get("app_passwords", 0) + mailbox.app_passwords.count()
            deletion = mailbox_delete(actor=actor, mailbox=mailbox)
            for key in ("mailboxes", "aliases", "destinations_removed", "users"):
                removed.setdefault(key, []).extend(getattr(deletion, key))
            _checkpoint(job, report=report)
        done("mailboxes")

    if pending("auth_events"):
        # Sign-in records are kept (security evidence) but no longer name the person.
        pseudonym = f"erased-{report['identity_key'][:16]}"
        about = Q(email__in=report["addresses"])
        if report["user_id"]:
            about |= Q(user_id=report["user_id"])
        removed["auth_events_pseudonymised"] = AuthEvent.objects.filter(about).update(
            email=pseudonym, ip=None, user_agent="", detail={}
        )
        done("auth_events")

    if pending("user"):
        user = User.objects.filter(pk=report["user_id"]).first() if report["user_id"] else None
        if user is not None:
            from apps.accounts.services import user_delete

            user_delete(actor=actor, user=user)
            removed.setdefault("users", []).append(user.email)
        removed["users"] = sorted(set(removed.get("users", [])))
        done("user")

    if pending("audit"):
        # Runs last, after the events this erasure itself caused (session revocation...).
        count = sum(audit_pseudonymise(address) for address in report["addresses"])
        removed["audit_events_pseudonymised"] = removed.get("audit_events_pseudonymised", 0) + count
        done("audit")


def _erase_mail(job: ComplianceJob, mailboxes: QuerySet[Mailbox], report: dict, actor: User) -> None:
    """Delete the mailboxes' mail in batches. Each batch records its blob hashes in the
    report in the same transaction that deletes its rows, so a crash never forgets a
    blob whose last reference it removed."""
    removed = report["removed"]
    for mailbox_id in list(mailboxes.values_list("pk", flat=True)):
        _erase_mailbox_mail(job, mailbox_id, report, removed, actor)


def _erase_mailbox_mail(
    job: ComplianceJob, mailbox_id: int, report: dict, removed: dict, actor: User
) -> None:
    from apps.mailboxes.services import remove_mail_items

    while True:
        with transaction.atomic():
            batch = list(
                MailItem.objects.filter(mailbox_id=mailbox_id).values_list(
                    "pk", "message_id", "message__blob_sha256"
                )[:500]
            )
            if not batch:
                return
            message_ids = {row[1] for row in batch}
            report["pending_blobs"] = sorted(set(report["pending_blobs"]) | {row[2] for row in batch})
            # Per mailbox: only holds on this mailbox count, not one on a colleague's copy.
            removal = remove_mail_items(
                MailItem.objects.filter(pk__in=[row[0] for row in batch]),
                via="erasure",
                actor=actor,
                mailbox_id=mailbox_id,
            )
            if removal.kept:
                # A hold placed since the run started keeps some mail: stop (the rest stays).
                raise ConflictError("A legal hold now covers some of this mail.", code="legal_hold")
            gone = len(message_ids) - Message.objects.filter(pk__in=message_ids).count()
            removed["mail_items"] = removed.get("mail_items", 0) + len(batch)
            removed["messages"] = removed.get("messages", 0) + gone
            _checkpoint(job, report=report)


def _erase_blobs(job: ComplianceJob, report: dict) -> None:
    """Delete the erased messages' bytes from disk now (not after the orphan sweep's
    grace period) unless another message still references the same content.

    A delivery of byte-identical content racing this step could find its blob gone; the
    window is the instant between that delivery's blob write and its commit, and its
    message would then show as content_missing rather than leak erased data."""
    removed = report["removed"]
    deleted = set(removed.get("blobs", []))
    kept = set(removed.get("blobs_kept_shared", []))
    store = blob_store()
    for index, sha256 in enumerate(report["pending_blobs"]):
        if sha256 in deleted or sha256 in kept:
            continue
        if Message.objects.filter(blob_sha256=sha256).exists():
            kept.add(sha256)
        else:
            store.delete(sha256)  # False when an earlier run already removed it: same result
            deleted.add(sha256)
        if index % PROGRESS_EVERY == 0:
            removed["blobs"] = sorted(deleted)
            removed["blobs_kept_shared"] = sorted(kept)
            _checkpoint(job, report=report)
    removed["blobs"] = sorted(deleted)
    removed["blobs_kept_shared"] = sorted(kept)
