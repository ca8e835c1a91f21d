from __future__ import annotations

import csv
import io
import json

import pytest
from django.db import connection

from apps.compliance import services
from apps.compliance.models import AuditEvent

pytestmark = pytest.mark.django_db

VERIFY = "/api/v1/audit-events/verify/"
LIST = "/api/v1/audit-events/"
EXPORT = "/api/v1/audit-events/export/"


def _body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_verify_endpoint_reports_an_intact_then_a_tampered_chain(superadmin, api_client_for):
    client = api_client_for(superadmin)
    event = services.audit_record(action="test.one")
    ok = client.get(VERIFY).json()
    assert ok["ok"] is True and ok["first_broken_id"] is None and ok["checked"] >= 1

    with connection.cursor() as cursor:
        cursor.execute("UPDATE compliance_auditevent SET action=%s WHERE id=%s", ["test.forged", event.pk])
    broken = client.get(VERIFY).json()

    assert broken["ok"] is False
    assert broken["first_broken_id"] == event.pk
    assert broken["reason"]


def test_verify_endpoint_is_for_superadmins_only(admin_a, plain_user, api_client_for):
    assert api_client_for(admin_a).get(VERIFY).status_code == 403
    assert api_client_for(plain_user).get(VERIFY).status_code == 403
    assert api_client_for().get(VERIFY).status_code == 401


def test_list_filters_by_action_actor_target_and_date(superadmin, admin_a, api_client_for):
    client = api_client_for(superadmin)
    services.audit_record(action="mailbox.create", actor=admin_a, target=("mailbox", 7, "x@alpha.test"))
    services.audit_record(action="mailbox.delete", actor=superadmin, target=("mailbox", 8, "y@alpha.test"))
    services.audit_record(action="auth.login_ok", actor=superadmin)

    def actions(**params) -> list[str]:
        return [
            row["action"]
            for row in client.get(LIST, params).json()["results"]
            if row["action"] != "auth.token_created"
        ]

    assert actions(action="mailbox.create") == ["mailbox.create"]
    assert actions(action="mailbox.") == ["mailbox.delete", "mailbox.create"]
    assert actions(actor=admin_a.pk) == ["mailbox.create"]
    assert actions(actor_email="ROOT@admin.test", action="mailbox.") == ["mailbox.delete"]
    assert actions(target_type="mailbox", target_id="8") == ["mailbox.delete"]
    assert actions(since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z") == []
    assert "mailbox.create" in actions(since="2000-01-01T00:00:00Z")


def test_domain_admin_sees_only_events_about_their_domains(domain_a, domain_b, admin_a, api_client_for):
    services.audit_record(action="domain.update", target=domain_a, domain_id=domain_a.pk)
    services.audit_record(action="domain.update", target=domain_b, domain_id=domain_b.pk)
    services.audit_record(action="user.create", target=("user", 1, "someone@else.test"))
    other = AuditEvent.objects.get(action="domain.update", target_id=str(domain_b.pk))

    client = api_client_for(admin_a)
    rows = client.get(LIST).json()["results"]

    assert [(row["action"], row["target_id"]) for row in rows] == [("domain.update", str(domain_a.pk))]
    assert client.get(f"{LIST}{other.pk}/").status_code == 404


def test_plain_users_cannot_read_the_audit_log(plain_user, api_client_for):
    services.audit_record(action="test.one")
    assert api_client_for(plain_user).get(LIST).status_code == 403


def test_export_streams_csv_and_json(superadmin, api_client_for):
    client = api_client_for(superadmin)
    services.audit_record(
        action="test.export", target=("thing", 1, "=cmd|' /C calc'!A0"), changes={"a": [1, 2]}
    )

    response = client.get(EXPORT, {"action": "test.export", "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(_body(response).decode())))
    assert [row["action"] for row in rows] == ["test.export"]
    assert rows[0]["target_display"].startswith("'=")  # no formula injection
    assert json.loads(rows[0]["changes"]) == {"a": [1, 2]}

    response = client.get(EXPORT, {"action": "test.export", "format": "json"})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    data = json.loads(_body(response))
    assert [row["action"] for row in data] == ["test.export"]
    assert data[0]["hash"] == AuditEvent.objects.get(action="test.export").hash


def test_export_is_scoped_like_the_list(domain_a, domain_b, admin_a, api_client_for):
    services.audit_record(action="domain.update", target=domain_a, domain_id=domain_a.pk)
    services.audit_record(action="domain.update", target=domain_b, domain_id=domain_b.pk)

    data = json.loads(_body(api_client_for(admin_a).get(EXPORT, {"format": "json"})))

    assert [row["target_id"] for row in data] == [str(domain_a.pk)]


def test_audit_page_lists_events_and_verifies(client, superadmin):
    services.audit_record(action="test.page", target=("thing", 1, "thing one"))
    client.force_login(superadmin)

    page = client.get("/compliance/audit/", {"action": "test.page"})
    assert page.status_code == 200
    assert b"test.page" in page.content and b"Verify now" in page.content

    partial = client.post("/compliance/audit/verify/", HTTP_HX_REQUEST="true")
    assert b"Intact" in partial.content and b"<html" not in partial.content


def test_audit_page_is_hidden_from_domain_admins(client, admin_a):
    client.force_login(admin_a)
    assert client.get("/compliance/audit/").status_code == 404
