"""Liveness, readiness and Prometheus metrics endpoints."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.core.models import WorkerHeartbeat
from tests.factories import AliasFactory, DomainFactory, MailboxFactory

pytestmark = pytest.mark.django_db


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_refuses_post(client):
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response["Allow"] == "GET"


def test_readyz_reports_every_check_ok(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "blob_store"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["database"]["detail"] == connection.vendor
    assert body["checks"]["broker"]["detail"] in {"memory", "redis", "rediss"}
    assert body["worker_heartbeat_age_seconds"] is None


def test_readyz_is_503_with_reason_when_blob_dir_unwritable(client):
    with override_settings(A3_BLOB_DIR=Path("/proc/a3nope")):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    blob = body["checks"]["blob_store"]
    assert blob["ok"] is False
    # A reason, but no server paths or error text for an unauthenticated caller.
    assert blob["detail"].startswith("not writable: ") and len(blob["detail"]) > len("not writable: ")
    assert "/proc" not in blob["detail"]

    assert body["checks"]["database"]["ok"] is True and body["checks"]["broker"]["ok"] is True


def test_readyz_leaves_no_probe_files_behind(client, settings):
    client.get("/readyz")
    assert not list(Path(settings.A3_BLOB_DIR).glob(".ready-*"))


def test_readyz_reports_worker_heartbeat_age(client):
    WorkerHeartbeat.objects.create(hostname="old", last_seen=timezone.now() - timedelta(minutes=10))
    WorkerHeartbeat.objects.create(hostname="fresh", last_seen=timezone.now() - timedelta(seconds=30))
    age = client.get("/readyz").json()["worker_heartbeat_age_seconds"]
    assert 29 <= age < 120


def hosted_objects(client) -> dict[tuple[str, str], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    return {
        (sample.labels["kind"], sample.labels["state"]): sample.value
        for sample in families["a3_hosted_objects"].samples
    }


def test_metrics_exposes_hosted_object_counts(client, domain_a, mailbox_a):
    DomainFactory(name="off.test", is_active=False)
    MailboxFactory(domain=domain_a, local_part="b", address="b@alpha.test")
    MailboxFactory(domain=domain_a, local_part="c", address="c@alpha.test", is_active=False)
    AliasFactory(domain=domain_a, local_part="t", address="t@alpha.test", destinations=["alice@alpha.test"])
    AliasFactory(
        domain=domain_a,
        local_part="u",
        address="u@alpha.test",
        destinations=["b@alpha.test"],
        is_active=False,
    )
    AliasFactory(
        domain=domain_a,
        local_part="v",
        address="v@alpha.test",
        destinations=["b@alpha.test"],
        is_active=False,
    )
    assert hosted_objects(client) == {
        ("domain", "active"): 1,
        ("domain", "disabled"): 1,
        ("mailbox", "active"): 2,
        ("mailbox", "disabled"): 1,
        ("alias", "active"): 1,
        ("alias", "disabled"): 2,
    }


def test_metrics_hosted_objects_are_zero_when_empty(client):
    assert set(hosted_objects(client).values()) == {0}
