"""The compliance dashboard and the DLP policy pages: who sees them, and what they show."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from apps.compliance.models import ComplianceJob, DlpHit, DlpPolicy, LegalHold, RetentionPolicy, RetentionRun
from apps.compliance.selectors import AUDIT_STATUS_CACHE_KEY
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.delete(AUDIT_STATUS_CACHE_KEY)
    yield
    cache.delete(AUDIT_STATUS_CACHE_KEY)


def stored_message(submitted_by=None) -> Message:
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from="alice@alpha.test",
        recipients=(),
        raw=b"Subject: x\r\n\r\nx\r\n",
        submitted_by_id=submitted_by.pk if submitted_by else None,
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])
    return message


def test_dashboard_renders_cards_and_chart_for_superadmin(client, superadmin, domain_a, mailbox_a):
    now = timezone.now()
    RetentionPolicy.objects.create(domain=None, days=365)
    LegalHold.objects.create(scope=LegalHold.Scope.DOMAIN, domain=domain_a, reason="litigation")
    RetentionRun.objects.create(started_at=now - timedelta(days=2), deleted_items=40)
    RetentionRun.objects.create(started_at=now - timedelta(days=2), deleted_items=2)
    RetentionRun.objects.create(started_at=now - timedelta(days=1), deleted_items=999, dry_run=True)
    ComplianceJob.objects.create(kind=ComplianceJob.Kind.EXPORT, subject="alice@alpha.test")
    ComplianceJob.objects.create(kind=ComplianceJob.Kind.ERASURE, subject="gone@alpha.test")
    policy = DlpPolicy.objects.create(domain=domain_a, category="payment_card", threshold=2)
    DlpHit.objects.create(
        policy=policy, message=stored_message(mailbox_a), category="payment_card", count=5, action="hold"
    )
    client.force_login(superadmin)

    response = client.get("/compliance/")

    body = response.content.decode()
    assert response.status_code == 200
    assert '<span class="stat-value" id="count-retention-policies">1</span>' in body
    assert '<span class="stat-value" id="count-legal-holds">1</span>' in body
    assert "Payment card numbers" in body
    assert "alice@alpha.test" in body and "gone@alpha.test" in body
    # The chart: one bar per day, the real runs of one day summed (dry runs left out).
    assert body.count("<rect ") == 30
    assert ": 42</title>" in body and "999" not in body
    assert "42 messages deleted" in body
    assert 'style="' not in body.split('id="retention-chart"')[1].split("</section>")[0]
    # The audit chain was verified (short log) and the result cached.
    assert "intact" in body
    assert cache.get(AUDIT_STATUS_CACHE_KEY)["ok"] is True


def test_dashboard_shows_a_broken_chain_from_the_cache(client, superadmin):
    cache.set(
        AUDIT_STATUS_CACHE_KEY,
        {
            "ok": False,
            "checked": 7,
            "first_broken_id": 5,
            "reason": "chain hash does not match",
            "verified_at": timezone.now(),
        },
    )
    client.force_login(superadmin)

    body = client.get("/compliance/").content.decode()

    assert "broken" in body and "at event 5" in body and "chain hash does not match" in body
    assert 'href="/compliance/audit/"' in body


def test_dashboard_for_domain_admin_is_scoped(client, admin_a, domain_a, domain_b, mailbox_b):
    LegalHold.objects.create(scope=LegalHold.Scope.DOMAIN, domain=domain_b, reason="other tenant")
    ComplianceJob.objects.create(kind=ComplianceJob.Kind.EXPORT, subject="bob@beta.test")
    policy = DlpPolicy.objects.create(domain=domain_b, category="iban")
    DlpHit.objects.create(
        policy=policy, message=stored_message(mailbox_b), category="iban", count=3, action="hold"
    )
    client.force_login(admin_a)

    body = client.get("/compliance/").content.decode()

    assert '<span class="stat-value" id="count-legal-holds">0</span>' in body
    assert "bob@beta.test" not in body and "IBANs" not in body
    assert 'id="retention-chart"' not in body and 'id="audit-chain"' not in body


def test_dashboard_is_not_found_for_mailbox_users(client, user_a):
    client.force_login(user_a)
    assert client.get("/compliance/").status_code == 404
    assert client.get("/compliance/dlp/").status_code == 404


def test_dashboard_redirects_anonymous_to_login(client):
    response = client.get("/compliance/")
    assert response.status_code == 302 and "/accounts/login" in response["Location"]


def test_dlp_pages_create_and_delete_a_policy(client, admin_a, domain_a):
    client.force_login(admin_a)

    response = client.post(
        "/compliance/dlp/new/",
        {
            "domain": domain_a.pk,
            "category": "payment_card",
            "threshold": 3,
            "action": "hold",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    policy = DlpPolicy.objects.get()
    assert (policy.domain_id, policy.category, policy.threshold, policy.action) == (
        domain_a.pk,
        "payment_card",
        3,
        "hold",
    )
    assert "Payment card numbers" in client.get("/compliance/dlp/").content.decode()

    duplicate = client.post(
        "/compliance/dlp/new/",
        {"domain": domain_a.pk, "category": "payment_card", "threshold": 1, "action": "alert"},
    )
    assert duplicate.status_code == 200 and "already has a policy" in duplicate.content.decode()

    assert client.post(f"/compliance/dlp/{policy.pk}/delete/").status_code == 302
    assert not DlpPolicy.objects.exists()


def test_dlp_pages_hide_other_domains(client, admin_a, domain_b):
    policy = DlpPolicy.objects.create(domain=domain_b, category="iban")
    client.force_login(admin_a)

    assert client.get(f"/compliance/dlp/{policy.pk}/delete/").status_code == 404
    assert client.post(f"/compliance/dlp/{policy.pk}/delete/").status_code == 404
    form = client.get("/compliance/dlp/new/").content.decode()
    assert "beta.test" not in form
    assert DlpPolicy.objects.count() == 1
