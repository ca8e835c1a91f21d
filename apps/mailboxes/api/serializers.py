from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.api.serializers import StrictInputSerializer
from apps.mailboxes.models import Alias, Domain, Folder, Mailbox, MailItem, Message


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
            "max_messages_per_hour",
            "max_recipients_per_hour",
            "require_mfa",
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
    max_messages_per_hour = serializers.IntegerField(
        required=False, min_value=0, max_value=10_000_000, default=0
    )
    max_recipients_per_hour = serializers.IntegerField(
        required=False, min_value=0, max_value=10_000_000, default=0
    )
    require_mfa = serializers.BooleanField(
        required=False, default=False, help_text="Mailbox users of the domain must have a second factor too."
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
    max_messages_per_hour = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000)
    max_recipients_per_hour = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000)
    require_mfa = serializers.BooleanField(required=False)


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
            "save_sent_copy",
            "max_messages_per_hour",
            "max_recipients_per_hour",
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
    save_sent_copy = serializers.BooleanField(required=False)
    max_messages_per_hour = serializers.IntegerField(
        required=False, min_value=0, max_value=10_000_000, help_text="0: the server default."
    )
    max_recipients_per_hour = serializers.IntegerField(
        required=False, min_value=0, max_value=10_000_000, help_text="0: the server default."
    )


class AliasOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.name", read_only=True)
    destinations = serializers.SerializerMethodField()
    send_as = serializers.SerializerMethodField()
    is_catch_all = serializers.BooleanField(read_only=True)

    class Meta:
        model = Alias
        fields = [
            "id",
            "address",
            "domain",
            "is_catch_all",
            "destinations",
            "send_as",
            "description",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_destinations(self, alias: Alias) -> list[str]:
        return [row.address for row in alias.destinations.all()]

    def get_send_as(self, alias: Alias) -> list[str]:
        return [mailbox.address for mailbox in alias.send_as.all()]


class AliasCreateInputSerializer(StrictInputSerializer):
    address = serializers.CharField(max_length=320, help_text="local@domain, or @domain for a catch-all.")
    destinations = serializers.ListField(
        child=serializers.CharField(max_length=320), min_length=1, max_length=500
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    is_active = serializers.BooleanField(required=False, default=True)
    send_as = serializers.ListField(
        child=serializers.CharField(max_length=320),
        required=False,
        max_length=500,
        help_text="Mailboxes whose users may send as this alias.",
    )


class AliasUpdateInputSerializer(StrictInputSerializer):
    destinations = serializers.ListField(
        child=serializers.CharField(max_length=320), min_length=1, max_length=500, required=False
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)
    send_as = serializers.ListField(
        child=serializers.CharField(max_length=320), required=False, max_length=500
    )


class DeletionReportSerializer(serializers.Serializer):
    mailboxes = serializers.ListField(child=serializers.CharField())
    aliases = serializers.ListField(child=serializers.CharField())
    destinations_removed = serializers.ListField(child=serializers.CharField())
    users = serializers.ListField(child=serializers.CharField())


# --- Messages --------------------------------------------------------------------------


class MessageListQuerySerializer(serializers.Serializer):
    """Query parameters of GET messages/ (pass a plain dict, not a QueryDict: a missing
    boolean must stay None, not become False)."""

    mailbox = serializers.CharField(
        max_length=320, required=False, help_text="Address of a mailbox you may read."
    )
    folder = serializers.CharField(
        max_length=255, required=False, help_text="Folder name, e.g. INBOX; needs `mailbox`."
    )
    unread = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="Only unread (true) or read (false)."
    )
    flagged = serializers.BooleanField(required=False, allow_null=True, default=None)
    search = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        help_text="Full-text search over subject, addresses and body; every word must match.",
    )

    def validate(self, attrs: dict) -> dict:
        if attrs.get("folder") and not attrs.get("mailbox"):
            raise serializers.ValidationError({"folder": ["Give the mailbox as well."]})
        return attrs


class MessageDetailQuerySerializer(serializers.Serializer):
    """Query parameters of GET messages/{id}/."""

    remote_images = serializers.BooleanField(
        required=False, default=False, help_text="Load remote images in the sanitised HTML."
    )


class MessageEnvelopeOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["queue_id", "mail_from", "helo", "peer_ip", "received_at"]
        read_only_fields = fields


class MessageOutputSerializer(serializers.ModelSerializer):
    """A message as filed in one mailbox folder; `id` is the MailItem id."""

    mailbox = serializers.CharField(source="mailbox.address", read_only=True)
    folder = serializers.CharField(source="folder.name", read_only=True)
    subject = serializers.CharField(source="message.subject", read_only=True)
    from_header = serializers.CharField(source="message.from_header", read_only=True)
    to_header = serializers.CharField(source="message.to_header", read_only=True)
    cc_header = serializers.CharField(source="message.cc_header", read_only=True)
    date = serializers.DateTimeField(
        source="message.date_header", read_only=True, allow_null=True, help_text="The Date header."
    )
    message_id = serializers.CharField(source="message.message_id_header", read_only=True)
    has_attachments = serializers.BooleanField(source="message.has_attachments", read_only=True)

    class Meta:
        model = MailItem
        fields = [
            "id",
            "mailbox",
            "folder",
            "uid",
            "subject",
            "from_header",
            "to_header",
            "cc_header",
            "date",
            "message_id",
            "internal_date",
            "size",
            "seen",
            "flagged",
            "answered",
            "deleted",
            "has_attachments",
        ]
        read_only_fields = fields


class MessageAttachmentOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="MIME part index; use it in the download URL.")
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField(help_text="Decoded size in bytes.")
    url = serializers.CharField(help_text="Download URL.")


class MessageDetailOutputSerializer(MessageOutputSerializer):
    """A message with its content. Pass the selector's MessageContent as
    context["content"] and the request as context["request"]."""

    envelope = MessageEnvelopeOutputSerializer(source="message", read_only=True)
    headers = serializers.SerializerMethodField(help_text="Every header in order, as [name, value].")
    text = serializers.SerializerMethodField(help_text="The text/plain parts.")
    html = serializers.SerializerMethodField(
        help_text="The HTML part, sanitised: no scripts, handlers, forms or styles."
    )
    remote_images = serializers.SerializerMethodField(help_text="Whether remote images were kept.")
    blocked_images = serializers.SerializerMethodField(help_text="Remote images swapped for a blank image.")
    attachments = serializers.SerializerMethodField()
    raw_url = serializers.SerializerMethodField(help_text="The stored RFC 5322 bytes.")

    class Meta(MessageOutputSerializer.Meta):
        fields = [
            *MessageOutputSerializer.Meta.fields,
            "envelope",
            "headers",
            "text",
            "html",
            "remote_images",
            "blocked_images",
            "attachments",
            "raw_url",
        ]
        read_only_fields = fields

    @extend_schema_field(
        serializers.ListField(child=serializers.ListField(child=serializers.CharField(), min_length=2))
    )
    def get_headers(self, item: MailItem) -> list[list[str]]:
        return [[name, value] for name, value in self.context["content"].headers]

    def get_text(self, item: MailItem) -> str:
        return self.context["content"].text

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_html(self, item: MailItem) -> str | None:
        return self.context["content"].html

    def get_remote_images(self, item: MailItem) -> bool:
        return self.context["content"].remote_images

    def get_blocked_images(self, item: MailItem) -> int:
        return self.context["content"].blocked_images

    @extend_schema_field(MessageAttachmentOutputSerializer(many=True))
    def get_attachments(self, item: MailItem) -> list[dict]:
        request = self.context["request"]
        return [
            {
                "index": info.index,
                "filename": info.filename,
                "content_type": info.content_type,
                "size": info.size,
                "url": request.build_absolute_uri(
                    reverse("api:message-attachment", kwargs={"pk": item.pk, "index": info.index})
                ),
            }
            for info in self.context["content"].attachments
        ]

    def get_raw_url(self, item: MailItem) -> str:
        return self.context["request"].build_absolute_uri(reverse("api:message-raw", kwargs={"pk": item.pk}))


class MessageFlagsInputSerializer(StrictInputSerializer):
    """IMAP flags to set; at least one."""

    seen = serializers.BooleanField(required=False)
    flagged = serializers.BooleanField(required=False)
    answered = serializers.BooleanField(required=False)
    deleted = serializers.BooleanField(required=False, help_text="IMAP \\Deleted: removed at expunge.")

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError("Give at least one of seen, flagged, answered, deleted.")
        return attrs


class MessageMoveInputSerializer(StrictInputSerializer):
    """Where to move the message."""

    folder = serializers.CharField(max_length=255, help_text="Target folder name in the same mailbox.")


class FolderOutputSerializer(serializers.ModelSerializer):
    """A folder with its message counts."""

    total = serializers.IntegerField(read_only=True, help_text="Messages not flagged \\Deleted.")
    unread = serializers.IntegerField(read_only=True)

    class Meta:
        model = Folder
        fields = ["id", "name", "special_use", "total", "unread"]
        read_only_fields = fields


class MailboxFoldersOutputSerializer(serializers.Serializer):
    """A mailbox's folders and its quota usage."""

    mailbox = serializers.IntegerField(source="mailbox.id")
    address = serializers.CharField(source="mailbox.address")
    quota_bytes = serializers.IntegerField(source="mailbox.quota_bytes", help_text="0 means no limit.")
    used_bytes = serializers.IntegerField(source="mailbox.used_bytes")
    quota_percent = serializers.FloatField(source="mailbox.quota_percent", allow_null=True)
    folders = FolderOutputSerializer(many=True)


class FolderExpungeInputSerializer(StrictInputSerializer):
    """The folder to expunge."""

    folder = serializers.CharField(max_length=255, help_text="Folder name, e.g. Trash.")


class FolderExpungeOutputSerializer(serializers.Serializer):
    folder = serializers.CharField()
    expunged = serializers.IntegerField(help_text="Messages removed for good.")
    used_bytes = serializers.IntegerField(help_text="The mailbox's usage afterwards.")
