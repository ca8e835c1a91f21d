"""GDPR erasure: mail, blobs, accounts and audit identities go; holds refuse it; reruns finish."""

from __future__ import annotations

import pytest
from django.conf import settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import services as account_services
from apps.accounts.models import ApiToken, AuthEvent, User
from apps.compliance.models import AuditEvent, ComplianceJob, LegalHold
from apps.compliance.services import gdpr
from apps.compliance.services.audit import audit_record, audit_verify, subject_key
from apps.core.exceptions import ConflictError, NotFoundError, PermissionDeniedError
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Alias, AliasDestination, AppPassword, Mailbox, Message
from tests.mailboxes.test_messages_api import build_mail, deliver

pytestmark = pytest.mark.django_db


def blob_path(sha256: str):
    return settings.A3_BLOB_DIR / sha256[:2] / sha256


def request_erasure(actor, subject: str, django_capture_on_commit_callbacks) -> ComplianceJob:
    with django_capture_on_commit_callbacks(execute=False):
        return gdpr.erasure_request(actor=actor, subject=subject)


@pytest.fixture
def alice_data(mailbox_a, mailbox_b):
    """alice@alpha.test with mail (one message also delivered to bob), an alias, an app
    password, a token, a TOTP device, sign-in records and audit events naming her."""
    own = deliver(build_mail(subject="only alice"), "alice@alpha.test")
    shared = deliver(build_mail(subject="alice and bob"), "alice@alpha.test", "bob@beta.test")
    alias = Alias.objects.create(domain=mailbox_a.domain, local_part="sales", address="sales@alpha.test")
    AliasDestination.objects.create(alias=alias, address="alice@alpha.test")
    AppPassword.objects.create(mailbox=mailbox_a, name="phone", secret_hash="a" * 64)
    owner = mailbox_a.owner
    account_services.api_token_create(user=owner, name="cli")
    TOTPDevice.objects.create(user=owner, name="phone")
    AuthEvent.objects.create(
        kind="login_ok", user=owner, email=owner.email, ip="198.51.100.4", user_agent="UA"
    )
    audit_record(
        action="mailbox.update", actor=owner, target=("mailbox", str(mailbox_a.pk), "alice@alpha.test")
    )
    return {"own": own, "shared": shared, "owner": owner}


def test_erasure_removes_subject_and_issues_certificate(
    superadmin, mailbox_a, alice_data, django_capture_on_commit_callbacks
):
    own, shared, owner = alice_data["own"], alice_data["shared"], alice_data["owner"]
    assert blob_path(own.blob_sha256).exists()
    job = request_erasure(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)

    gdpr.erasure_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.state == ComplianceJob.State.DONE, job.error
    assert not Mailbox.objects.filter(address="alice@alpha.test").exists()
    assert not User.objects.filter(pk=owner.pk).exists()
    assert not Alias.objects.filter(address="sales@alpha.test").exists()
    assert not ApiToken.objects.filter(user_id=owner.pk).exists()
    assert not TOTPDevice.objects.filter(user_id=owner.pk).exists()
    # Her own message is gone from the database and the disk; bob's copy keeps its blob.
    assert not Message.objects.filter(pk=own.pk).exists()
    assert not blob_path(own.blob_sha256).exists()
    assert Message.objects.filter(pk=shared.pk).exists()
    assert blob_store().exists(shared.blob_sha256)
    # Sign-in records stay, without naming her.
    event = AuthEvent.objects.get(kind="login_ok")
    assert event.email.startswith("erased-") and event.ip is None and event.user_agent == ""
    # Audit events no longer name her, and the chain still verifies.
    assert not AuditEvent.objects.filter(actor_display="alice@alpha.test").exists()
    assert not AuditEvent.objects.filter(target_display="alice@alpha.test").exists()
    assert audit_verify().ok
    certificate = job.report
    assert certificate["identity_key"] == subject_key("alice@alpha.test")
    assert certificate["requested_by"] == "root@admin.test"
    assert certificate["removed"]["blobs"] == [own.blob_sha256]
    assert certificate["removed"]["blobs_kept_shared"] == [shared.blob_sha256]
    assert certificate["removed"]["mail_items"] == 2
    assert certificate["removed"]["messages"] == 1
    assert certificate["removed"]["app_passwords"] == 1
    assert certificate["removed"]["mfa_devices"] == 1
    assert certificate["removed"]["audit_events_pseudonymised"] >= 1
    assert certificate["backups"] == "backups: none configured"
    assert certificate["completed_at"]


