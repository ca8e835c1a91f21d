"""The scoping funnel: what each role can see through visible_to() and the selectors."""

import pytest
from django.contrib.auth.models import AnonymousUser

from apps.core.exceptions import NotFoundError
from apps.mailboxes import selectors
from apps.mailboxes.models import Alias, Domain, Mailbox
from tests.factories import AliasFactory, DomainAdminFactory, DomainFactory, MailboxFactory, UserFactory

pytestmark = pytest.mark.django_db


def names(queryset, field="address") -> list[str]:
    return sorted(queryset.values_list(field, flat=True))


@pytest.fixture
def world(domain_a, domain_b, admin_a, admin_b, mailbox_a, mailbox_b):
    """Two tenants, each with a mailbox and aliases, plus one cross-domain alias."""
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test", used_bytes=100)
    MailboxFactory(domain=domain_b, local_part="off", address="off@beta.test", is_active=False, used_bytes=7)
    Mailbox.objects.filter(address="alice@alpha.test").update(used_bytes=1000)
    AliasFactory(
        domain=domain_a, local_part="team", address="team@alpha.test", destinations=["alice@alpha.test"]
    )
    AliasFactory(domain=domain_a, local_part="", address="@alpha.test", destinations=["carol@alpha.test"])
    AliasFactory(
        domain=domain_b, local_part="sales", address="sales@beta.test", destinations=["bob@beta.test"]
    )
    AliasFactory(
        domain=domain_b,
        local_part="fwd",
        address="fwd@beta.test",
        destinations=["bob@beta.test", "alice@alpha.test"],
    )
    AliasFactory(
        domain=domain_a, local_part="nested", address="nested@alpha.test", destinations=["team@alpha.test"]
    )
    DomainFactory(name="gamma.test")


ALL_DOMAINS = ["alpha.test", "beta.test", "gamma.test"]
ALL_MAILBOXES = ["alice@alpha.test", "bob@beta.test", "carol@alpha.test", "off@beta.test"]
ALL_ALIASES = ["@alpha.test", "fwd@beta.test", "nested@alpha.test", "sales@beta.test", "team@alpha.test"]


def test_visible_to_superadmin_sees_everything(world, superadmin):
    assert names(Domain.objects.visible_to(superadmin), "name") == ALL_DOMAINS
    assert names(Mailbox.objects.visible_to(superadmin)) == ALL_MAILBOXES
    assert names(Alias.objects.visible_to(superadmin)) == ALL_ALIASES


def test_visible_to_domain_admin_sees_only_own_domain(world, admin_a):
    assert names(Domain.objects.visible_to(admin_a), "name") == ["alpha.test"]
    assert names(Mailbox.objects.visible_to(admin_a)) == ["alice@alpha.test", "carol@alpha.test"]
    assert names(Alias.objects.visible_to(admin_a)) == ["@alpha.test", "nested@alpha.test", "team@alpha.test"]


def test_visible_to_domain_admin_of_several_domains_sees_each_once(world, admin_a, domain_b):
    domain_b.admins.add(admin_a)
    assert names(Domain.objects.visible_to(admin_a), "name") == ["alpha.test", "beta.test"]
    assert names(Mailbox.objects.visible_to(admin_a)) == ALL_MAILBOXES
    assert Alias.objects.visible_to(admin_a).count() == len(ALL_ALIASES)


def test_visible_to_domain_admin_without_domains_sees_nothing(world):
    lonely = DomainAdminFactory()
    assert not Domain.objects.visible_to(lonely).exists()
    assert not Mailbox.objects.visible_to(lonely).exists()
    assert not Alias.objects.visible_to(lonely).exists()


def test_visible_to_mailbox_user_sees_own_mailbox_domain_and_aliases_to_it(world, user_a):
    assert names(Domain.objects.visible_to(user_a), "name") == ["alpha.test"]
    assert names(Mailbox.objects.visible_to(user_a)) == ["alice@alpha.test"]
    # Direct deliveries only, from any domain; not the catch-all to carol nor nested aliases.
    assert names(Alias.objects.visible_to(user_a)) == ["fwd@beta.test", "team@alpha.test"]


def test_visible_to_mailbox_user_with_mailboxes_in_two_domains(world, domain_a, domain_b):
    owner = UserFactory(email="multi@people.test")
    for domain, local in ((domain_a, "m1"), (domain_a, "m2"), (domain_b, "m3")):
        MailboxFactory(domain=domain, local_part=local, address=f"{local}@{domain.name}", owner=owner)
    AliasFactory(
        domain=domain_a,
        local_part="both",
        address="both@alpha.test",
        destinations=["m1@alpha.test", "m2@alpha.test"],
    )
    domains = Domain.objects.visible_to(owner)
    assert list(domains.values_list("name", flat=True)) == ["alpha.test", "beta.test"]  # distinct
    assert names(Mailbox.objects.visible_to(owner)) == ["m1@alpha.test", "m2@alpha.test", "m3@beta.test"]
    assert list(Alias.objects.visible_to(owner).values_list("address", flat=True)) == ["both@alpha.test"]


def test_visible_to_user_without_mailboxes_sees_nothing(world, plain_user):
    assert not Domain.objects.visible_to(plain_user).exists()
    assert not Mailbox.objects.visible_to(plain_user).exists()
    assert not Alias.objects.visible_to(plain_user).exists()


