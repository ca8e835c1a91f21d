from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone

from apps.accounts.services import ClientInfo
from apps.compliance import services
from apps.compliance.models import AuditEvent
from apps.core.audit import audit
from tests.factories import SuperadminFactory

pytestmark = pytest.mark.django_db


def _record(n: int = 3, **kwargs) -> list[AuditEvent]:
    return [
        services.audit_record(action=f"test.event{i}", target=("thing", i, f"thing {i}"), **kwargs)
        for i in range(n)
    ]


def test_audit_record_links_each_event_to_the_one_before():
    first, second, third = _record(3)

    assert first.prev_hash == services.GENESIS_HASH
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert len({first.hash, second.hash, third.hash}) == 3


def test_audit_verify_is_ok_on_an_intact_chain():
    _record(5)

    result = services.audit_verify(batch=2)  # crosses batch boundaries

    assert result == services.VerifyResult(ok=True, checked=5)


def test_audit_verify_is_ok_on_an_empty_log():
    assert services.audit_verify() == services.VerifyResult(ok=True, checked=0)


def test_audit_verify_reports_a_row_altered_in_the_database():
    events = _record(4)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE compliance_auditevent SET action=%s WHERE id=%s", ["test.forged", events[2].pk]
        )

    result = services.audit_verify(batch=2)

    assert not result.ok
    assert result.first_broken_id == events[2].pk
    assert "content" in result.reason


def test_audit_verify_reports_a_row_removed_from_the_middle():
    events = _record(4)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM compliance_auditevent WHERE id=%s", [events[1].pk])

    result = services.audit_verify()

    assert not result.ok
    assert result.first_broken_id == events[2].pk
    assert "link" in result.reason


def test_audit_verify_reports_a_removed_head_without_a_retention_record():
    events = _record(3)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM compliance_auditevent WHERE id=%s", [events[0].pk])

    result = services.audit_verify()

    assert not result.ok
    assert result.first_broken_id == events[1].pk


def test_audit_record_takes_client_and_request_id_from_the_request():
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.7", HTTP_USER_AGENT="curl/8")
    request.request_id = "req-123"
    actor = SuperadminFactory(email="boss@admin.test")

    event = services.audit_record(action="test.request", actor=actor, request=request)

    assert (event.ip, event.user_agent, event.request_id) == ("192.0.2.7", "curl/8", "req-123")
    assert (event.actor_id, event.actor_display, event.actor_role) == (
        actor.pk,
        "boss@admin.test",
        "superadmin",
    )
    assert services.subject_key("boss@admin.test") in event.subject_keys


def test_audit_record_redacts_secrets_at_any_depth():
    event = services.audit_record(
        action="test.secret",
        changes={"password": ["old", "new"], "quota_bytes": [1, 2], "nested": {"api_token": "t", "ok": 1}},
        private_key="-----BEGIN",
        token_id=7,
    )

    event.refresh_from_db()
    assert event.changes["password"] == "[redacted]"
    assert event.changes["quota_bytes"] == [1, 2]
    assert event.changes["nested"] == {"api_token": "[redacted]", "ok": 1}
    assert event.changes["context"] == {"private_key": "[redacted]", "token_id": 7}
    assert services.audit_verify().ok


def test_audit_diff_lists_changed_fields_only():
    assert services.audit_diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b": [2, 3], "c": [None, 4]}