def test_erasure_refused_under_legal_hold(
    superadmin, mailbox_a, api_client_for, django_capture_on_commit_callbacks
):
    LegalHold.objects.create(scope=LegalHold.Scope.MAILBOX, mailbox=mailbox_a, reason="litigation")
    with pytest.raises(ConflictError) as raised:
        request_erasure(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)
    assert raised.value.code == "legal_hold"
    response = api_client_for(superadmin).post(
        "/api/v1/gdpr/erasures/", {"subject": "alice@alpha.test"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "legal_hold"
    assert not ComplianceJob.objects.filter(kind="erasure").exists()
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_erasure_request_superadmin_only(admin_a, mailbox_a, api_client_for):
    with pytest.raises(PermissionDeniedError):
        gdpr.erasure_request(actor=admin_a, subject="alice@alpha.test")
    response = api_client_for(admin_a).post(
        "/api/v1/gdpr/erasures/", {"subject": "alice@alpha.test"}, format="json"
    )
    assert response.status_code == 403
    assert not ComplianceJob.objects.exists()


def test_erasure_request_unknown_subject_and_dedupe(
    superadmin, mailbox_a, django_capture_on_commit_callbacks
):
    with pytest.raises(NotFoundError):
        gdpr.erasure_request(actor=superadmin, subject="ghost@alpha.test")
    first = request_erasure(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)
    second = request_erasure(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)
    assert first.pk == second.pk


def test_erasure_resumes_after_interruption(
    superadmin, mailbox_a, alice_data, monkeypatch, django_capture_on_commit_callbacks
):
    own = alice_data["own"]
    job = request_erasure(superadmin, "alice@alpha.test", django_capture_on_commit_callbacks)
    real = gdpr._erase_blobs

    def crash(job, report):  # the worker dies after the mail went, before the blobs
        raise RuntimeError("power cut")

    monkeypatch.setattr(gdpr, "_erase_blobs", crash)
    with pytest.raises(RuntimeError):
        gdpr.erasure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == ComplianceJob.State.FAILED
    assert "mail" in job.report["steps_done"] and "blobs" not in job.report["steps_done"]
    assert blob_path(own.blob_sha256).exists()  # its hash is recorded, so it is not forgotten

    monkeypatch.setattr(gdpr, "_erase_blobs", real)
    gdpr.erasure_run(job_id=job.pk)
    gdpr.erasure_run(job_id=job.pk)  # a redelivered task: no-op

    job.refresh_from_db()
    assert job.state == ComplianceJob.State.DONE, job.error
    assert not blob_path(own.blob_sha256).exists()
    assert job.report["removed"]["blobs"] == [own.blob_sha256]
    assert job.report["removed"]["mail_items"] == 2
    assert job.report["steps_done"] == list(gdpr.ERASURE_STEPS)
    assert not Mailbox.objects.filter(address="alice@alpha.test").exists()


def test_erasure_api_and_certificate(superadmin, mailbox_a, api_client_for):
    client = api_client_for(superadmin)
    response = client.post("/api/v1/gdpr/erasures/", {"subject": "alice@alpha.test"}, format="json")
    assert response.status_code == 202
    job_id = response.json()["id"]
    gdpr.erasure_run(job_id=job_id)
    body = client.get(f"/api/v1/gdpr/erasures/{job_id}/").json()
    assert body["state"] == "done"
    assert body["certificate"]["identity_key"] == subject_key("alice@alpha.test")
    assert body["certificate"]["removed"]["mailboxes"] == ["alice@alpha.test"]
