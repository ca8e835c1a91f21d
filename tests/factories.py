"""factory_boy factories shared by every test package."""

from __future__ import annotations

import factory
from django.contrib.auth.hashers import make_password

from apps.accounts.models import User
from apps.mailboxes.models import DEFAULT_FOLDERS, Alias, AliasDestination, Domain, Folder, Mailbox

TEST_PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@people.test")
    role = User.Role.USER
    password = factory.PostGenerationMethodCall("set_password", TEST_PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class SuperadminFactory(UserFactory):
    role = User.Role.SUPERADMIN
    is_superuser = True


class DomainAdminFactory(UserFactory):
    role = User.Role.DOMAIN_ADMIN


class DomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Domain
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"domain{n}.test")

    @factory.post_generation
    def admins(obj, create, extracted, **kwargs):
        if create and extracted:
            obj.admins.set(extracted)


class MailboxFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Mailbox
        skip_postgeneration_save = True

    domain = factory.SubFactory(DomainFactory)
    local_part = factory.Sequence(lambda n: f"box{n}")
    address = factory.LazyAttribute(lambda o: f"{o.local_part}@{o.domain.name}")
    owner = factory.SubFactory(UserFactory, email=factory.SelfAttribute("..address"))
    password = factory.LazyFunction(lambda: make_password(TEST_PASSWORD))
    quota_bytes = 1024**3

    @factory.post_generation
    def folders(obj, create, extracted, **kwargs):
        if create:
            Folder.objects.bulk_create(
                Folder(mailbox=obj, name=name, special_use=use) for name, use in DEFAULT_FOLDERS
            )


class AliasFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Alias
        skip_postgeneration_save = True

    domain = factory.SubFactory(DomainFactory)
    local_part = factory.Sequence(lambda n: f"alias{n}")
    address = factory.LazyAttribute(lambda o: f"{o.local_part}@{o.domain.name}")

    @factory.post_generation
    def destinations(obj, create, extracted, **kwargs):
        if create and extracted:
            AliasDestination.objects.bulk_create(AliasDestination(alias=obj, address=a) for a in extracted)
