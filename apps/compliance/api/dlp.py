"""REST API for outbound DLP and data classification.

- /api/v1/dlp-policies/: policies per domain (superadmins: all; domain admins: their domains)
- /api/v1/dlp-hits/: outbound messages a policy matched (same scope), read-only
- /api/v1/dlp-classifications/: what personal data a message holds, read-only, for anyone
  who may read the message; filter by `message` (Message id) or `queue_id` (the envelope's
  queue id, also shown by /api/v1/messages/{id}/)

Mailbox users get a 403 on policies and hits; objects outside the caller's scope are 404.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.compliance.models import DlpHit, DlpPolicy, MessageClassification
from apps.compliance.services import dlp as dlp_services
from apps.compliance.services.classification import CATEGORIES
from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import IsAdminRole
from apps.core.api.serializers import StrictInputSerializer

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}
CATEGORY_CHOICES = sorted(CATEGORIES.items())


class DlpPolicyOutputSerializer(serializers.ModelSerializer):
    domain_name = serializers.CharField(source="domain.name", read_only=True)

    class Meta:
        model = DlpPolicy
        fields = ["id", "domain", "domain_name", "category", "threshold", "action", "is_active", "created_at"]
        read_only_fields = fields


class DlpPolicyUpdateInputSerializer(StrictInputSerializer):
    threshold = serializers.IntegerField(
        min_value=0, required=False, help_text="Act when a message holds more than this many items."
    )
    action = serializers.ChoiceField(choices=DlpPolicy.Action.choices, required=False)
    is_active = serializers.BooleanField(required=False)


class DlpPolicyCreateInputSerializer(DlpPolicyUpdateInputSerializer):
    domain_id = serializers.IntegerField(help_text="The sending domain the policy applies to.")
    category = serializers.ChoiceField(choices=CATEGORY_CHOICES)
    threshold = serializers.IntegerField(
        min_value=0, default=0, help_text="Act when a message holds more than this many items."
    )
    action = serializers.ChoiceField(choices=DlpPolicy.Action.choices, default=DlpPolicy.Action.HOLD)
    is_active = serializers.BooleanField(default=True)


@extend_schema_view(
    list=extend_schema(responses={200: DlpPolicyOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(
        responses={200: DlpPolicyOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
    ),
)
class DlpPolicyViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Outbound DLP policies: mail from the domain to external recipients holding more than
    `threshold` items of `category` is held in the queue (`hold`) or only reported (`alert`)."""

    permission_classes = [IsAdminRole]
    serializer_class = DlpPolicyOutputSerializer
    queryset = DlpPolicy.objects.none()  # for the schema; requests go through the selector
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[DlpPolicy]:
        return dlp_services.dlp_policy_list(actor=self.request.user)

    def get_object(self) -> DlpPolicy:
        return dlp_services.dlp_policy_get(actor=self.request.user, policy_id=self.kwargs["pk"])

    @extend_schema(
        request=DlpPolicyCreateInputSerializer, responses={201: DlpPolicyOutputSerializer, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        data = DlpPolicyCreateInputSerializer.validated(request.data)
        policy = dlp_services.dlp_policy_create(actor=request.user, **data)
        return Response(DlpPolicyOutputSerializer(policy).data, status=201)

    @extend_schema(
        request=DlpPolicyUpdateInputSerializer, responses={200: DlpPolicyOutputSerializer, **ERRORS}
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = DlpPolicyUpdateInputSerializer.validated(request.data)
        policy = dlp_services.dlp_policy_update(actor=request.user, policy=self.get_object(), **data)
        return Response(DlpPolicyOutputSerializer(policy).data)

    @extend_schema(responses={204: None, 403: ErrorSerializer, 404: ErrorSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        dlp_services.dlp_policy_delete(actor=request.user, policy=self.get_object())
        return Response(status=204)


class DlpHitOutputSerializer(serializers.ModelSerializer):
    queue_id = serializers.CharField(source="message.queue_id", read_only=True)
    domain_name = serializers.SerializerMethodField()

    class Meta:
        model = DlpHit
        fields = [
            "id",
            "policy",
            "domain_name",
            "message",
            "queue_id",
            "category",
            "count",
            "action",
            "created_at",
        ]
        read_only_fields = fields

    def get_domain_name(self, hit: DlpHit) -> str | None:
        return hit.policy.domain.name if hit.policy is not None else None


HIT_FILTERS = [
    OpenApiParameter("category", OpenApiTypes.STR, description="Only hits of this category."),
    OpenApiParameter("action", OpenApiTypes.STR, enum=DlpPolicy.Action.values, description="hold or alert."),
]


@extend_schema_view(
    list=extend_schema(
        parameters=HIT_FILTERS, responses={200: DlpHitOutputSerializer(many=True), 403: ErrorSerializer}
    ),
    retrieve=extend_schema(
        responses={200: DlpHitOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
    ),
)
class DlpHitViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Outbound messages a DLP policy matched, newest first. `message` is the Message id."""

    permission_classes = [IsAdminRole]
    serializer_class = DlpHitOutputSerializer
    queryset = DlpHit.objects.none()
    lookup_value_regex = r"\d+"
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[DlpHit]:
        hits = dlp_services.dlp_hit_list(actor=self.request.user)
        params = self.request.query_params
        if params.get("category"):
            hits = hits.filter(category=params["category"])
        if params.get("action"):
            hits = hits.filter(action=params["action"])
        return hits


class MessageClassificationOutputSerializer(serializers.ModelSerializer):
    queue_id = serializers.CharField(source="message.queue_id", read_only=True)
    categories = serializers.DictField(
        child=serializers.IntegerField(), help_text='Distinct items per category, e.g. {"payment_card": 3}.'
    )

    class Meta:
        model = MessageClassification
        fields = ["id", "message", "queue_id", "categories", "classified_at"]
        read_only_fields = fields


CLASSIFICATION_FILTERS = [
    OpenApiParameter("message", OpenApiTypes.INT, description="Message id."),
    OpenApiParameter("queue_id", OpenApiTypes.STR, description="The message's queue id."),
]


@extend_schema_view(
    list=extend_schema(
        parameters=CLASSIFICATION_FILTERS,
        responses={200: MessageClassificationOutputSerializer(many=True), 403: ErrorSerializer},
        description="Classifications of messages you may read. A message with no row held "
        "nothing the detectors look for (or was stored before classification ran).",
    ),
    retrieve=extend_schema(
        responses={200: MessageClassificationOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
    ),
)
class MessageClassificationViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """What personal data a message holds (read-only)."""

    permission_classes = [IsAuthenticated]
    serializer_class = MessageClassificationOutputSerializer
    queryset = MessageClassification.objects.none()
    lookup_value_regex = r"\d+"
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[MessageClassification]:
        rows = dlp_services.dlp_classification_list(actor=self.request.user).order_by("-classified_at", "-id")
        params = self.request.query_params
        if params.get("message"):
            message_id = params["message"]
            rows = rows.filter(message_id=int(message_id)) if message_id.isdigit() else rows.none()
        if params.get("queue_id"):
            rows = rows.filter(message__queue_id=params["queue_id"])
        return rows
