"""GDPR exports: the archive's content, its integrity, scope, dedupe, cancel and expiry."""

from __future__ import annotations

import hashlib
import io
import json
import mailbox as mailbox_lib
import threading
import tracemalloc
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import services as account_services
from apps.compliance.models import AuditEvent, ComplianceJob
from apps.compliance.services import gdpr
from apps.core.exceptions import ConflictError, NotFoundError
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import AppPassword, MailItem, Message
from tests.mailboxes.test_messages_api import build_mail, deliver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    """Exports land in a private directory so a test can see every file in it."""
    settings.A3_DATA_DIR = tmp_path
    return tmp_path


def exports_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "exports"
    return sorted(folder.iterdir()) if folder.exists() else []


def run_export(actor, subject: str, django_capture_on_commit_callbacks) -> ComplianceJob:
    with django_capture_on_commit_callbacks(execute=False):
        job = gdpr.export_request(actor=actor, subject=subject)
    gdpr.export_run(job_id=job.pk)
    job.refresh_from_db()
    return job


def open_zip(job: ComplianceJob, data_dir: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(data_dir / job.file_path)


def test_export_archive_matches_stored_messages(
    superadmin, mailbox_a, data_dir, api_client_for, django_capture_on_commit_callbacks
):
    owner = mailbox_a.owner
    TOTPDevice.objects.create(user=owner, name="phone", key="3132333435363738393031323334353637383930")
    account_services.api_token_create(user=owner, name="laptop")
    AppPassword.objects.create(mailbox=mailbox_a, name="phone", secret_hash="f" * 64)
    # A body line starting "From " must survive the mbox round trip (mboxrd quoting).
    messages = [
        deliver(build_mail(subject=f"Note {n}", text=f"From the desk of Bob\nline {n}"), "alice@alpha.test")
        for n in range(3)
    ]

    job = run_export(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)

    assert job.state == ComplianceJob.State.DONE
    assert job.percent == 100
    assert job.expires_at > timezone.now() + timedelta(hours=47)
    path = data_dir / job.file_path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == job.file_sha256
    assert path.stat().st_size == job.file_size
    client = api_client_for(owner)
    with open_zip(job, data_dir) as zf:
        for message in messages:
            item = MailItem.objects.get(message=message)
            raw = b"".join(client.get(f"/api/v1/messages/{item.pk}/raw").streaming_content)
            assert zf.read(f"mail/INBOX/{item.uid}.eml") == raw
        manifest = json.loads(zf.read("manifest.json"))
        listed = {entry["path"] for entry in manifest["files"]}
        assert listed == set(zf.namelist()) - {"manifest.json"}
        for entry in manifest["files"]:
            content = zf.read(entry["path"])
            assert hashlib.sha256(content).hexdigest() == entry["sha256"]
            assert len(content) == entry["size"]
        mbox_path = data_dir / "inbox.mbox"
        mbox_path.write_bytes(zf.read("mbox/INBOX.mbox"))
        account_text = zf.read("account.json").decode()
        audit = json.loads(zf.read("audit.json"))
    parsed = mailbox_lib.mbox(str(mbox_path))
    assert sorted(m["Subject"] for m in parsed) == ["Note 0", "Note 1", "Note 2"]
    assert all(">From the desk of Bob" in m.get_payload() for m in parsed)
    account = json.loads(account_text)
    assert account["mailboxes"][0]["address"] == "alice@alpha.test"
    assert account["mfa_devices"] == [
        {
            "type": "totpdevice",
            "name": "phone",
            "confirmed": True,
            "created_at": account["mfa_devices"][0]["created_at"],
        }
    ]
    assert account["api_tokens"][0]["name"] == "laptop"
    assert account["mailboxes"][0]["app_passwords"][0]["name"] == "phone"
    # No secret in any form: password hashes, TOTP keys, token or app-password hashes.
    for secret in (owner.password, mailbox_a.password, "3132333435363738393031323334353637383930", "f" * 64):
        assert secret not in account_text
    assert "key_hash" not in account_text and "secret_hash" not in account_text
    assert any(row["action"] == "gdpr.export_requested" for row in audit)


def test_export_request_unknown_subject_is_not_found(superadmin):
    with pytest.raises(NotFoundError):
        gdpr.export_request(actor=superadmin, subject="nobody@alpha.test")
    with pytest.raises(NotFoundError):
        gdpr.export_request(actor=superadmin, subject="not an address")
    assert not ComplianceJob.objects.exists()


def test_export_request_outside_scope_is_not_found(admin_b, mailbox_a, mailbox_b, api_client_for):
    with pytest.raises(NotFoundError):
        gdpr.export_request(actor=admin_b, subject="alice@alpha.test")
    response = api_client_for(admin_b).post(
        "/api/v1/gdpr/exports/", {"subject": "alice@alpha.test"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    # Their own domain's mailbox is fine, and so is a user exporting themselves.
    assert gdpr.export_request(actor=admin_b, subject="bob@beta.test").subject == "bob@beta.test"
    assert (
        gdpr.export_request(actor=mailbox_a.owner, subject="alice@alpha.test").subject == "alice@alpha.test"
    )
    with pytest.raises(NotFoundError):
        gdpr.export_request(actor=mailbox_a.owner, subject="bob@beta.test")


def test_export_request_deduplicates_queued_export(superadmin, mailbox_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        first = gdpr.export_request(actor=superadmin, subject="alice@alpha.test")
    second = gdpr.export_request(actor=superadmin, subject="ALICE@alpha.test")
    assert first.pk == second.pk
    assert ComplianceJob.objects.filter(kind="export").count() == 1
    assert len(callbacks) == 1  # enqueued once, after commit


@pytest.mark.django_db(transaction=True)
def test_export_request_concurrent_requests_make_one_job(superadmin, mailbox_a, monkeypatch):
    from apps.compliance import tasks

    monkeypatch.setattr(tasks.export_run_task, "delay", lambda **kwargs: None)
    barrier = threading.Barrier(4)
    ids: list[int] = []

    def request() -> None:
        barrier.wait()
        try:
            ids.append(gdpr.export_request(actor=superadmin, subject="alice@alpha.test").pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 4 and len(set(ids)) == 1
    assert ComplianceJob.objects.filter(kind="export").count() == 1


def test_export_cancel_leaves_no_partial_file(
    superadmin, mailbox_a, data_dir, monkeypatch, django_capture_on_commit_callbacks
):
    for n in range(5):
        deliver(build_mail(subject=f"n{n}"), "alice@alpha.test")
    monkeypatch.setattr(gdpr, "PROGRESS_EVERY", 1)
    with django_capture_on_commit_callbacks(execute=False):
        job = gdpr.export_request(actor=superadmin, subject="alice@alpha.test")
    real_copy = gdpr._copy_blob
    seen: list[str] = []

    def copy_then_cancel(sha256, out):
        real_copy(sha256, out)
        seen.append(sha256)
        if len(seen) == 2:  # mid-way, as the API would: the worker notices at its next update
            gdpr.export_cancel(actor=superadmin, job=ComplianceJob.objects.get(pk=job.pk))

    monkeypatch.setattr(gdpr, "_copy_blob", copy_then_cancel)
    gdpr.export_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.state == ComplianceJob.State.CANCELLED
    assert job.file_path == ""
    assert exports_files(data_dir) == []


def test_export_cancel_queued_job_never_runs(
    superadmin, mailbox_a, data_dir, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        job = gdpr.export_request(actor=superadmin, subject="alice@alpha.test")
    gdpr.export_cancel(actor=superadmin, job=job)
    gdpr.export_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == ComplianceJob.State.CANCELLED
    assert exports_files(data_dir) == []
    with pytest.raises(ConflictError):
        gdpr.export_cancel(actor=superadmin, job=job)


def test_export_download_is_audited_and_refused_after_expiry(
    superadmin, mailbox_a, data_dir, api_client_for, django_capture_on_commit_callbacks
):
    deliver(build_mail(subject="hello"), "alice@alpha.test")
    job = run_export(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)
    client = api_client_for(superadmin)

    response = client.get(f"/api/v1/gdpr/exports/{job.pk}/download/")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == job.file_sha256
    assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None
    assert AuditEvent.objects.filter(action="gdpr.export_downloaded", target_id=str(job.pk)).count() == 1

    ComplianceJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = client.get(f"/api/v1/gdpr/exports/{job.pk}/download/")
    assert response.status_code == 409
    assert response.json()["code"] == "export_expired"
    assert gdpr.exports_expire() == 1
    assert exports_files(data_dir) == []
    job.refresh_from_db()
    assert job.file_path == ""


def test_export_api_request_poll_and_scope(superadmin, admin_b, mailbox_a, api_client_for):
    client = api_client_for(superadmin)
    response = client.post("/api/v1/gdpr/exports/", {"subject": "alice@alpha.test"}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "queued" and body["percent"] == 0
    assert body["links"]["self"] == f"/api/v1/gdpr/exports/{body['id']}/"
    # The task is only enqueued (after commit); run it as the worker would.
    gdpr.export_run(job_id=body["id"])
    polled = client.get(body["links"]["self"]).json()
    assert polled["state"] == "done" and polled["percent"] == 100
    assert polled["links"]["download"] == f"/api/v1/gdpr/exports/{body['id']}/download/"
    assert [row["id"] for row in client.get("/api/v1/gdpr/exports/").json()["results"]] == [body["id"]]
    # Another admin's job does not exist for them.
    other = api_client_for(admin_b)
    assert other.get(body["links"]["self"]).status_code == 404
    assert other.get(f"/api/v1/gdpr/exports/{body['id']}/download/").status_code == 404
    assert client.post("/api/v1/gdpr/exports/", {"subject": ""}, format="json").json()["code"] == "invalid"
    assert api_client_for().get("/api/v1/gdpr/exports/").status_code in (401, 403)


def test_export_memory_stays_bounded(superadmin, mailbox_a, data_dir, django_capture_on_commit_callbacks):
    """60 MB of mail (60 messages of 1 MB) exported with a traced peak far below it."""
    # Rows and blobs made directly (delivery would parse each message: slow, and not
    # what is measured here). Each message differs, so each is its own 1 MB blob.
    inbox = mailbox_a.folders.get(name="INBOX")
    body = (b"x" * 76 + b"\r\n") * (1024 * 1024 // 78)
    raws = [f"From: s@remote.test\r\nSubject: big {n}\r\n\r\n".encode() + body for n in range(60)]
    hashes = blob_store().put_many(raws)
    messages = Message.objects.bulk_create(
        Message(queue_id=f"BIG{n:05d}", blob_sha256=sha, size=len(raw), state=Message.State.DELIVERED)
        for n, (sha, raw) in enumerate(zip(hashes, raws, strict=True))
    )
    MailItem.objects.bulk_create(
        MailItem(mailbox=mailbox_a, folder=inbox, message=m, uid=n + 1, size=m.size)
        for n, m in enumerate(messages)
    )
    total = sum(MailItem.objects.filter(mailbox=mailbox_a).values_list("size", flat=True))
    assert total > 55 * 1024 * 1024

    with django_capture_on_commit_callbacks(execute=False):
        job = gdpr.export_request(actor=superadmin, subject="alice@alpha.test")
    tracemalloc.start()
    try:
        gdpr.export_run(job_id=job.pk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    job.refresh_from_db()
    assert job.state == ComplianceJob.State.DONE
    print(f"export of {total / 2**20:.1f} MiB: peak traced memory {peak / 2**20:.2f} MiB")
    assert peak < 20 * 1024 * 1024


def test_gdpr_pages_request_poll_and_cancel(
    client, superadmin, mailbox_a, django_capture_on_commit_callbacks
):
    client.force_login(superadmin)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/compliance/gdpr/", {"subject": "alice@alpha.test"})
    assert response.status_code == 302
    job = ComplianceJob.objects.get(kind="export")
    page = client.get("/compliance/gdpr/").content.decode()
    assert f'id="gdpr-export-{job.pk}"' in page and 'hx-trigger="every 2s"' in page
    assert 'http-equiv="refresh"' in page  # reloads without JavaScript while it runs
    row = client.get(f"/compliance/gdpr/exports/{job.pk}/row/", HTTP_HX_REQUEST="true").content.decode()
    assert "<tr" in row and "<html" not in row and "every 2s" in row
    client.post(f"/compliance/gdpr/exports/{job.pk}/cancel/")
    job.refresh_from_db()
    assert job.state == ComplianceJob.State.CANCELLED
    assert 'hx-trigger="every 2s"' not in client.get("/compliance/gdpr/").content.decode()
    response = client.post("/compliance/gdpr/", {"subject": "ghost@alpha.test"})
    assert "No data subject" in response.content.decode()


def test_gdpr_erasure_page_confirms_then_shows_certificate(
    client, superadmin, mailbox_a, django_capture_on_commit_callbacks
):
    client.force_login(superadmin)
    confirm = client.post("/compliance/gdpr/erasures/new/", {"subject": "alice@alpha.test"})
    assert "backups: none configured" in confirm.content.decode()
    assert not ComplianceJob.objects.filter(kind="erasure").exists()
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            "/compliance/gdpr/erasures/new/", {"subject": "alice@alpha.test", "confirm": "yes"}
        )
    job = ComplianceJob.objects.get(kind="erasure")
    assert response["Location"] == f"/compliance/gdpr/erasures/{job.pk}/"
    gdpr.erasure_run(job_id=job.pk)
    page = client.get(response["Location"]).content.decode()
    assert "Erasure certificate" in page and gdpr.subject_key("alice@alpha.test") in page


def test_gdpr_erasure_page_is_for_superadmins_only(client, admin_a):
    client.force_login(admin_a)
    assert client.get("/compliance/gdpr/erasures/new/").status_code == 404


def test_domain_admin_export_of_a_mailbox_owner_leaves_out_their_account(admin_a, domain_a, domain_b):
    from apps.compliance.services import gdpr
    from tests.factories import MailboxFactory

    box = MailboxFactory(domain=domain_a, local_part="c", address="c@alpha.test")
    MailboxFactory(domain=domain_b, local_part="secret", address="secret@beta.test", owner=box.owner)
    subject = gdpr._subject_resolve(actor=admin_a, subject=box.owner.email)
    assert subject.user is None
    assert [m.address for m in subject.mailboxes] == ["c@alpha.test"]


def test_owner_of_a_disabled_mailbox_cannot_export_its_mail(mailbox_a, user_a):
    from apps.compliance.services import gdpr

    mailbox_a.is_active = False
    mailbox_a.save()
    # Their own account data, yes; the mail an admin cut them off from, no.
    assert gdpr._subject_resolve(actor=user_a, subject=mailbox_a.address).mailboxes == []