def test_audit_pseudonymise_removes_the_identity_and_keeps_the_chain_valid():
    alice = SuperadminFactory(email="alice@alpha.test")
    client = ClientInfo(ip="198.51.100.9", user_agent="Firefox")
    by_alice = services.audit_record(action="test.by", actor=alice, client=client)
    about_alice = services.audit_record(action="test.about", target=("user", alice.pk, "alice@alpha.test"))
    other = services.audit_record(action="test.other", target=("user", 99, "bob@beta.test"), client=client)

    changed = services.audit_pseudonymise("Alice@Alpha.test")

    assert changed == 2
    key = services.subject_key("alice@alpha.test")
    by_alice.refresh_from_db()
    about_alice.refresh_from_db()
    other.refresh_from_db()
    assert by_alice.actor_display == f"pseudonym:{key}"
    assert by_alice.ip.startswith("pseudonym:") and by_alice.user_agent.startswith("pseudonym:")
    assert by_alice.pseudonymised_at is not None
    assert about_alice.target_display == f"pseudonym:{key}"
    assert other.target_display == "bob@beta.test" and other.ip == "198.51.100.9"
    assert not AuditEvent.objects.filter(actor_display__icontains="alice").exists()
    assert services.audit_verify().ok
    assert services.audit_pseudonymise("alice@alpha.test") == 0


def test_audit_prune_keeps_the_chain_verifiable():
    old = _record(3)
    AuditEvent.objects.filter(pk__in=[event.pk for event in old]).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    # Timestamps are hashed: re-seal the old rows as if they had been written then.
    _reseal_all()
    last_old_hash = AuditEvent.objects.get(pk=old[-1].pk).hash
    recent = _record(2)

    deleted = services.audit_prune(older_than_days=30)

    assert deleted == 3
    remaining = list(AuditEvent.objects.order_by("id"))
    assert [event.pk for event in remaining[:2]] == [event.pk for event in recent]
    assert remaining[-1].action == "audit.prune"
    assert remaining[-1].changes["context"]["anchor_hash"] == last_old_hash
    assert services.audit_verify().ok
    assert services.audit_prune(older_than_days=30) == 0


def test_audit_prune_of_everything_leaves_a_verifiable_anchor():
    _record(2)
    AuditEvent.objects.update(created_at=timezone.now() - timedelta(days=40))
    _reseal_all()

    assert services.audit_prune(older_than_days=30) == 2

    assert AuditEvent.objects.get().action == "audit.prune"
    assert services.audit_verify() == services.VerifyResult(ok=True, checked=1)


def _reseal_all() -> None:
    from apps.compliance.services.audit import _canonical, _chain_hash, _sha256

    prev = services.GENESIS_HASH
    for event in AuditEvent.objects.order_by("id"):
        row = {
            f: getattr(event, f)
            for f in (
                "created_at",
                "actor_role",
                "action",
                "target_type",
                "target_id",
                "changes",
                "request_id",
                "subject_keys",
                "actor_display",
                "target_display",
                "ip",
                "user_agent",
            )
        }
        event.content_hash = _sha256(_canonical(row))
        event.prev_hash = prev
        event.hash = prev = _chain_hash(prev, event.content_hash)
        event.save()


def test_core_audit_indirection_reaches_the_recorder():
    event = audit("test.core", target=("domain", 5, "alpha.test"), domain_id=5)

    assert isinstance(event, AuditEvent)
    assert event.changes == {"context": {"domain_id": 5}}


def test_audit_verify_command_exit_codes(capsys):
    events = _record(2)
    call_command("audit_verify")
    assert "2 events checked" in capsys.readouterr().out

    with connection.cursor() as cursor:
        cursor.execute("UPDATE compliance_auditevent SET action=%s WHERE id=%s", ["x", events[1].pk])
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify")
    assert excinfo.value.returncode == 1
    assert str(events[1].pk) in str(excinfo.value)


@pytest.mark.django_db(transaction=True)
def test_audit_record_stays_linear_under_concurrent_appends():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers already")
    errors: list[Exception] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                services.audit_record(action=f"test.thread{n}.{i}")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert services.audit_verify() == services.VerifyResult(ok=True, checked=20)


def test_pseudonymising_an_idn_address_finds_its_display_form(db):
    from apps.compliance.models import AuditEvent
    from apps.compliance.services import audit_pseudonymise, audit_record, audit_verify

    audit_record(action="mailbox.create", target=("mailbox", "7", "u@bücher.test"))
    assert audit_pseudonymise("u@xn--bcher-kva.test") == 1
    assert "bücher" not in AuditEvent.objects.get().target_display
    assert audit_verify().ok
