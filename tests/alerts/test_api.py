from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from apps.alerts import services
from apps.alerts.models import Alert
from tests.factories import DomainAdminFactory

pytestmark = pytest.mark.django_db

ALERTS_URL = "/api/v1/alerts/"


@pytest.fixture
def alerts(domain_a, domain_b):
    """One global alert and one for each domain."""
    return {
        "global": services.emit("system.disk", "error", "Disk almost full."),
        "a": services.emit("mailbox.full", "warning", "alice is full.", domain_id=domain_a.pk),
        "b": services.emit("mailbox.full", "warning", "bob is full.", domain_id=domain_b.pk),
    }


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "detail", "fields"}
    assert body["code"] == code
    return body


def list_ids(client, **params):
    response = client.get(ALERTS_URL, params)
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_alerts_list_shows_everything_to_superadmin(api_client_for, superadmin, alerts):
    response = api_client_for(superadmin).get(ALERTS_URL)

    assert response.status_code == 200
    rows = response.json()["results"]
    assert {row["id"] for row in rows} == {alert.pk for alert in alerts.values()}
    row = next(row for row in rows if row["id"] == alerts["a"].pk)
    assert set(row) == {
        "id",
        "kind",
        "level",
        "message",
        "data",
        "domain_id",
        "created_at",
        "acknowledged_at",
    }
    assert row["domain_id"] == alerts["a"].domain_id
    assert row["message"] == "alice is full."


def test_alerts_list_is_newest_first(api_client_for, superadmin, alerts):
    assert list_ids(api_client_for(superadmin)) == [alerts["b"].pk, alerts["a"].pk, alerts["global"].pk]


def test_alerts_list_for_domain_admin_shows_only_own_domains(api_client_for, admin_a, admin_b, alerts):
    assert list_ids(api_client_for(admin_a)) == [alerts["a"].pk]
    assert list_ids(api_client_for(admin_b)) == [alerts["b"].pk]


def test_alerts_list_for_domain_admin_without_domains_is_empty(api_client_for, alerts):
    assert list_ids(api_client_for(DomainAdminFactory())) == []


def test_alerts_list_for_domain_admin_covers_every_administered_domain(
    api_client_for, admin_a, domain_b, alerts
):
    domain_b.admins.add(admin_a)

    assert set(list_ids(api_client_for(admin_a))) == {alerts["a"].pk, alerts["b"].pk}


def test_alerts_are_forbidden_for_mailbox_user(api_client_for, user_a, alerts):
    client = api_client_for(user_a)

    assert_error(client.get(ALERTS_URL), 403, "permission_denied")
    assert_error(client.get(f"{ALERTS_URL}{alerts['a'].pk}/"), 403, "permission_denied")
    assert_error(client.post(f"{ALERTS_URL}{alerts['a'].pk}/acknowledge/"), 403, "permission_denied")
    assert Alert.objects.get(pk=alerts["a"].pk).acknowledged_at is None


def test_alerts_refuse_unauthenticated(alerts):
    response = APIClient().get(ALERTS_URL)

    assert_error(response, 401, "not_authenticated")
    assert "Location" not in response.headers


@pytest.mark.parametrize("which", ["b", "global"])
def test_alerts_retrieve_outside_domain_admin_scope_is_404(api_client_for, admin_a, alerts, which):
    response = api_client_for(admin_a).get(f"{ALERTS_URL}{alerts[which].pk}/")

    assert_error(response, 404, "not_found")


def test_alerts_retrieve_in_scope(api_client_for, admin_a, alerts):
    response = api_client_for(admin_a).get(f"{ALERTS_URL}{alerts['a'].pk}/")

    assert response.status_code == 200
    assert response.json()["kind"] == "mailbox.full"


def test_alerts_acknowledge_sets_time_once(api_client_for, admin_a, alerts):
    client = api_client_for(admin_a)
    url = f"{ALERTS_URL}{alerts['a'].pk}/acknowledge/"

    moment = timezone.now().replace(microsecond=0) + timedelta(days=1)

    with time_machine.travel(moment, tick=False) as traveller:
        first = client.post(url)
        traveller.shift(timedelta(hours=2))
        second = client.post(url)

    assert first.status_code == second.status_code == 200
    assert first.json()["acknowledged_at"] == second.json()["acknowledged_at"]
    assert parse_datetime(first.json()["acknowledged_at"]) == moment
    assert Alert.objects.get(pk=alerts["a"].pk).acknowledged_at == moment


@pytest.mark.parametrize("which", ["b", "global"])
def test_alerts_acknowledge_outside_scope_is_404(api_client_for, admin_a, alerts, which):
    response = api_client_for(admin_a).post(f"{ALERTS_URL}{alerts[which].pk}/acknowledge/")

    assert_error(response, 404, "not_found")
    assert Alert.objects.get(pk=alerts[which].pk).acknowledged_at is None


def test_alerts_are_read_only_apart_from_acknowledge(api_client_for, superadmin, alerts):
    client = api_client_for(superadmin)

    assert_error(
        client.post(ALERTS_URL, {"kind": "x", "level": "info", "message": "m"}, format="json"),
        405,
        "method_not_allowed",
    )
    assert_error(client.delete(f"{ALERTS_URL}{alerts['a'].pk}/"), 405, "method_not_allowed")
    assert Alert.objects.count() == 3


def test_alerts_list_filters(api_client_for, superadmin, domain_a, alerts):
    client = api_client_for(superadmin)
    services.alert_acknowledge(alert=alerts["b"])

    assert list_ids(client, level="error") == [alerts["global"].pk]
    assert list_ids(client, domain_id=domain_a.pk) == [alerts["a"].pk]
    assert list_ids(client, acknowledged="true") == [alerts["b"].pk]
    assert list_ids(client, acknowledged="false") == [alerts["a"].pk, alerts["global"].pk]
    assert list_ids(client, kind="system.disk") == [alerts["global"].pk]


def test_alerts_list_rejects_invalid_filter(api_client_for, superadmin, alerts):
    response = api_client_for(superadmin).get(ALERTS_URL, {"level": "apocalyptic"})

    body = assert_error(response, 400, "invalid")
    assert "level" in body["fields"]


@pytest.mark.parametrize("actor", ["superadmin", "admin_a"])
def test_alerts_list_query_count_does_not_grow_with_rows(
    api_client_for, django_assert_max_num_queries, request, domain_a, actor
):
    client = api_client_for(request.getfixturevalue(actor))
    for i in range(30):
        services.emit("x.many", "info", f"Alert {i}", domain_id=domain_a.pk if i % 2 else None)
    client.get(ALERTS_URL)  # warm up: last_used_at is written at most once a minute

    with django_assert_max_num_queries(4):
        response = client.get(ALERTS_URL)

    assert response.status_code == 200
    assert response.json()["count"] in {15, 30}
