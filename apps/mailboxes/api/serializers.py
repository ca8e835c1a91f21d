from rest_framework import serializers

from apps.core.api.serializers import StrictInputSerializer
from apps.mailboxes.models import Alias, Domain, Mailbox


class DomainOutputSerializer(serializers.ModelSerializer):
    name_unicode = serializers.CharField(read_only=True)
    admins = serializers.SerializerMethodField()
    mailbox_count = serializers.IntegerField(read_only=True)
    alias_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Domain
        fields = [
            "id",
            "name",
            "name_unicode",
            "description",
            "is_active",
            "max_mailboxes",
            "max_aliases",
            "default_quota_bytes",
            "admins",
            "mailbox_count",
            "alias_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_admins(self, domain: Domain) -> list[str]:
        return [user.email for user in domain.admins.all()]


class DomainCreateInputSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=300)
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    is_active = serializers.BooleanField(required=False, default=True)
    max_mailboxes = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000, default=0)
    max_aliases = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000, default=0)
    default_quota_bytes = serializers.IntegerField(required=False, min_value=0, max_value=2**62)
    admins = serializers.ListField(
        child=serializers.CharField(max_length=254), required=False, max_length=1000
    )


class DomainUpdateInputSerializer(StrictInputSerializer):
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)
    max_mailboxes = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000)
    max_aliases = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000)
    default_quota_bytes = serializers.IntegerField(required=False, min_value=0, max_value=2**62)
    admins = serializers.ListField(
        child=serializers.CharField(max_length=254), required=False, max_length=1000
    )


class MailboxOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.name", read_only=True)
    owner = serializers.CharField(source="owner.email", read_only=True)
    address_display = serializers.CharField(read_only=True)

    class Meta:
        model = Mailbox
        fields = [
            "id",
            "address",
            "address_display",
            "domain",
            "owner",
            "display_name",
            "quota_bytes",
            "used_bytes",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class MailboxCreateInputSerializer(StrictInputSerializer):
    address = serializers.CharField(max_length=320)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    quota_bytes = serializers.IntegerField(required=False, min_value=0, max_value=2**62)
    display_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    owner = serializers.CharField(
        max_length=254,
        required=False,
        help_text="Email of an existing user; defaults to a user with the mailbox address.",
    )
    is_active = serializers.BooleanField(required=False, default=True)


class MailboxUpdateInputSerializer(StrictInputSerializer):
    password = serializers.CharField(max_length=1024, trim_whitespace=False, required=False)
    quota_bytes = serializers.IntegerField(required=False, min_value=0, max_value=2**62)
    display_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


class AliasOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.name", read_only=True)
    destinations = serializers.SerializerMethodField()
    is_catch_all = serializers.BooleanField(read_only=True)

    class Meta:
        model = Alias
        fields = [
            "id",
            "address",
            "domain",
            "is_catch_all",
            "destinations",
            "description",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_destinations(self, alias: Alias) -> list[str]:
        return [row.address for row in alias.destinations.all()]


class AliasCreateInputSerializer(StrictInputSerializer):
    address = serializers.CharField(max_length=320, help_text="local@domain, or @domain for a catch-all.")
    destinations = serializers.ListField(
        child=serializers.CharField(max_length=320), min_length=1, max_length=500
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    is_active = serializers.BooleanField(required=False, default=True)


class AliasUpdateInputSerializer(StrictInputSerializer):
    destinations = serializers.ListField(
        child=serializers.CharField(max_length=320), min_length=1, max_length=500, required=False
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


class DeletionReportSerializer(serializers.Serializer):
    mailboxes = serializers.ListField(child=serializers.CharField())
    aliases = serializers.ListField(child=serializers.CharField())
    destinations_removed = serializers.ListField(child=serializers.CharField())
    users = serializers.ListField(child=serializers.CharField())
