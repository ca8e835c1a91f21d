"""Every successful write through the API leaves an audit event naming its actor and target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from apps.accounts.services import api_token_create
from apps.compliance.models import AuditEvent
from apps.relay import services as relay_services
from apps.relay.models import TransportRule
from tests.accounts.test_sso import _provider
from tests.factories import AliasFactory, UserFactory
from tests.relay.test_queue_admin import enqueue

pytestmark = pytest.mark.django_db

PASSWORD = "a-Long-passw0rd!"


@dataclass
class World:
    superadmin: object
    domain_a: object
    mailbox_a: object


@dataclass
class Case:
    method: str
    url: Callable[[World], tuple[str, dict | None, tuple[str, str | None]]]
    action: str


def _dkim(world: World, *, active: bool = True):
    key = relay_services.dkim_key_create(actor=world.superadmin, domain=world.domain_a)
    if not active:
        key = relay_services.dkim_key_create(actor=world.superadmin, domain=world.domain_a)
    return key


def _rule() -> TransportRule:
    return relay_services.transport_rule_create(domain="partner.test", host="relay.partner.test")


def _held_item(world: World):
    item = enqueue(submitted_by=world.mailbox_a)
    return relay_services.queue_item_hold(actor=world.superadmin, item=item)


CASES = {
    "domain create": Case(
        "post", lambda w: ("/api/v1/domains/", {"name": "new.test"}, ("domain", None)), "domain.create"
    ),
    "domain update": Case(
        "patch",
        lambda w: (f"/api/v1/domains/{w.domain_a.pk}/", {"description": "x"}, ("domain", w.domain_a.pk)),
        "domain.update",
    ),
    "domain delete": Case(
        "delete",
        lambda w: (f"/api/v1/domains/{w.domain_a.pk}/", None, ("domain", w.domain_a.pk)),
        "domain.delete",
    ),
    "mailbox create": Case(
        "post",
        lambda w: (
            "/api/v1/mailboxes/",
            {"address": "carol@alpha.test", "password": PASSWORD},
            ("mailbox", None),
        ),
        "mailbox.create",
    ),
    "mailbox update": Case(
        "patch",
        lambda w: (
            f"/api/v1/mailboxes/{w.mailbox_a.pk}/",
            {"quota_bytes": 10_000_000},
            ("mailbox", w.mailbox_a.pk),
        ),
        "mailbox.update",
    ),
    "mailbox disable": Case(
        "patch",
        lambda w: (f"/api/v1/mailboxes/{w.mailbox_a.pk}/", {"is_active": False}, ("mailbox", w.mailbox_a.pk)),
        "mailbox.disable",
    ),
    "mailbox delete": Case(
        "delete",
        lambda w: (f"/api/v1/mailboxes/{w.mailbox_a.pk}/", None, ("mailbox", w.mailbox_a.pk)),
        "mailbox.delete",
    ),
    "alias create": Case(
        "post",
        lambda w: (
            "/api/v1/aliases/",
            {"address": "team@alpha.test", "destinations": ["alice@alpha.test"]},
            ("alias", None),
        ),
        "alias.create",
    ),
    "alias update": Case(
        "patch",
        lambda w: (lambda a: (f"/api/v1/aliases/{a.pk}/", {"description": "y"}, ("alias", a.pk)))(
            AliasFactory(domain=w.domain_a, destinations=["alice@alpha.test"])
        ),
        "alias.update",
    ),
    "alias delete": Case(
        "delete",
        lambda w: (lambda a: (f"/api/v1/aliases/{a.pk}/", None, ("alias", a.pk)))(
            AliasFactory(domain=w.domain_a, destinations=["alice@alpha.test"])
        ),
        "alias.delete",
    ),
    "user create": Case(
        "post",
        lambda w: ("/api/v1/users/", {"email": "new@people.test", "password": PASSWORD}, ("user", None)),
        "user.create",
    ),
    "user update": Case(
        "patch",
        lambda w: (lambda u: (f"/api/v1/users/{u.pk}/", {"full_name": "New Name"}, ("user", u.pk)))(
            UserFactory()
        ),
        "user.update",
    ),
    "user delete": Case(
        "delete",
        lambda w: (lambda u: (f"/api/v1/users/{u.pk}/", None, ("user", u.pk)))(UserFactory()),
        "user.delete",
    ),
    "mfa reset": Case(
        "post",
        lambda w: (lambda u: (f"/api/v1/users/{u.pk}/mfa-reset/", None, ("user", u.pk)))(UserFactory()),
        "auth.mfa_reset",
    ),
    "token create": Case(
        "post",
        lambda w: ("/api/v1/auth/tokens/", {"name": "ci"}, ("user", w.superadmin.pk)),
        "auth.token_created",
    ),
    "token revoke": Case(
        "delete",
        lambda w: (
            f"/api/v1/auth/tokens/{api_token_create(user=w.superadmin, name='old').token.pk}/",
            None,
            ("user", w.superadmin.pk),
        ),
        "auth.token_revoked",
    ),
    "lockout clear": Case(
        "post",
        lambda w: ("/api/v1/lockouts/clear/", {"username": "who@people.test"}, ("user", "")),
        "auth.lockout_cleared",
    ),
    "dkim create": Case(
        "post",
        lambda w: ("/api/v1/dkim-keys/", {"domain": "alpha.test"}, ("dkimkey", None)),
        "dkim_key.create",
    ),
    "dkim activate": Case(
        "post",
        lambda w: (lambda k: (f"/api/v1/dkim-keys/{k.pk}/activate/", None, ("dkimkey", k.pk)))(
            _dkim(w, active=False)
        ),
        "dkim_key.activate",
    ),
    "dkim rotate": Case(
        "post",
        lambda w: ("/api/v1/dkim-keys/rotate/", {"domain": "alpha.test"}, ("dkimkey", None)),
        "dkim_key.rotate",
    ),
    "dkim delete": Case(
        "delete",
        lambda w: (lambda k: (f"/api/v1/dkim-keys/{k.pk}/", None, ("dkimkey", k.pk)))(_dkim(w)),
        "dkim_key.delete",
    ),
    "transport create": Case(
        "post",
        lambda w: (
            "/api/v1/transport-rules/",
            {"domain": "partner.test", "host": "relay.partner.test"},
            ("transportrule", None),
        ),
        "transport_rule.create",
    ),
    "transport update": Case(
        "patch",
        lambda w: (lambda r: (f"/api/v1/transport-rules/{r.pk}/", {"port": 587}, ("transportrule", r.pk)))(
            _rule()
        ),
        "transport_rule.update",
    ),
    "transport delete": Case(
        "delete",
        lambda w: (lambda r: (f"/api/v1/transport-rules/{r.pk}/", None, ("transportrule", r.pk)))(_rule()),
        "transport_rule.delete",
    ),
    "app password create": Case(
        "post",
        lambda w: (
            "/api/v1/app-passwords/",
            {"mailbox": "alice@alpha.test", "name": "Laptop"},
            ("apppassword", None),
        ),
        "app_password.create",
    ),
    "app password revoke": Case(
        "delete",
        lambda w: (lambda p: (f"/api/v1/app-passwords/{p.pk}/", None, ("apppassword", p.pk)))(
            relay_services.app_password_create(
                actor=w.superadmin, mailbox=w.mailbox_a, name="Phone"
            ).app_password
        ),
        "app_password.revoke",
    ),
    "queue retry": Case(
        "post",
        lambda w: (lambda i: (f"/api/v1/queue/{i.pk}/retry/", None, ("queueitem", i.pk)))(
            enqueue(submitted_by=w.mailbox_a)
        ),
        "queue.retry",
    ),
    "queue hold": Case(
        "post",
        lambda w: (lambda i: (f"/api/v1/queue/{i.pk}/hold/", None, ("queueitem", i.pk)))(
            enqueue(submitted_by=w.mailbox_a)
        ),
        "queue.hold",
    ),
    "queue release": Case(
        "post",
        lambda w: (lambda i: (f"/api/v1/queue/{i.pk}/release/", None, ("queueitem", i.pk)))(_held_item(w)),
        "queue.release",
    ),
    "queue delete": Case(
        "delete",
        lambda w: (lambda i: (f"/api/v1/queue/{i.pk}/", None, ("queueitem", i.pk)))(
            enqueue(submitted_by=w.mailbox_a)
        ),
        "queue.delete",
    ),
    "sso provider create": Case(
        "post",
        lambda w: (
            "/api/v1/sso-providers/",
            {"slug": "corp2", "name": "Corp", "kind": "google", "client_id": "a", "client_secret": "b"},
            ("ssoprovider", None),
        ),
        "sso_provider.create",
    ),
    "sso provider update": Case(
        "patch",
        lambda w: (lambda p: (f"/api/v1/sso-providers/{p.pk}/", {"name": "Renamed"}, ("ssoprovider", p.pk)))(
            _provider()
        ),
        "sso_provider.update",
    ),
    "sso provider delete": Case(
        "delete",
        lambda w: (lambda p: (f"/api/v1/sso-providers/{p.pk}/", None, ("ssoprovider", p.pk)))(_provider()),
        "sso_provider.delete",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_api_write_leaves_an_audit_event(case, superadmin, domain_a, mailbox_a, api_client_for):
    world = World(superadmin=superadmin, domain_a=domain_a, mailbox_a=mailbox_a)
    url, payload, (target_type, target_id) = case.url(world)
    client = api_client_for(superadmin)
    since = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    response = getattr(client, case.method)(url, payload, format="json")

    assert response.status_code < 300, response.content
    event = AuditEvent.objects.filter(id__gt=since, action=case.action).order_by("-id").first()
    assert event is not None, list(AuditEvent.objects.filter(id__gt=since).values_list("action", flat=True))
    assert event.actor_id == superadmin.pk
    assert event.target_type == target_type
    if target_id is not None:
        assert event.target_id == str(target_id)
    else:
        assert event.target_id
