"""REST API for the outbound queue: /api/v1/queue/.

Administrators only: superadmins see the whole queue, a domain admin the items of their
domains (apps.relay.selectors). Items outside the caller's scope are a 404; mailbox users
get a 403 for every endpoint.
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import IsAdminRole
from apps.core.api.serializers import StrictInputSerializer
from apps.relay import selectors, services
from apps.relay.models import DeliveryAttempt, QueueItem, QueueRecipient

ERRORS = {403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


class NamedEnumField(serializers.ChoiceField):
    """A choice field documented as one named enum component wherever it is used. The
    schema generator names shared choice sets after the field, and "state" and "kind"
    mean different things across the API, so these get explicit names."""

    def __init__(self, *, schema_name: str, **kwargs: object) -> None:
        self.schema_name = schema_name
        super().__init__(**kwargs)


class NamedEnumFieldExtension(OpenApiSerializerFieldExtension):
    target_class = NamedEnumField

    def get_name(self) -> str:
        return self.target.schema_name

    def map_serializer_field(self, auto_schema: object, direction: str) -> dict:
        choices = self.target.choices
        described = "\n".join(f"* `{value}` - {label}" for value, label in choices.items())
        return {"type": "string", "enum": list(choices), "description": described}


class QueueItemFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=QueueItem.State.choices)
    kind = django_filters.ChoiceFilter(choices=QueueItem.Kind.choices)
    domain = django_filters.CharFilter(
        method="filter_domain", help_text="Destination domain, exact (either form of an IDN)."
    )
    sender = django_filters.CharFilter(
        field_name="sender", lookup_expr="icontains", help_text="Part of the envelope sender."
    )
    on_hold = django_filters.BooleanFilter()
    queue_id = django_filters.CharFilter(
        field_name="message__queue_id", lookup_expr="iexact", help_text="The message's queue id."
    )

    class Meta:
        model = QueueItem
        fields = ["state", "kind", "domain", "sender", "on_hold", "queue_id"]

    def filter_domain(self, queryset: QuerySet[QueueItem], name: str, value: str) -> QuerySet[QueueItem]:
        return selectors.queue_item_filter(queryset, domain=value)


class QueueMessageSerializer(serializers.Serializer):
    queue_id = serializers.CharField()
    subject = serializers.CharField(help_text="Empty until the message has been parsed.")
    from_header = serializers.CharField()
    size = serializers.IntegerField(help_text="Bytes.")
    received_at = serializers.DateTimeField()


class QueueItemOutputSerializer(serializers.ModelSerializer):
    queue_id = serializers.CharField(source="message.queue_id", read_only=True)
    subject = serializers.CharField(source="message.subject", read_only=True)
    size = serializers.IntegerField(source="message.size", read_only=True)
    recipient_count = serializers.IntegerField(read_only=True)
    kind = NamedEnumField(schema_name="QueueKindEnum", choices=QueueItem.Kind.choices, read_only=True)
    state = NamedEnumField(schema_name="QueueStateEnum", choices=QueueItem.State.choices, read_only=True)

    class Meta:
        model = QueueItem
        fields = [
            "id",
            "queue_id",
            "subject",
            "size",
            "kind",
            "state",
            "on_hold",
            "sender",
            "report_to",
            "domain",
            "recipient_count",
            "attempts",
            "created_at",
            "next_attempt_at",
            "last_attempt_at",
            "finished_at",
            "last_reply",
        ]
        read_only_fields = fields


class QueueRecipientOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = QueueRecipient
        fields = ["address", "original_address", "state", "reply_code", "reply", "remote_host", "updated_at"]
        read_only_fields = fields


class DeliveryAttemptOutputSerializer(serializers.ModelSerializer):
    tried = serializers.SerializerMethodField(help_text="Notes on each host tried, in order.")
    recipient_replies = serializers.SerializerMethodField(
        help_text="The reply to each recipient in this attempt, by address."
    )

    class Meta:
        model = DeliveryAttempt
        fields = [
            "started_at",
            "finished_at",
            "host",
            "port",
            "tls",
            "outcome",
            "reply_code",
            "reply",
            "tried",
            "recipient_replies",
        ]
        read_only_fields = fields

    def get_tried(self, attempt: DeliveryAttempt) -> list[str]:
        tried = (attempt.detail or {}).get("tried") or []
        return [str(note) for note in tried]

    def get_recipient_replies(self, attempt: DeliveryAttempt) -> dict[str, str]:
        replies = (attempt.detail or {}).get("recipients") or {}
        return {str(address): str((reply or {}).get("reply") or "") for address, reply in replies.items()}


class QueueItemDetailOutputSerializer(QueueItemOutputSerializer):
    message = QueueMessageSerializer(read_only=True)
    recipients = QueueRecipientOutputSerializer(many=True, read_only=True)
    attempt_log = DeliveryAttemptOutputSerializer(
        source="attempts_log", many=True, read_only=True, help_text="Every delivery attempt, oldest first."
    )

    class Meta(QueueItemOutputSerializer.Meta):
        fields = [*QueueItemOutputSerializer.Meta.fields, "message", "recipients", "attempt_log"]
        read_only_fields = fields


class QueueDeleteInputSerializer(StrictInputSerializer):
    bounce = serializers.BooleanField(
        default=False,
        help_text="Mark the open recipients bounced and send the sender a delivery report, "
        "keeping the item as bounced; otherwise the item is deleted.",
    )


class QueueDeleteOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="item_id")
    queue_id = serializers.CharField()
    deleted = serializers.BooleanField(help_text="True: the item is gone. False: it was kept as bounced.")
    bounced = serializers.ListField(
        child=serializers.CharField(), help_text="Recipients the sender was told about."
    )


class DomainCountSerializer(serializers.Serializer):
    domain = serializers.CharField()
    count = serializers.IntegerField()


class QueueSummaryOutputSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    sending = serializers.IntegerField()
    deferred = serializers.IntegerField()
    sent = serializers.IntegerField()
    bounced = serializers.IntegerField()
    waiting = serializers.IntegerField(help_text="Queued, sending and deferred items.")
    on_hold = serializers.IntegerField(help_text="Waiting items that are held.")
    oldest_deferred_at = serializers.DateTimeField(
        allow_null=True, help_text="When the oldest deferred message entered the queue."
    )
    oldest_deferred_age_seconds = serializers.IntegerField(allow_null=True)
    top_deferred_domains = DomainCountSerializer(
        many=True, help_text="Destinations with most deferred items."
    )


@extend_schema_view(
    list=extend_schema(responses={200: QueueItemOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(
        responses={200: QueueItemDetailOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
    ),
)
class QueueItemViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """The outbound queue in the caller's scope: one item per message and destination domain."""

    permission_classes = [IsAdminRole]
    serializer_class = QueueItemOutputSerializer
    filterset_class = QueueItemFilter
    ordering_fields = ["created_at", "next_attempt_at", "last_attempt_at", "attempts", "domain", "state"]

    def get_queryset(self) -> QuerySet[QueueItem]:
        return selectors.queue_item_list(self.request.user)

    def get_object(self) -> QueueItem:
        return selectors.queue_item_detail(self.request.user, self.kwargs["pk"])

    def get_serializer_class(self) -> type[serializers.Serializer]:
        if self.action == "list":
            return QueueItemOutputSerializer
        return QueueItemDetailOutputSerializer

    def _detail(self, item: QueueItem) -> Response:
        fresh = selectors.queue_item_detail(self.request.user, item.pk)
        return Response(QueueItemDetailOutputSerializer(fresh).data)

    @extend_schema(request=None, responses={200: QueueItemDetailOutputSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Deliver a queued or deferred item now. 409 when it is finished, held or being delivered."""
        return self._detail(services.queue_item_retry(actor=request.user, item=self.get_object()))

    @extend_schema(request=None, responses={200: QueueItemDetailOutputSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def hold(self, request: Request, pk: str | None = None) -> Response:
        """Stop delivering an item until it is released. 409 when it is finished or being delivered."""
        return self._detail(services.queue_item_hold(actor=request.user, item=self.get_object()))

    @extend_schema(request=None, responses={200: QueueItemDetailOutputSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Deliver a held item again, on its schedule (at once when it is due)."""
        return self._detail(services.queue_item_release(actor=request.user, item=self.get_object()))

    @extend_schema(
        request=QueueDeleteInputSerializer,
        responses={200: QueueDeleteOutputSerializer, 400: ErrorSerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="delete", url_name="delete")
    def delete_item(self, request: Request, pk: str | None = None) -> Response:
        """Delete an item, or with `bounce` fail its open recipients and report to the sender."""
        data = QueueDeleteInputSerializer.validated(request.data)
        result = services.queue_item_delete(actor=request.user, item=self.get_object(), bounce=data["bounce"])
        return Response(QueueDeleteOutputSerializer(result).data)

    @extend_schema(responses={204: None, **ERRORS})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete an item without telling its sender (same as POST delete/ without bounce)."""
        services.queue_item_delete(actor=request.user, item=self.get_object(), bounce=False)
        return Response(status=204)

    @extend_schema(responses={200: QueueSummaryOutputSerializer, 403: ErrorSerializer})
    @action(detail=False, methods=["get"], filterset_class=None, pagination_class=None)
    def summary(self, request: Request) -> Response:
        """Counts by state, held items, the oldest deferred message and the busiest deferred destinations."""
        return Response(QueueSummaryOutputSerializer(selectors.queue_summary(request.user)).data)
