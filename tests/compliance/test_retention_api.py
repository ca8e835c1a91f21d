"""/api/v1/retention-policies/, /api/v1/retention-runs/ and /api/v1/legal-holds/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from apps.compliance import services
from apps.compliance.models import LegalHold, RetentionPolicy, RetentionRun
from apps.mailboxes.models import MailItem
from tests.compliance.retention_support import file_mail

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clock(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def test_superadmin_creates_updates_and_deletes_a_policy(api_client_for, superadmin, domain_a):
    client = api_client_for(superadmin)

    created = client.post(
        "/api/v1/retention-policies/",
        {"domain_id": domain_a.pk, "folder_special_use": "trash", "days": 30},
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["domain_name"], body["folder_special_use"], body["days"], body["is_active"]) == (
        "alpha.test",
        "trash",
        30,
        True,
    )
    policy_id = body["id"]

    updated = client.patch(f"/api/v1/retention-policies/{policy_id}/", {"days": 45}, format="json")
    assert updated.json()["days"] == 45 and RetentionPolicy.objects.get().days == 45

    assert client.delete(f"/api/v1/retention-policies/{policy_id}/").status_code == 204
    assert not RetentionPolicy.objects.exists()


def test_policy_create_validation_error_shape(api_client_for, superadmin):
    client = api_client_for(superadmin)
    response = client.post(
        "/api/v1/retention-policies/", {"days": 0, "folder_special_use": "nope"}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and {"days", "folder_special_use"} <= set(body["fields"])
    unknown = client.post("/api/v1/retention-policies/", {"days": 5, "extra": 1}, format="json")
    assert unknown.status_code == 400 and "extra" in unknown.json()["fields"]
    assert not RetentionPolicy.objects.exists()


def test_domain_admin_reads_own_and_global_policies_only(api_client_for, admin_a, domain_a, domain_b):
    mine = RetentionPolicy.objects.create(domain=domain_a, days=10)
    global_policy = RetentionPolicy.objects.create(domain=None, days=365)
    theirs = RetentionPolicy.objects.create(domain=domain_b, days=20)
    client = api_client_for(admin_a)

    listed = client.get("/api/v1/retention-policies/")
    assert {row["id"] for row in listed.json()["results"]} == {mine.pk, global_policy.pk}
    assert client.get(f"/api/v1/retention-policies/{theirs.pk}/").status_code == 404
    refused = client.post("/api/v1/retention-policies/", {"days": 5}, format="json")
    assert refused.status_code == 403 and RetentionPolicy.objects.count() == 3


def test_mailbox_user_and_anonymous_are_refused(api_client_for, user_a):
    for url in ("/api/v1/retention-policies/", "/api/v1/retention-runs/", "/api/v1/legal-holds/"):
        assert api_client_for(user_a).get(url).status_code == 403
        assert api_client_for().get(url).status_code in (401, 403)


def test_preview_records_a_dry_run_with_counts(api_client_for, superadmin, mailbox_a):
    RetentionPolicy.objects.create(domain=None, days=30)
    item = file_mail(mailbox_a, when=NOW - timedelta(days=40))
    client = api_client_for(superadmin)

    response = client.post("/api/v1/retention-runs/preview/")

    assert response.status_code == 201
    body = response.json()
    assert body["dry_run"] is True and body["deleted_items"] == 1
    assert body["per_mailbox"] == {"alice@alpha.test": 1}
    assert MailItem.objects.filter(pk=item.pk).exists()
    listed = client.get("/api/v1/retention-runs/").json()["results"]
    assert [row["id"] for row in listed] == [RetentionRun.objects.get().pk]


def test_domain_admin_cannot_see_runs(api_client_for, admin_a):
    RetentionRun.objects.create()
    assert api_client_for(admin_a).get("/api/v1/retention-runs/").status_code == 403
    assert api_client_for(admin_a).post("/api/v1/retention-runs/preview/").status_code == 403


def test_legal_hold_create_retrieve_release(api_client_for, superadmin, mailbox_a):
    client = api_client_for(superadmin)

    created = client.post(
        "/api/v1/legal-holds/",
        {"scope": "mailbox", "mailbox_id": mailbox_a.pk, "reason": "Case 42"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    hold_id = created.json()["id"]
    assert created.json()["mailbox_address"] == "alice@alpha.test"
    assert created.json()["is_active"] is True

    fetched = client.get(f"/api/v1/legal-holds/{hold_id}/").json()
    assert fetched["reason"] == "Case 42" and fetched["blocked_deletions"] == 0

    released = client.post(f"/api/v1/legal-holds/{hold_id}/release/")
    assert released.status_code == 200 and released.json()["is_active"] is False
    assert LegalHold.objects.get().released_at == NOW
    again = client.post(f"/api/v1/legal-holds/{hold_id}/release/")
    assert again.status_code == 409 and again.json()["code"] == "already_released"


def test_legal_hold_create_validation(api_client_for, superadmin):
    response = api_client_for(superadmin).post(
        "/api/v1/legal-holds/", {"scope": "search", "reason": "x"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_hold" and "sender" in response.json()["fields"]


def test_domain_admin_views_holds_on_own_domain_but_cannot_manage(
    api_client_for, superadmin, admin_a, domain_a, domain_b, mailbox_a
):
    own = services.legal_hold_create(actor=superadmin, scope="domain", domain=domain_a, reason="A")
    other = services.legal_hold_create(actor=superadmin, scope="domain", domain=domain_b, reason="B")
    client = api_client_for(admin_a)

    assert [row["id"] for row in client.get("/api/v1/legal-holds/").json()["results"]] == [own.pk]
    assert client.get(f"/api/v1/legal-holds/{other.pk}/").status_code == 404
    assert client.post(f"/api/v1/legal-holds/{own.pk}/release/").status_code == 403
    create = client.post(
        "/api/v1/legal-holds/", {"scope": "mailbox", "mailbox_id": mailbox_a.pk, "reason": "x"}, format="json"
    )
    assert create.status_code == 403
    assert LegalHold.objects.filter(released_at__isnull=True).count() == 2


def test_legal_hold_list_query_count(
    api_client_for, superadmin, domain_a, mailbox_a, django_assert_max_num_queries
):
    for n in range(5):
        services.legal_hold_create(actor=superadmin, scope="mailbox", mailbox=mailbox_a, reason=f"r{n}")
    client = api_client_for(superadmin)
    with django_assert_max_num_queries(8):
        response = client.get("/api/v1/legal-holds/")
    assert response.json()["count"] == 5
