import pytest
from django.contrib.auth.hashers import check_password

from apps.accounts.models import User
from apps.alerts.models import Alert
from apps.core.addresses import AddressError
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from apps.mailboxes import services
from apps.mailboxes.models import GIB, Alias, AliasDestination, Domain, Folder, Mailbox
from tests.factories import (
    TEST_PASSWORD,
    AliasFactory,
    DomainAdminFactory,
    DomainFactory,
    MailboxFactory,
    SuperadminFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a different long passphrase"


def destinations_of(address: str) -> list[str]:
    return list(
        AliasDestination.objects.filter(alias__address=address)
        .order_by("id")
        .values_list("address", flat=True)
    )


def alias(domain: Domain, local_part: str, *destinations: str) -> Alias:
    return AliasFactory(
        domain=domain,
        local_part=local_part,
        address=f"{local_part}@{domain.name}",
        destinations=list(destinations),
    )


# --- Domains ---------------------------------------------------------------------------


def test_domain_create_stores_idna_a_label(superadmin):
    domain = services.domain_create(actor=superadmin, name="Bücher.Example")
    assert domain.name == "xn--bcher-kva.example"
    assert domain.name_unicode == "bücher.example"


def test_domain_create_rejects_duplicate_in_any_spelling(superadmin):
    services.domain_create(actor=superadmin, name="xn--bcher-kva.example")
    with pytest.raises(ConflictError) as excinfo:
        services.domain_create(actor=superadmin, name="BÜCHER.example.")
    assert excinfo.value.code == "duplicate"
    assert Domain.objects.count() == 1


def test_domain_create_lowercases_and_strips_trailing_dot(superadmin):
    domain = services.domain_create(actor=superadmin, name="  Mail.Example.ORG. ")
    assert Domain.objects.get(pk=domain.pk).name == "mail.example.org"


@pytest.mark.parametrize(
    "name",
    [
        "-bad.com",
        "bad-.com",
        "a..b",
        "1.2.3.4",
        "",
        "   ",
        "under_score.com",
        "a" * 64 + ".com",
        "exa mple.com",
    ],
)
def test_domain_create_rejects_invalid_name(superadmin, name):
    with pytest.raises(AddressError) as excinfo:
        services.domain_create(actor=superadmin, name=name)
    assert excinfo.value.code == "invalid_address"
    assert excinfo.value.fields["name"]
    assert not Domain.objects.exists()


def test_domain_create_explains_ip_addresses(superadmin):
    with pytest.raises(AddressError) as excinfo:
        services.domain_create(actor=superadmin, name="10.0.0.1")
    assert "IP address" in excinfo.value.message


def test_domain_create_stores_limits_quota_and_admins(superadmin):
    admin = DomainAdminFactory(email="boss@people.test")
    domain = services.domain_create(
        actor=superadmin,
        name="limits.test",
        description="Test domain",
        max_mailboxes=3,
        max_aliases=4,
        default_quota_bytes=5 * GIB,
        admins=["Boss@People.test"],
    )
    domain.refresh_from_db()
    assert (domain.description, domain.max_mailboxes, domain.max_aliases) == ("Test domain", 3, 4)
    assert domain.default_quota_bytes == 5 * GIB
    assert list(domain.admins.all()) == [admin]


def test_domain_create_uses_one_gib_default_quota(superadmin):
    domain = services.domain_create(actor=superadmin, name="plain.test")
    assert Domain.objects.get(pk=domain.pk).default_quota_bytes == GIB


def test_domain_create_rejects_negative_default_quota(superadmin):
    with pytest.raises(ApplicationError) as excinfo:
        services.domain_create(actor=superadmin, name="neg.test", default_quota_bytes=-1)
    assert "default_quota_bytes" in excinfo.value.fields
    assert not Domain.objects.filter(name="neg.test").exists()


@pytest.mark.parametrize("actor_fixture", ["admin_a", "user_a"])
def test_domain_create_is_refused_for_non_superadmin(request, actor_fixture):
    actor = request.getfixturevalue(actor_fixture)
    with pytest.raises(PermissionDeniedError):
        services.domain_create(actor=actor, name="sneaky.test")
    assert not Domain.objects.filter(name="sneaky.test").exists()


def test_domain_create_with_invalid_admin_rolls_back(superadmin):
    with pytest.raises(ApplicationError):
        services.domain_create(actor=superadmin, name="rollback.test", admins=["nobody@people.test"])
    assert not Domain.objects.filter(name="rollback.test").exists()


def test_domain_update_changes_given_fields_only(superadmin, domain_a):
    services.domain_update(actor=superadmin, domain=domain_a, description="Alpha", max_mailboxes=7)
    domain_a.refresh_from_db()
    assert (domain_a.description, domain_a.max_mailboxes, domain_a.is_active) == ("Alpha", 7, True)
    assert domain_a.default_quota_bytes == GIB


def test_domain_update_disabling_emits_domain_disabled_alert(superadmin, domain_a):
    services.domain_update(actor=superadmin, domain=domain_a, is_active=False)
    assert Domain.objects.get(pk=domain_a.pk).is_active is False
    alert = Alert.objects.get(kind="mailboxes.domain_disabled")
    assert alert.level == "warning"
    assert alert.domain_id == domain_a.pk
    assert "alpha.test" in alert.message and superadmin.email in alert.message
    assert alert.data["domain"] == "alpha.test"


def test_domain_update_emits_no_alert_when_already_disabled(superadmin):
    domain = DomainFactory(name="off.test", is_active=False)
    services.domain_update(actor=superadmin, domain=domain, is_active=False, description="still off")
    assert Domain.objects.get(pk=domain.pk).description == "still off"
    assert not Alert.objects.filter(kind="mailboxes.domain_disabled").exists()


def test_domain_update_emits_no_alert_when_enabling(superadmin):
    domain = DomainFactory(name="off.test", is_active=False)
    services.domain_update(actor=superadmin, domain=domain, is_active=True)
    assert Domain.objects.get(pk=domain.pk).is_active is True
    assert not Alert.objects.filter(kind="mailboxes.domain_disabled").exists()


def test_domain_update_is_refused_for_its_own_domain_admin(admin_a, domain_a):
    with pytest.raises(PermissionDeniedError):
        services.domain_update(actor=admin_a, domain=domain_a, is_active=False)
    assert Domain.objects.get(pk=domain_a.pk).is_active is True
    assert not Alert.objects.filter(kind="mailboxes.domain_disabled").exists()


def test_domain_set_admins_replaces_the_admin_set(superadmin, domain_a, admin_a):
    other = DomainAdminFactory(email="other@people.test")
    services.domain_set_admins(actor=superadmin, domain=domain_a, admin_emails=[" OTHER@people.test "])
    assert list(domain_a.admins.all()) == [other]


def test_domain_set_admins_with_empty_list_removes_all(superadmin, domain_a, admin_a):
    services.domain_set_admins(actor=superadmin, domain=domain_a, admin_emails=[])
    assert not domain_a.admins.exists()


@pytest.mark.parametrize(
    ("make_user", "message"),
    [
        (lambda: UserFactory(email="candidate@people.test"), "is not a domain admin"),
        (lambda: SuperadminFactory(email="candidate@people.test"), "is not a domain admin"),
        (lambda: None, "No user"),
    ],
    ids=["mailbox-user", "superadmin", "unknown"],
)
def test_domain_set_admins_accepts_only_domain_admin_users(superadmin, domain_a, admin_a, make_user, message):
    make_user()
    with pytest.raises(ApplicationError) as excinfo:
        services.domain_set_admins(
            actor=superadmin, domain=domain_a, admin_emails=["admin@alpha.test", "candidate@people.test"]
        )
    assert any(message in text for text in excinfo.value.fields["admins"])
    assert list(domain_a.admins.all()) == [admin_a]


def test_domain_set_admins_is_refused_for_domain_admin(admin_a, domain_a):
    DomainAdminFactory(email="friend@people.test")
    with pytest.raises(PermissionDeniedError):
        services.domain_set_admins(actor=admin_a, domain=domain_a, admin_emails=["friend@people.test"])
    assert list(domain_a.admins.all()) == [admin_a]


def test_domain_delete_cascades_mailboxes_aliases_and_foreign_destinations(
    superadmin, domain_a, domain_b, mailbox_a, mailbox_b
):
    alias(domain_a, "team", "alice@alpha.test")
    alias(domain_b, "only-alice", "alice@alpha.test")
    alias(domain_b, "mixed", "alice@alpha.test", "bob@beta.test")
    alias(domain_b, "via-team", "team@alpha.test")
    alias(domain_b, "bobs", "bob@beta.test")

    report = services.domain_delete(actor=superadmin, domain=domain_a)

    assert not Domain.objects.filter(name="alpha.test").exists()
    assert not Mailbox.objects.filter(address__endswith="@alpha.test").exists()
    assert not Folder.objects.filter(mailbox__address="alice@alpha.test").exists()
    assert not User.objects.filter(email="alice@alpha.test").exists()
    assert sorted(Alias.objects.values_list("address", flat=True)) == ["bobs@beta.test", "mixed@beta.test"]
    assert destinations_of("mixed@beta.test") == ["bob@beta.test"]
    assert not AliasDestination.objects.filter(address__endswith="@alpha.test").exists()
    assert report.mailboxes == ["alice@alpha.test"]
    assert sorted(report.aliases) == ["only-alice@beta.test", "team@alpha.test", "via-team@beta.test"]
    # Destinations inside other domains' aliases; the deleted domain's own rows just go.
    assert sorted(report.destinations_removed) == [
        "mixed@beta.test -> alice@alpha.test",
        "only-alice@beta.test -> alice@alpha.test",
        "via-team@beta.test -> team@alpha.test",
    ]
    assert report.users == ["alice@alpha.test"]
    assert Mailbox.objects.filter(address="bob@beta.test").exists()


def test_domain_delete_keeps_owner_who_has_a_mailbox_elsewhere(superadmin, domain_a, domain_b):
    owner = UserFactory(email="multi@people.test")
    MailboxFactory(domain=domain_a, local_part="m", address="m@alpha.test", owner=owner)
    MailboxFactory(domain=domain_b, local_part="m", address="m@beta.test", owner=owner)
    report = services.domain_delete(actor=superadmin, domain=domain_a)
    assert report.users == []
    assert User.objects.filter(pk=owner.pk).exists()
    assert list(owner.mailboxes.values_list("address", flat=True)) == ["m@beta.test"]


def test_domain_delete_is_refused_for_domain_admin(admin_a, domain_a, mailbox_a):
    with pytest.raises(PermissionDeniedError):
        services.domain_delete(actor=admin_a, domain=domain_a)
    assert Domain.objects.filter(pk=domain_a.pk).exists()
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_domain_delete_of_empty_domain_reports_nothing(superadmin):
    domain = DomainFactory(name="empty.test")
    report = services.domain_delete(actor=superadmin, domain=domain)
    assert report == services.DeletionReport()
    assert not Domain.objects.filter(name="empty.test").exists()


# --- Mailbox create --------------------------------------------------------------------


def test_mailbox_create_makes_standard_folders_and_owner(superadmin, domain_a):
    mailbox = services.mailbox_create(actor=superadmin, address="Carol@Alpha.test", password=TEST_PASSWORD)
    assert mailbox.address == "carol@alpha.test"
    assert mailbox.owner.email == "carol@alpha.test"
    assert mailbox.owner.check_password(TEST_PASSWORD)
    assert mailbox.password != TEST_PASSWORD and mailbox.password.startswith(("md5$", "pbkdf2", "argon2"))
    names = list(Folder.objects.filter(mailbox=mailbox).values_list("name", flat=True))
    assert names == ["INBOX", "Sent", "Drafts", "Junk", "Trash"]


def test_mailbox_create_auto_owner_is_a_mailbox_user(admin_a, domain_a):
    mailbox = services.mailbox_create(actor=admin_a, address="dave@alpha.test", password=TEST_PASSWORD)
    owner = User.objects.get(email="dave@alpha.test")
    assert mailbox.owner == owner
    assert owner.role == User.Role.USER
    assert check_password(TEST_PASSWORD, Mailbox.objects.get(pk=mailbox.pk).password)


def test_mailbox_create_accepts_utf8_local_part(superadmin, domain_a):
    mailbox = services.mailbox_create(actor=superadmin, address="ÜNÏ@alpha.test", password=TEST_PASSWORD)
    stored = Mailbox.objects.get(pk=mailbox.pk)
    assert stored.address == "ünï@alpha.test"
    assert stored.local_part == "ünï"
    assert stored.owner.email == "ünï@alpha.test"


def test_mailbox_create_in_idn_domain_stores_a_label(superadmin):
    services.domain_create(actor=superadmin, name="bücher.example")
    mailbox = services.mailbox_create(actor=superadmin, address="anna@Bücher.example", password=TEST_PASSWORD)
    assert mailbox.address == "anna@xn--bcher-kva.example"
    assert mailbox.address_display == "anna@bücher.example"


@pytest.mark.parametrize(
    "address",
    [
        "no-at-sign",
        "@alpha.test",
        "two words@alpha.test",
        "a..b@alpha.test",
        ".dot@alpha.test",
        "x@-bad.test",
        "",
    ],
)
def test_mailbox_create_rejects_invalid_address(superadmin, domain_a, address):
    users_before = User.objects.count()
    with pytest.raises(AddressError) as excinfo:
        services.mailbox_create(actor=superadmin, address=address, password=TEST_PASSWORD)
    assert excinfo.value.fields["address"]
    assert not Mailbox.objects.exists()
    assert User.objects.count() == users_before


def test_mailbox_create_rejects_unknown_domain(superadmin):
    with pytest.raises(NotFoundError) as excinfo:
        services.mailbox_create(actor=superadmin, address="x@nowhere.test", password=TEST_PASSWORD)
    assert excinfo.value.code == "unknown_domain"
    assert "nowhere.test" in excinfo.value.fields["address"][0]
    assert not User.objects.filter(email="x@nowhere.test").exists()


def test_mailbox_create_rejects_duplicate_mailbox_in_any_case(superadmin, mailbox_a):
    with pytest.raises(ConflictError) as excinfo:
        services.mailbox_create(actor=superadmin, address="ALICE@alpha.test", password=TEST_PASSWORD)
    assert excinfo.value.code == "duplicate"
    assert excinfo.value.fields == {"address": ["Already used by a mailbox."]}
    assert Mailbox.objects.filter(address="alice@alpha.test").count() == 1


def test_mailbox_create_treats_unicode_normalisation_forms_as_duplicates(superadmin, domain_a):
    services.mailbox_create(actor=superadmin, address="\u00fcser@alpha.test", password=TEST_PASSWORD)
    with pytest.raises(ConflictError) as excinfo:
        services.mailbox_create(actor=superadmin, address="u\u0308ser@alpha.test", password=TEST_PASSWORD)
    assert excinfo.value.code == "duplicate"
    assert Mailbox.objects.count() == 1


def test_mailbox_create_rejects_local_part_over_64_bytes(superadmin, domain_a):
    with pytest.raises(AddressError) as excinfo:
        services.mailbox_create(actor=superadmin, address="ä" * 33 + "@alpha.test", password=TEST_PASSWORD)
    assert "64 bytes" in excinfo.value.message
    assert not Mailbox.objects.exists()


def test_mailbox_create_rejects_address_of_an_alias(superadmin, domain_a, mailbox_a):
    alias(domain_a, "info", "alice@alpha.test")
    with pytest.raises(ConflictError) as excinfo:
        services.mailbox_create(actor=superadmin, address="info@alpha.test", password=TEST_PASSWORD)
    assert excinfo.value.code == "duplicate"
    assert excinfo.value.fields == {"address": ["Already used by an alias."]}
    assert not Mailbox.objects.filter(address="info@alpha.test").exists()


def test_mailbox_create_refused_when_domain_limit_reached(superadmin):
    domain = DomainFactory(name="small.test", max_mailboxes=2)
    for name in ("one", "two"):
        services.mailbox_create(actor=superadmin, address=f"{name}@small.test", password=TEST_PASSWORD)
    with pytest.raises(ConflictError) as excinfo:
        services.mailbox_create(actor=superadmin, address="three@small.test", password=TEST_PASSWORD)
    assert excinfo.value.code == "domain_limit_reached"
    assert "2" in excinfo.value.message
    assert domain.mailboxes.count() == 2
    assert not User.objects.filter(email="three@small.test").exists()


def test_mailbox_create_uses_domain_default_quota(superadmin):
    DomainFactory(name="quota.test", default_quota_bytes=123 * 1024 * 1024)
    mailbox = services.mailbox_create(actor=superadmin, address="q@quota.test", password=TEST_PASSWORD)
    assert Mailbox.objects.get(pk=mailbox.pk).quota_bytes == 123 * 1024 * 1024


@pytest.mark.parametrize("quota", [0, 5 * GIB])
def test_mailbox_create_keeps_explicit_quota(superadmin, domain_a, quota):
    mailbox = services.mailbox_create(
        actor=superadmin, address="q@alpha.test", password=TEST_PASSWORD, quota_bytes=quota
    )
    assert Mailbox.objects.get(pk=mailbox.pk).quota_bytes == quota


def test_mailbox_create_rejects_negative_quota(superadmin, domain_a):
    with pytest.raises(ApplicationError) as excinfo:
        services.mailbox_create(
            actor=superadmin, address="q@alpha.test", password=TEST_PASSWORD, quota_bytes=-1
        )
    assert "quota_bytes" in excinfo.value.fields
    assert not Mailbox.objects.exists()


@pytest.mark.parametrize("password", ["short", "password1234", "123456789012345", ""])
def test_mailbox_create_rejects_weak_password(superadmin, domain_a, password):
    with pytest.raises(ApplicationError) as excinfo:
        services.mailbox_create(actor=superadmin, address="weak@alpha.test", password=password)
    assert excinfo.value.code == "weak_password"
    assert excinfo.value.fields["password"]
    assert not Mailbox.objects.exists()
    assert not User.objects.filter(email="weak@alpha.test").exists()


def test_mailbox_create_with_existing_owner_email(superadmin, domain_a, plain_user):
    users_before = User.objects.count()
    mailbox = services.mailbox_create(
        actor=superadmin,
        address="shared@alpha.test",
        password=TEST_PASSWORD,
        owner_email=plain_user.email.upper(),
    )
    assert Mailbox.objects.get(pk=mailbox.pk).owner == plain_user
    assert User.objects.count() == users_before


def test_mailbox_create_rejects_unknown_owner_email(superadmin, domain_a):
    with pytest.raises(ApplicationError) as excinfo:
        services.mailbox_create(
            actor=superadmin, address="x@alpha.test", password=TEST_PASSWORD, owner_email="ghost@people.test"
        )
    assert excinfo.value.code == "unknown_owner"
    assert excinfo.value.fields == {"owner": ["No such user that you may assign."]}
    assert not Mailbox.objects.exists()
    assert not User.objects.filter(email__in=["ghost@people.test", "x@alpha.test"]).exists()


def test_mailbox_create_reuses_existing_user_with_the_address(superadmin, domain_a, admin_a):
    mailbox = services.mailbox_create(actor=superadmin, address="admin@alpha.test", password=TEST_PASSWORD)
    assert mailbox.owner == admin_a
    assert User.objects.filter(email="admin@alpha.test").count() == 1


def test_mailbox_create_can_start_disabled(superadmin, domain_a):
    mailbox = services.mailbox_create(
        actor=superadmin,
        address="off@alpha.test",
        password=TEST_PASSWORD,
        is_active=False,
        display_name="Off",
    )
    stored = Mailbox.objects.get(pk=mailbox.pk)
    assert (stored.is_active, stored.display_name) == (False, "Off")


def test_domain_admin_cannot_create_mailbox_in_other_domain(admin_a, domain_b):
    with pytest.raises(NotFoundError):
        services.mailbox_create(actor=admin_a, address="x@beta.test", password=TEST_PASSWORD)
    assert not Mailbox.objects.filter(address="x@beta.test").exists()


def test_mailbox_create_by_mailbox_user_is_refused(user_a, domain_a):
    with pytest.raises(PermissionDeniedError):
        services.mailbox_create(actor=user_a, address="extra@alpha.test", password=TEST_PASSWORD)
    assert not Mailbox.objects.filter(address="extra@alpha.test").exists()


def test_folder_defaults_have_nonzero_uidvalidity_and_uidnext_one(superadmin, domain_a):
    mailbox = services.mailbox_create(actor=superadmin, address="imap@alpha.test", password=TEST_PASSWORD)
    folders = list(Folder.objects.filter(mailbox=mailbox))
    assert len(folders) == 5
    for folder in folders:
        assert 0 < folder.uidvalidity < 2**32
        assert folder.uidnext == 1
    assert {f.name: f.special_use for f in folders}["INBOX"] == Folder.SpecialUse.INBOX


# --- Mailbox update --------------------------------------------------------------------


def test_mailbox_update_owner_changes_own_password_and_display_name(user_a, mailbox_a):
    services.mailbox_update(actor=user_a, mailbox=mailbox_a, password=NEW_PASSWORD, display_name="Alice A.")
    stored = Mailbox.objects.get(pk=mailbox_a.pk)
    assert stored.display_name == "Alice A."
    assert check_password(NEW_PASSWORD, stored.password)
    assert not check_password(TEST_PASSWORD, stored.password)


@pytest.mark.parametrize("change", [{"quota_bytes": 1}, {"is_active": False}])
def test_mailbox_update_owner_cannot_change_quota_or_state(user_a, mailbox_a, change):
    with pytest.raises(PermissionDeniedError):
        services.mailbox_update(actor=user_a, mailbox=mailbox_a, display_name="sneaky", **change)
    stored = Mailbox.objects.get(pk=mailbox_a.pk)
    assert (stored.quota_bytes, stored.is_active, stored.display_name) == (GIB, True, "")


def test_mailbox_update_by_domain_admin_of_other_domain_is_not_found(admin_b, mailbox_a):
    with pytest.raises(NotFoundError):
        services.mailbox_update(actor=admin_b, mailbox=mailbox_a, display_name="hijacked")
    assert Mailbox.objects.get(pk=mailbox_a.pk).display_name == ""


def test_mailbox_update_by_another_mailbox_user_is_not_found(mailbox_b, mailbox_a):
    with pytest.raises(NotFoundError):
        services.mailbox_update(actor=mailbox_b.owner, mailbox=mailbox_a, password=NEW_PASSWORD)
    assert check_password(TEST_PASSWORD, Mailbox.objects.get(pk=mailbox_a.pk).password)


def test_mailbox_update_domain_admin_changes_quota(admin_a, mailbox_a):
    services.mailbox_update(actor=admin_a, mailbox=mailbox_a, quota_bytes=0)
    assert Mailbox.objects.get(pk=mailbox_a.pk).quota_bytes == 0


def test_mailbox_update_rejects_weak_password(user_a, mailbox_a):
    with pytest.raises(ApplicationError) as excinfo:
        services.mailbox_update(actor=user_a, mailbox=mailbox_a, password="short")
    assert excinfo.value.code == "weak_password"
    assert check_password(TEST_PASSWORD, Mailbox.objects.get(pk=mailbox_a.pk).password)


def test_mailbox_update_rejects_negative_quota(admin_a, mailbox_a):
    with pytest.raises(ApplicationError):
        services.mailbox_update(actor=admin_a, mailbox=mailbox_a, quota_bytes=-5)
    assert Mailbox.objects.get(pk=mailbox_a.pk).quota_bytes == GIB


def test_mailbox_disable_emits_domain_scoped_alert(superadmin, mailbox_a):
    services.mailbox_disable(actor=superadmin, mailbox=mailbox_a)
    alert = Alert.objects.get(kind="mailboxes.mailbox_disabled")
    assert alert.domain_id == mailbox_a.domain_id
    assert "alice@alpha.test" in alert.message


def test_mailbox_disable_twice_emits_one_alert(admin_a, mailbox_a):
    services.mailbox_disable(actor=admin_a, mailbox=mailbox_a)
    services.mailbox_disable(actor=admin_a, mailbox=Mailbox.objects.get(pk=mailbox_a.pk))
    assert Mailbox.objects.get(pk=mailbox_a.pk).is_active is False
    alerts = Alert.objects.filter(kind="mailboxes.mailbox_disabled")
    assert alerts.count() == 1
    assert alerts.get().data == {
        "mailbox_id": mailbox_a.pk,
        "address": "alice@alpha.test",
        "actor": "admin@alpha.test",
    }


def test_mailbox_enable_reactivates_without_alert(admin_a, domain_a):
    mailbox = MailboxFactory(domain=domain_a, local_part="off", address="off@alpha.test", is_active=False)
    services.mailbox_enable(actor=admin_a, mailbox=mailbox)
    assert Mailbox.objects.get(pk=mailbox.pk).is_active is True
    assert not Alert.objects.filter(kind="mailboxes.mailbox_disabled").exists()


# --- Mailbox delete --------------------------------------------------------------------


def test_mailbox_delete_removes_it_from_aliases_and_deletes_emptied_ones(admin_a, domain_a, mailbox_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    alias(domain_a, "team", "alice@alpha.test", "carol@alpha.test")
    alias(domain_a, "solo", "alice@alpha.test")
    alias(domain_a, "outer", "solo@alpha.test")

    report = services.mailbox_delete(actor=admin_a, mailbox=mailbox_a)

    assert not Mailbox.objects.filter(address="alice@alpha.test").exists()
    assert destinations_of("team@alpha.test") == ["carol@alpha.test"]
    assert sorted(Alias.objects.values_list("address", flat=True)) == ["team@alpha.test"]
    assert report.mailboxes == ["alice@alpha.test"]
    assert sorted(report.aliases) == ["outer@alpha.test", "solo@alpha.test"]
    assert "team@alpha.test -> alice@alpha.test" in report.destinations_removed
    assert "outer@alpha.test -> solo@alpha.test" in report.destinations_removed


def test_mailbox_delete_removes_folders_and_auto_created_owner(admin_a, mailbox_a):
    owner_pk = mailbox_a.owner_id
    report = services.mailbox_delete(actor=admin_a, mailbox=mailbox_a)
    assert report.users == ["alice@alpha.test"]
    assert not User.objects.filter(pk=owner_pk).exists()
    assert not Folder.objects.filter(mailbox_id=mailbox_a.pk).exists()


def test_mailbox_delete_keeps_owner_with_other_mailbox(admin_a, domain_a):
    owner = UserFactory(email="multi@people.test")
    first = MailboxFactory(domain=domain_a, local_part="m1", address="m1@alpha.test", owner=owner)
    MailboxFactory(domain=domain_a, local_part="m2", address="m2@alpha.test", owner=owner)
    report = services.mailbox_delete(actor=admin_a, mailbox=first)
    assert report.users == []
    assert list(User.objects.get(pk=owner.pk).mailboxes.values_list("address", flat=True)) == [
        "m2@alpha.test"
    ]


def test_mailbox_delete_keeps_admin_owner(superadmin, domain_a, admin_a):
    mailbox = MailboxFactory(domain=domain_a, local_part="admin", address="admin@alpha.test", owner=admin_a)
    report = services.mailbox_delete(actor=superadmin, mailbox=mailbox)
    assert report.users == []
    assert User.objects.filter(pk=admin_a.pk).exists()


def test_mailbox_delete_by_domain_admin_of_other_domain_is_not_found(admin_b, mailbox_a):
    with pytest.raises(NotFoundError):
        services.mailbox_delete(actor=admin_b, mailbox=mailbox_a)
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_mailbox_delete_by_its_owner_is_refused(user_a, mailbox_a):
    with pytest.raises(PermissionDeniedError):
        services.mailbox_delete(actor=user_a, mailbox=mailbox_a)
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_mailbox_references_lists_aliases_delivering_to_it(domain_a, domain_b, mailbox_a):
    alias(domain_a, "team", "alice@alpha.test")
    alias(domain_b, "fwd", "alice@alpha.test")
    alias(domain_a, "unrelated", "team@alpha.test")
    assert sorted(services.mailbox_references(mailbox=mailbox_a)) == ["fwd@beta.test", "team@alpha.test"]


# --- Aliases ---------------------------------------------------------------------------


def test_alias_create_stores_normalised_deduplicated_destinations(admin_a, mailbox_a):
    created = services.alias_create(
        actor=admin_a,
        address="Info@Alpha.test",
        destinations=["Alice@ALPHA.test", "alice@alpha.test"],
        description="General",
    )
    assert created.address == "info@alpha.test"
    assert Alias.objects.get(pk=created.pk).description == "General"
    assert destinations_of("info@alpha.test") == ["alice@alpha.test"]


def test_alias_create_catch_all(admin_a, mailbox_a):
    created = services.alias_create(actor=admin_a, address="@Alpha.test", destinations=["alice@alpha.test"])
    stored = Alias.objects.get(pk=created.pk)
    assert (stored.address, stored.local_part, stored.is_catch_all) == ("@alpha.test", "", True)
    assert destinations_of("@alpha.test") == ["alice@alpha.test"]


def test_alias_create_allows_one_catch_all_per_domain(admin_a, mailbox_a):
    services.alias_create(actor=admin_a, address="@alpha.test", destinations=["alice@alpha.test"])
    with pytest.raises(ConflictError) as excinfo:
        services.alias_create(actor=admin_a, address="@ALPHA.TEST", destinations=["alice@alpha.test"])
    assert excinfo.value.code == "duplicate"
    assert Alias.objects.filter(local_part="", domain__name="alpha.test").count() == 1


def test_alias_create_refuses_self_destination(admin_a, domain_a):
    with pytest.raises(ApplicationError) as excinfo:
        services.alias_create(actor=admin_a, address="me@alpha.test", destinations=["ME@alpha.test"])
    assert excinfo.value.fields["destinations"] == ["me@alpha.test is the alias itself."]
    assert not Alias.objects.exists()


def test_alias_update_refuses_self_destination(admin_a, domain_a, mailbox_a):
    one = alias(domain_a, "one", "alice@alpha.test")
    with pytest.raises(ApplicationError):
        services.alias_update(actor=admin_a, alias=one, destinations=["one@alpha.test"])
    assert destinations_of("one@alpha.test") == ["alice@alpha.test"]


def test_alias_loop_is_refused(superadmin, mailbox_a):
    services.alias_create(actor=superadmin, address="one@alpha.test", destinations=["alice@alpha.test"])
    services.alias_create(actor=superadmin, address="two@alpha.test", destinations=["one@alpha.test"])
    one = Alias.objects.get(address="one@alpha.test")
    with pytest.raises(services.AliasLoop):
        services.alias_update(actor=superadmin, alias=one, destinations=["two@alpha.test"])
    assert list(one.destinations.values_list("address", flat=True)) == ["alice@alpha.test"]


@pytest.mark.parametrize("length", [2, 3, 5])
def test_alias_update_refuses_loop_through_chain(admin_a, domain_a, mailbox_a, length):
    # a0 -> alice; a1 -> a0; ...; then pointing a0 at the last one closes the loop.
    first = alias(domain_a, "a0", "alice@alpha.test")
    for i in range(1, length):
        alias(domain_a, f"a{i}", f"a{i - 1}@alpha.test")
    with pytest.raises(services.AliasLoop) as excinfo:
        services.alias_update(
            actor=admin_a, alias=first, destinations=["alice@alpha.test", f"a{length - 1}@alpha.test"]
        )
    assert excinfo.value.code == "alias_loop"
    assert excinfo.value.fields == {"destinations": ["Creates a loop."]}
    assert destinations_of("a0@alpha.test") == ["alice@alpha.test"]


def test_alias_update_refuses_loop_across_domains(superadmin, domain_a, domain_b, mailbox_a):
    home = alias(domain_a, "home", "alice@alpha.test")
    alias(domain_b, "away", "home@alpha.test")
    with pytest.raises(services.AliasLoop):
        services.alias_update(actor=superadmin, alias=home, destinations=["away@beta.test"])
    assert destinations_of("home@alpha.test") == ["alice@alpha.test"]


def test_alias_create_accepts_chain_at_depth_limit(admin_a, domain_a, mailbox_a):
    previous = "alice@alpha.test"
    for i in range(services.MAX_ALIAS_DEPTH - 1):
        alias(domain_a, f"c{i}", previous)
        previous = f"c{i}@alpha.test"
    created = services.alias_create(actor=admin_a, address="top@alpha.test", destinations=[previous])
    assert Alias.objects.filter(pk=created.pk).exists()


def test_alias_create_refuses_chain_deeper_than_limit(admin_a, domain_a, mailbox_a):
    previous = "alice@alpha.test"
    for i in range(services.MAX_ALIAS_DEPTH):
        alias(domain_a, f"c{i}", previous)
        previous = f"c{i}@alpha.test"
    with pytest.raises(services.AliasLoop) as excinfo:
        services.alias_create(actor=admin_a, address="top@alpha.test", destinations=[previous])
    assert excinfo.value.fields == {"destinations": ["Alias chain too deep."]}
    assert str(services.MAX_ALIAS_DEPTH) in excinfo.value.message
    assert not Alias.objects.filter(address="top@alpha.test").exists()


def test_alias_update_refuses_deepening_a_chain_from_below(admin_a, domain_a, mailbox_a):
    """Re-pointing the bottom of a chain counts the aliases above it too."""
    previous = "alice@alpha.test"
    for i in range(services.MAX_ALIAS_DEPTH - 1):
        alias(domain_a, f"c{i}", previous)
        previous = f"c{i}@alpha.test"
    alias(domain_a, "e", "alice@alpha.test")
    c0 = Alias.objects.get(address="c0@alpha.test")
    services.alias_update(actor=admin_a, alias=c0, destinations=["e@alpha.test"])  # exactly at the limit
    alias(domain_a, "f", "alice@alpha.test")
    e = Alias.objects.get(address="e@alpha.test")
    with pytest.raises(services.AliasLoop) as excinfo:
        services.alias_update(actor=admin_a, alias=e, destinations=["f@alpha.test"])
    assert excinfo.value.fields == {"destinations": ["Alias chain too deep."]}
    assert destinations_of("e@alpha.test") == ["alice@alpha.test"]


def test_alias_create_accepts_external_destination_for_forwarding(admin_a, mailbox_a):
    created = services.alias_create(
        actor=admin_a, address="fwd@alpha.test", destinations=["alice@alpha.test", "someone@example.com"]
    )
    assert destinations_of(created.address) == ["alice@alpha.test", "someone@example.com"]


def test_alias_to_missing_local_address_is_refused(superadmin, domain_a):
    with pytest.raises(ApplicationError) as excinfo:
        services.alias_create(actor=superadmin, address="x@alpha.test", destinations=["ghost@alpha.test"])
    assert "destinations" in excinfo.value.fields


def test_alias_create_dangling_destination_in_other_local_domain_is_refused(superadmin, domain_a, domain_b):
    with pytest.raises(ApplicationError) as excinfo:
        services.alias_create(actor=superadmin, address="x@alpha.test", destinations=["ghost@beta.test"])
    assert excinfo.value.fields["destinations"] == ["ghost@beta.test does not exist here: create it first."]
    assert not Alias.objects.exists()


@pytest.mark.parametrize("destinations", [[], ["not-an-address"], ["@alpha.test"]])
def test_alias_create_rejects_invalid_destinations(admin_a, mailbox_a, destinations):
    with pytest.raises(ApplicationError) as excinfo:
        services.alias_create(actor=admin_a, address="x@alpha.test", destinations=destinations)
    assert excinfo.value.fields["destinations"]
    assert not Alias.objects.exists()


def test_alias_create_rejects_duplicate_of_alias(admin_a, domain_a, mailbox_a):
    alias(domain_a, "info", "alice@alpha.test")
    with pytest.raises(ConflictError) as excinfo:
        services.alias_create(actor=admin_a, address="INFO@alpha.test", destinations=["alice@alpha.test"])
    assert excinfo.value.code == "duplicate"
    assert excinfo.value.fields == {"address": ["Already used by an alias."]}
    assert Alias.objects.count() == 1


def test_alias_create_rejects_address_of_a_mailbox(admin_a, domain_a, mailbox_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    with pytest.raises(ConflictError) as excinfo:
        services.alias_create(actor=admin_a, address="alice@alpha.test", destinations=["carol@alpha.test"])
    assert excinfo.value.fields == {"address": ["Already used by a mailbox."]}
    assert not Alias.objects.exists()


def test_alias_create_refused_when_domain_alias_limit_reached(superadmin, mailbox_a):
    Domain.objects.filter(pk=mailbox_a.domain_id).update(max_aliases=1)
    services.alias_create(actor=superadmin, address="one@alpha.test", destinations=["alice@alpha.test"])
    with pytest.raises(ConflictError) as excinfo:
        services.alias_create(actor=superadmin, address="two@alpha.test", destinations=["alice@alpha.test"])
    assert excinfo.value.code == "domain_limit_reached"
    assert Alias.objects.count() == 1


def test_alias_create_in_other_domain_is_not_found_for_domain_admin(admin_a, mailbox_b):
    with pytest.raises(NotFoundError):
        services.alias_create(actor=admin_a, address="x@beta.test", destinations=["bob@beta.test"])
    assert not Alias.objects.exists()


def test_alias_update_replaces_destinations_in_order(admin_a, domain_a, mailbox_a):
    MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    MailboxFactory(domain=domain_a, local_part="dave", address="dave@alpha.test")
    team = alias(domain_a, "team", "alice@alpha.test")
    services.alias_update(
        actor=admin_a,
        alias=team,
        destinations=["dave@alpha.test", "carol@alpha.test"],
        description="New",
        is_active=False,
    )
    assert destinations_of("team@alpha.test") == ["dave@alpha.test", "carol@alpha.test"]
    stored = Alias.objects.get(pk=team.pk)
    assert (stored.description, stored.is_active) == ("New", False)


def test_alias_update_with_invalid_destinations_keeps_old_ones(admin_a, domain_a, mailbox_a):
    team = alias(domain_a, "team", "alice@alpha.test")
    with pytest.raises(ApplicationError):
        services.alias_update(actor=admin_a, alias=team, destinations=["not an address"])
    assert destinations_of("team@alpha.test") == ["alice@alpha.test"]


def test_alias_update_by_domain_admin_of_other_domain_is_not_found(admin_b, domain_a, mailbox_a):
    team = alias(domain_a, "team", "alice@alpha.test")
    with pytest.raises(NotFoundError):
        services.alias_update(actor=admin_b, alias=team, description="hijacked")
    assert Alias.objects.get(pk=team.pk).description == ""


def test_alias_delete_cascades_through_aliases_pointing_to_it(admin_a, domain_a, mailbox_a):
    alias(domain_a, "base", "alice@alpha.test")
    alias(domain_a, "only-base", "base@alpha.test")
    alias(domain_a, "mixed", "base@alpha.test", "alice@alpha.test")
    alias(domain_a, "top", "only-base@alpha.test")

    report = services.alias_delete(actor=admin_a, alias=Alias.objects.get(address="base@alpha.test"))

    assert sorted(Alias.objects.values_list("address", flat=True)) == ["mixed@alpha.test"]
    assert destinations_of("mixed@alpha.test") == ["alice@alpha.test"]
    assert sorted(report.aliases) == ["base@alpha.test", "only-base@alpha.test", "top@alpha.test"]
    assert report.mailboxes == [] and report.users == []
    assert Mailbox.objects.filter(address="alice@alpha.test").exists()


def test_alias_delete_by_mailbox_user_is_refused(user_a, domain_a, mailbox_a):
    team = alias(domain_a, "team", "alice@alpha.test")
    with pytest.raises(PermissionDeniedError):
        services.alias_delete(actor=user_a, alias=team)
    assert Alias.objects.filter(pk=team.pk).exists()