@pytest.mark.parametrize("actor_fixture", ["superadmin", "admin_a", "user_a"])
def test_visible_to_inactive_user_sees_nothing(world, request, actor_fixture):
    actor = request.getfixturevalue(actor_fixture)
    actor.is_active = False
    actor.save()
    assert not Domain.objects.visible_to(actor).exists()
    assert not Domain.objects.manageable_by(actor).exists()
    assert not Mailbox.objects.visible_to(actor).exists()
    assert not Alias.objects.visible_to(actor).exists()
    assert selectors.overview_counts(actor=actor) == selectors.Overview(0, 0, 0, 0, 0)


def test_visible_to_anonymous_user_sees_nothing(world):
    anonymous = AnonymousUser()
    assert not Domain.objects.visible_to(anonymous).exists()
    assert not Mailbox.objects.visible_to(anonymous).exists()
    assert not Alias.objects.visible_to(anonymous).exists()


def test_manageable_by_per_role(world, superadmin, admin_a, user_a):
    assert names(Domain.objects.manageable_by(superadmin), "name") == ALL_DOMAINS
    assert names(Domain.objects.manageable_by(admin_a), "name") == ["alpha.test"]
    assert not Domain.objects.manageable_by(user_a).exists()
    assert names(selectors.domains_manageable(actor=admin_a), "name") == ["alpha.test"]


def test_domain_list_annotates_counts_and_admins(world, superadmin):
    rows = {d.name: d for d in selectors.domain_list(actor=superadmin)}
    assert (rows["alpha.test"].mailbox_count, rows["alpha.test"].alias_count) == (2, 3)
    assert (rows["beta.test"].mailbox_count, rows["beta.test"].alias_count) == (2, 2)
    assert (rows["gamma.test"].mailbox_count, rows["gamma.test"].alias_count) == (0, 0)
    assert [u.email for u in rows["alpha.test"].admins.all()] == ["admin@alpha.test"]


def test_domain_list_for_mailbox_user_has_no_duplicate_rows(world, domain_a, user_a):
    MailboxFactory(domain=domain_a, local_part="alice2", address="alice2@alpha.test", owner=user_a)
    rows = list(selectors.domain_list(actor=user_a))
    assert [d.name for d in rows] == ["alpha.test"]


@pytest.mark.parametrize(
    ("getter", "kwarg", "lookup"),
    [
        (selectors.domain_get, "domain_id", lambda: Domain.objects.get(name="beta.test").pk),
        (selectors.mailbox_get, "mailbox_id", lambda: Mailbox.objects.get(address="bob@beta.test").pk),
        (selectors.alias_get, "alias_id", lambda: Alias.objects.get(address="sales@beta.test").pk),
    ],
    ids=["domain", "mailbox", "alias"],
)
def test_get_selectors_hide_other_tenants_objects(world, admin_a, getter, kwarg, lookup):
    with pytest.raises(NotFoundError) as excinfo:
        getter(actor=admin_a, **{kwarg: lookup()})
    assert excinfo.value.code == "not_found"


@pytest.mark.parametrize("bad_id", ["abc", None, "", 999_999])
@pytest.mark.parametrize(
    ("getter", "kwarg"),
    [
        (selectors.domain_get, "domain_id"),
        (selectors.mailbox_get, "mailbox_id"),
        (selectors.alias_get, "alias_id"),
    ],
    ids=["domain", "mailbox", "alias"],
)
def test_get_selectors_treat_bad_ids_as_not_found(world, superadmin, getter, kwarg, bad_id):
    with pytest.raises(NotFoundError):
        getter(actor=superadmin, **{kwarg: bad_id})


def test_get_selectors_return_in_scope_objects(world, admin_a, domain_a, mailbox_a):
    assert selectors.domain_get(actor=admin_a, domain_id=str(domain_a.pk)).name == "alpha.test"
    assert selectors.mailbox_get(actor=admin_a, mailbox_id=mailbox_a.pk).address == "alice@alpha.test"
    team = Alias.objects.get(address="team@alpha.test")
    fetched = selectors.alias_get(actor=admin_a, alias_id=team.pk)
    assert [d.address for d in fetched.destinations.all()] == ["alice@alpha.test"]


def test_domain_is_visible_per_role(world, admin_a, domain_a, domain_b):
    assert selectors.domain_is_visible(actor=admin_a, domain_id=domain_a.pk) is True
    assert selectors.domain_is_visible(actor=admin_a, domain_id=domain_b.pk) is False


def test_overview_counts_for_superadmin(world, superadmin):
    assert selectors.overview_counts(actor=superadmin) == selectors.Overview(
        domains=3, mailboxes=4, mailboxes_disabled=1, aliases=5, quota_used_bytes=1107
    )


def test_overview_counts_for_domain_admins_are_scoped(world, admin_a, admin_b):
    assert selectors.overview_counts(actor=admin_a) == selectors.Overview(
        domains=1, mailboxes=2, mailboxes_disabled=0, aliases=3, quota_used_bytes=1100
    )
    assert selectors.overview_counts(actor=admin_b) == selectors.Overview(
        domains=1, mailboxes=2, mailboxes_disabled=1, aliases=2, quota_used_bytes=7
    )


def test_overview_counts_for_mailbox_user_are_own(world, user_a):
    assert selectors.overview_counts(actor=user_a) == selectors.Overview(
        domains=1, mailboxes=1, mailboxes_disabled=0, aliases=2, quota_used_bytes=1000
    )


def test_domain_list_is_ordered_by_name_despite_annotations(superadmin):
    for name in ("zulu.test", "mike.test", "alpha.test", "kilo.test"):
        DomainFactory(name=name)
    queryset = selectors.domain_list(actor=superadmin)
    assert queryset.ordered
    assert [d.name for d in queryset] == ["alpha.test", "kilo.test", "mike.test", "zulu.test"]
