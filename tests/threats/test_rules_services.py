"""Allow/block lists, content rules and domain policies: validation, scope and audit."""

from __future__ import annotations

import pytest

from apps.compliance.models import AuditEvent
from apps.core.exceptions import ApplicationError, ConflictError, PermissionDeniedError
from apps.threats.models import ContentRule, DomainPolicy, ListEntry
from apps.threats.policy import list_match, policy_for_domain
from apps.threats.services import rules
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db


def _last_event(action: str) -> AuditEvent | None:
    return AuditEvent.objects.filter(action=action).order_by("-id").first()


# --- Lists -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "value", "stored"),
    [
        ("sender", "  Spammer@Example.COM ", "spammer@example.com"),
        ("domain", "Bücher.Example", "xn--bcher-kva.example"),
        ("domain", "@example.org", "example.org"),
        ("ip", "192.0.2.77/24", "192.0.2.0/24"),
        ("ip", "2001:db8::1", "2001:db8::1/128"),
    ],
)
def test_list_entry_values_are_normalised(superadmin, match, value, stored):
    entry = rules.list_entry_create(actor=superadmin, kind="block", match=match, value=value)
    assert entry.value == stored
    assert entry.domain is None and entry.mailbox is None
    assert entry.created_by == superadmin


@pytest.mark.parametrize(
    ("match", "value"),
    [
        ("sender", "no-at-sign"),
        ("domain", "bad_domain..x"),
        ("ip", "300.1.1.1"),
        ("ip", "example.com"),
        ("ip", ""),
    ],
)
def test_list_entry_rejects_bad_values_with_field_message(superadmin, match, value):
    with pytest.raises(ApplicationError) as caught:
        rules.list_entry_create(actor=superadmin, kind="block", match=match, value=value)
    assert caught.value.status_code == 400
    assert caught.value.fields["value"]
    assert not ListEntry.objects.exists()


def test_list_entry_rejects_unknown_kind_and_both_scopes(superadmin, domain_a, mailbox_a):
    with pytest.raises(ApplicationError) as caught:
        rules.list_entry_create(actor=superadmin, kind="maybe", match="ip", value="192.0.2.1")
    assert "kind" in caught.value.fields
    with pytest.raises(ApplicationError) as caught:
        rules.list_entry_create(
            actor=superadmin, kind="allow", match="ip", value="192.0.2.1", domain=domain_a, mailbox=mailbox_a
        )
    assert "mailbox" in caught.value.fields


def test_duplicate_entry_is_a_conflict_in_every_scope(superadmin, domain_a):
    rules.list_entry_create(actor=superadmin, kind="block", match="sender", value="x@example.com")
    with pytest.raises(ConflictError):
        rules.list_entry_create(actor=superadmin, kind="block", match="sender", value="X@Example.com")
    rules.list_entry_create(actor=superadmin, kind="block", match="ip", value="192.0.2.0/24", domain=domain_a)
    with pytest.raises(ConflictError):
        rules.list_entry_create(
            actor=superadmin, kind="block", match="ip", value="192.0.2.9/24", domain=domain_a
        )
    # Same value, other kind or scope: not a duplicate.
    rules.list_entry_create(actor=superadmin, kind="allow", match="sender", value="x@example.com")
    rules.list_entry_create(
        actor=superadmin, kind="block", match="sender", value="x@example.com", domain=domain_a
    )
    assert ListEntry.objects.count() == 4


def test_server_wide_entries_are_for_superadmins_only(admin_a, user_a):
    for actor in (admin_a, user_a):
        with pytest.raises(PermissionDeniedError):
            rules.list_entry_create(actor=actor, kind="block", match="ip", value="192.0.2.1")
    assert not ListEntry.objects.exists()


def test_domain_entries_for_its_admins(admin_a, admin_b, user_a, domain_a):
    entry = rules.list_entry_create(
        actor=admin_a, kind="block", match="domain", value="spam.example", domain=domain_a, comment=" known "
    )
    assert entry.domain == domain_a and entry.comment == "known"
    for outsider in (admin_b, user_a):
        with pytest.raises(PermissionDeniedError):
            rules.list_entry_create(
                actor=outsider, kind="allow", match="domain", value="ok.example", domain=domain_a
            )
        with pytest.raises(PermissionDeniedError):
            rules.list_entry_delete(actor=outsider, entry=entry)
    assert ListEntry.objects.filter(pk=entry.pk).exists()


