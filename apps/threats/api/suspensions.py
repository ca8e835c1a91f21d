"""REST API for suspended sending accounts: /api/v1/suspensions/.

Behaviour analysis (apps/threats/services/behaviour.py) suspends submission from a
mailbox whose outbound mail spikes far above its usual volume; the SMTP submission
listener then answers `550 5.7.1`. Administrators see the suspensions of their domains'
mailboxes (superadmins all) and restore sending with `POST {id}/lift/`. Mailbox users get
a 403; a suspension outside the caller's domains is a 404.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.permissions import IsAdminRole
from apps.core.exceptions import NotFoundError
from apps.threats import selectors
from apps.threats.api.common import ERRORS, READ_ERRORS, id_parameter
from apps.threats.models import SubmissionSuspension
from apps.threats.services.behaviour import suspension_lift

ID_PARAMETER = id_parameter("Suspension id.")
ACTIVE_PARAMETER = OpenApiParameter(
    "active",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    description="Only active (true) or lifted (false) ones.",
)


class SuspensionOutputSerializer(serializers.ModelSerializer):
    mailbox_address = serializers.CharField(source="mailbox.address", read_only=True)
    domain = serializers.IntegerField(source="mailbox.domain_id", read_only=True)
    is_active = serializers.SerializerMethodField(
        help_text="Sending is stopped until an administrator lifts it."
    )
    lifted_by = serializers.SerializerMethodField(
        help_text="Email of the administrator who restored sending."
    )
    details = serializers.JSONField(
        read_only=True, help_text="The hour's counts and the mailbox's baseline when it was suspended."
    )

    class Meta:
        model = SubmissionSuspension
        fields = [
            "id",
            "mailbox",
            "mailbox_address",
            "domain",
            "reason",
            "details",
            "is_active",
            "created_at",
            "lifted_at",
            "lifted_by",
        ]
        read_only_fields = fields

    def get_is_active(self, obj: SubmissionSuspension) -> bool:
        return obj.lifted_at is None

    def get_lifted_by(self, obj: SubmissionSuspension) -> str | None:
        return obj.lifted_by.email if obj.lifted_by is not None else None


class SuspensionViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Mailboxes whose submission was suspended, newest first; lift one to restore sending."""

    permission_classes = [IsAdminRole]
    serializer_class = SuspensionOutputSerializer
    queryset = SubmissionSuspension.objects.none()  # for the schema; requests use the selector
    lookup_value_regex = r"\d+"
    ordering_fields = ["created_at", "lifted_at"]
    search_fields = ["mailbox__address", "reason"]

    def get_queryset(self) -> QuerySet[SubmissionSuspension]:
        rows = selectors.suspensions_visible_to(self.request.user).order_by("-created_at", "-id")
        active = self.request.query_params.get("active")
        if active in ("true", "1"):
            rows = rows.filter(lifted_at__isnull=True)
        elif active in ("false", "0"):
            rows = rows.filter(lifted_at__isnull=False)
        return rows

    def get_object(self) -> SubmissionSuspension:
        suspension = selectors.suspensions_visible_to(self.request.user).filter(pk=self.kwargs["pk"]).first()
        if suspension is None:
            raise NotFoundError("No such suspension.")
        return suspension

    @extend_schema(parameters=[ACTIVE_PARAMETER])
    def list(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(parameters=[ID_PARAMETER], responses={200: SuspensionOutputSerializer, **READ_ERRORS})
    def retrieve(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        parameters=[ID_PARAMETER], request=None, responses={200: SuspensionOutputSerializer, **ERRORS}
    )
    @action(detail=True, methods=["post"])
    def lift(self, request: Request, pk: str | None = None) -> Response:
        """Restore sending for the mailbox. 409 when it was already restored."""
        suspension = suspension_lift(actor=request.user, suspension=self.get_object(), request=request)
        return Response(SuspensionOutputSerializer(suspension).data)
