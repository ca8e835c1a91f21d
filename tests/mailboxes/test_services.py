import pytest

from apps.alerts.models import Alert
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.mailboxes import services
from apps.mailboxes.models import Alias, Domain, Folder, Mailbox
from tests.factories import TEST_PASSWORD

pytestmark = pytest.mark.django_db


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


def test_mailbox_create_makes_standard_folders_and_owner(superadmin, domain_a):
    mailbox = services.mailbox_create(actor=superadmin, address="Carol@Alpha.test", password=TEST_PASSWORD)
    assert mailbox.address == "carol@alpha.test"
    assert mailbox.owner.email == "carol@alpha.test"
    assert mailbox.owner.check_password(TEST_PASSWORD)
    assert mailbox.password != TEST_PASSWORD and mailbox.password.startswith(("md5$", "pbkdf2", "argon2"))
    names = list(Folder.objects.filter(mailbox=mailbox).values_list("name", flat=True))
    assert names == ["INBOX", "Sent", "Drafts", "Junk", "Trash"]


def test_domain_admin_cannot_create_mailbox_in_other_domain(admin_a, domain_b):
    with pytest.raises(NotFoundError):
        services.mailbox_create(actor=admin_a, address="x@beta.test", password=TEST_PASSWORD)
    assert not Mailbox.objects.filter(address="x@beta.test").exists()


def test_alias_loop_is_refused(superadmin, mailbox_a):
    services.alias_create(actor=superadmin, address="one@alpha.test", destinations=["alice@alpha.test"])
    services.alias_create(actor=superadmin, address="two@alpha.test", destinations=["one@alpha.test"])
    one = Alias.objects.get(address="one@alpha.test")
    with pytest.raises(services.AliasLoop):
        services.alias_update(actor=superadmin, alias=one, destinations=["two@alpha.test"])
    assert list(one.destinations.values_list("address", flat=True)) == ["alice@alpha.test"]


def test_alias_to_missing_local_address_is_refused(superadmin, domain_a):
    with pytest.raises(ApplicationError) as excinfo:
        services.alias_create(actor=superadmin, address="x@alpha.test", destinations=["ghost@alpha.test"])
    assert "destinations" in excinfo.value.fields


def test_mailbox_disable_emits_domain_scoped_alert(superadmin, mailbox_a):
    services.mailbox_disable(actor=superadmin, mailbox=mailbox_a)
    alert = Alert.objects.get(kind="mailboxes.mailbox_disabled")
    assert alert.domain_id == mailbox_a.domain_id
    assert "alice@alpha.test" in alert.message