def test_mailbox_entries_for_owner_and_domain_admin(user_a, admin_a, admin_b, mailbox_a):
    own = rules.list_entry_create(
        actor=user_a, kind="allow", match="sender", value="friend@x.example", mailbox=mailbox_a
    )
    assert own.mailbox == mailbox_a
    by_admin = rules.list_entry_create(
        actor=admin_a, kind="block", match="sender", value="foe@x.example", mailbox=mailbox_a
    )
    with pytest.raises(PermissionDeniedError):
        rules.list_entry_create(
            actor=admin_b, kind="block", match="sender", value="z@x.example", mailbox=mailbox_a
        )
    other = MailboxFactory(domain=mailbox_a.domain, local_part="carol", address="carol@alpha.test")
    with pytest.raises(PermissionDeniedError):  # a user's list is their own
        rules.list_entry_create(
            actor=user_a, kind="block", match="sender", value="z@x.example", mailbox=other
        )
    rules.list_entry_delete(actor=user_a, entry=by_admin)
    assert list(ListEntry.objects.values_list("value", flat=True)) == ["friend@x.example"]


def test_list_entries_are_audited_and_take_effect(admin_a, domain_a, mailbox_a):
    entry = rules.list_entry_create(
        actor=admin_a, kind="block", match="ip", value="198.51.100.0/24", domain=domain_a
    )
    event = _last_event("threats.list_add")
    assert event.actor == admin_a
    assert event.target_id == str(entry.pk)
    assert event.changes["value"] == [None, "198.51.100.0/24"]
    assert event.changes["context"]["domain_id"] == domain_a.pk
    assert list_match(sender="a@b.example", peer_ip="198.51.100.9", domain_id=domain_a.pk) == entry

    rules.list_entry_delete(actor=admin_a, entry=entry)
    event = _last_event("threats.list_remove")
    assert event.changes["value"] == ["198.51.100.0/24", None]
    assert list_match(sender="a@b.example", peer_ip="198.51.100.9", domain_id=domain_a.pk) is None


# --- Content rules ---------------------------------------------------------------------------


def test_content_rule_create_validates_and_audits(admin_a, domain_a):
    rule = rules.content_rule_create(
        actor=admin_a,
        name=" Invoice lure ",
        target="header",
        header_name="X-Mailer:",
        pattern=r"(?i)mass\s+mailer",
        score=4.5,
        domain=domain_a,
    )
    rule.refresh_from_db()
    assert (rule.name, rule.header_name, rule.score, rule.is_active) == (
        "Invoice lure",
        "X-Mailer",
        4.5,
        True,
    )
    event = _last_event("threats.rule_create")
    assert event.target_id == str(rule.pk)
    assert event.changes["pattern"] == [None, r"(?i)mass\s+mailer"]


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"pattern": "(unclosed"}, "pattern"),
        ({"pattern": ""}, "pattern"),
        ({"target": "header", "header_name": ""}, "header_name"),
        ({"target": "header", "header_name": "Bad Name"}, "header_name"),
        ({"target": "footer"}, "target"),
        ({"score": float("nan")}, "score"),
        ({"score": 1e6}, "score"),
        ({"name": "  "}, "name"),
    ],
)
def test_content_rule_validation_errors_name_the_field(superadmin, fields, bad):
    values = {"name": "r", "target": "body", "pattern": "casino", "score": 3.0, **fields}
    with pytest.raises(ApplicationError) as caught:
        rules.content_rule_create(actor=superadmin, **values)
    assert bad in caught.value.fields
    assert not ContentRule.objects.exists()


def test_header_name_is_dropped_for_other_targets(superadmin):
    rule = rules.content_rule_create(
        actor=superadmin, name="r", target="subject", header_name="X-Foo", pattern="win", score=2
    )
    assert rule.header_name == ""


def test_content_rule_scope(superadmin, admin_a, admin_b, user_a, domain_a, domain_b):
    with pytest.raises(PermissionDeniedError):  # server-wide: superadmins only
        rules.content_rule_create(actor=admin_a, name="r", target="body", pattern="x", score=1)
    with pytest.raises(PermissionDeniedError):
        rules.content_rule_create(
            actor=user_a, name="r", target="body", pattern="x", score=1, domain=domain_a
        )
    rule = rules.content_rule_create(
        actor=admin_a, name="r", target="body", pattern="x", score=1, domain=domain_a
    )
    with pytest.raises(PermissionDeniedError):
        rules.content_rule_update(actor=admin_b, rule=rule, score=9)
    with pytest.raises(PermissionDeniedError):  # cannot move it out of their domains
        rules.content_rule_update(actor=admin_a, rule=rule, domain=domain_b)
    with pytest.raises(PermissionDeniedError):  # nor make it server-wide
        rules.content_rule_update(actor=admin_a, rule=rule, domain=None)
    with pytest.raises(PermissionDeniedError):
        rules.content_rule_delete(actor=admin_b, rule=rule)
    rule.refresh_from_db()
    assert (rule.domain_id, rule.score) == (domain_a.pk, 1)
    server_rule = rules.content_rule_create(actor=superadmin, name="s", target="body", pattern="y", score=-2)
    assert server_rule.domain is None and server_rule.score == -2


def test_content_rule_update_and_delete(admin_a, domain_a):
    rule = rules.content_rule_create(
        actor=admin_a, name="r", target="body", pattern="x", score=1, domain=domain_a
    )
    with pytest.raises(ApplicationError) as caught:
        rules.content_rule_update(actor=admin_a, rule=rule, pattern="[z-a]")
    assert "pattern" in caught.value.fields
    with pytest.raises(ApplicationError) as caught:
        rules.content_rule_update(actor=admin_a, rule=rule, colour="red")
    assert "colour" in caught.value.fields
    updated = rules.content_rule_update(actor=admin_a, rule=rule, pattern="lottery", score=7, is_active=False)
    updated.refresh_from_db()
    assert (updated.pattern, updated.score, updated.is_active) == ("lottery", 7, False)
    event = _last_event("threats.rule_update")
    assert event.changes["pattern"] == ["x", "lottery"]
    assert event.changes["is_active"] == [True, False]
    assert "name" not in event.changes

    rules.content_rule_delete(actor=admin_a, rule=updated)
    assert not ContentRule.objects.exists()
    assert _last_event("threats.rule_delete").changes["pattern"] == ["lottery", None]


# --- Domain policy ---------------------------------------------------------------------------


def test_policy_get_returns_server_defaults_without_a_row(domain_a, settings):
    settings.A3_SPAM_JUNK_SCORE = 7.5
    settings.A3_QUARANTINE_DAYS = 14
    policy = rules.domain_policy_get(domain=domain_a)
    assert policy.pk is None
    assert (policy.junk_score, policy.quarantine_days, policy.domain) == (7.5, 14, domain_a)
    assert not DomainPolicy.objects.exists()


def test_policy_update_creates_the_row_then_changes_it(admin_a, domain_a, settings):
    settings.A3_SPAM_REJECT_SCORE = 20.0
    policy = rules.domain_policy_update(actor=admin_a, domain=domain_a, junk_score=8, quarantine_days=60)
    assert policy.pk is not None
    stored = DomainPolicy.objects.get(domain=domain_a)
    assert (stored.junk_score, stored.quarantine_days, stored.reject_score) == (8, 60, 20.0)
    assert policy_for_domain(domain_a.pk).junk_score == 8
    event = _last_event("threats.policy_update")
    assert event.changes["junk_score"] == [None, 8.0]
    assert event.changes["context"]["domain_id"] == domain_a.pk

    rules.domain_policy_update(actor=admin_a, domain=domain_a, bayes_enabled=False, digest_default="weekly")
    stored.refresh_from_db()
    assert (stored.bayes_enabled, stored.digest_default, stored.junk_score) == (False, "weekly", 8)
    assert DomainPolicy.objects.count() == 1
    assert _last_event("threats.policy_update").changes == {
        "bayes_enabled": [True, False],
        "digest_default": ["daily", "weekly"],
        "context": {"domain_id": domain_a.pk},
    }


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"junk_score": 4}, "junk_score"),  # below the header threshold (5)
        ({"header_score": 11}, "junk_score"),
        ({"reject_score": 9}, "reject_score"),
        ({"quarantine_score": float("inf")}, "quarantine_score"),
        ({"quarantine_days": 0}, "quarantine_days"),
        ({"quarantine_days": 3651}, "quarantine_days"),
        ({"unscannable_action": "explode"}, "unscannable_action"),
        ({"scanner_failure": "sometimes"}, "scanner_failure"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_policy_validation(admin_a, domain_a, fields, bad):
    with pytest.raises(ApplicationError) as caught:
        rules.domain_policy_update(actor=admin_a, domain=domain_a, **fields)
    assert bad in caught.value.fields
    assert not DomainPolicy.objects.exists()


def test_policy_equal_thresholds_are_allowed(admin_a, domain_a):
    policy = rules.domain_policy_update(
        actor=admin_a, domain=domain_a, header_score=8, junk_score=8, quarantine_score=8, reject_score=8
    )
    assert policy.reject_score == 8


def test_policy_permissions(admin_b, user_a, domain_a):
    for actor in (admin_b, user_a):
        with pytest.raises(PermissionDeniedError):
            rules.domain_policy_update(actor=actor, domain=domain_a, junk_score=7)
    assert not DomainPolicy.objects.exists()
