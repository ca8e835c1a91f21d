"""/api/v1/audit-events/: the audit log, its chain check and its export."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import django_filters
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from apps.compliance import services
from apps.compliance.models import AuditEvent
from apps.core.api.permissions import IsAdminRole

EXPORT_COLUMNS = (
    "id",
    "created_at",
    "actor_id",
    "actor_display",
    "actor_role",
    "action",
    "target_type",
    "target_id",
    "target_display",
    "changes",
    "ip",
    "user_agent",
    "request_id",
    "pseudonymised",
    "prev_hash",
    "hash",
)


class IsSuperadmin(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_superadmin)


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.CharFilter(
        help_text='Exact action, or a prefix ending in "." (e.g. "auth.").', method="filter_action"
    )
    actor = django_filters.NumberFilter(field_name="actor_id", help_text="Actor user id.")
    actor_email = django_filters.CharFilter(field_name="actor_display", lookup_expr="iexact")
    target_type = django_filters.CharFilter()
    target_id = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "actor_email", "target_type", "target_id", "since", "until"]

    def filter_action(self, queryset: QuerySet[AuditEvent], name: str, value: str) -> QuerySet[AuditEvent]:
        if value.endswith("."):
            return queryset.filter(action__startswith=value)
        return queryset.filter(action=value)


class AuditEventOutputSerializer(serializers.ModelSerializer):
    pseudonymised = serializers.SerializerMethodField()

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_display",
            "actor_role",
            "action",
            "target_type",
            "target_id",
            "target_display",
            "changes",
            "ip",
            "user_agent",
            "request_id",
            "pseudonymised",
            "prev_hash",
            "hash",
        ]

    def get_pseudonymised(self, event: AuditEvent) -> bool:
        return event.pseudonymised_at is not None


class AuditVerifyOutputSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    first_broken_id = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)


class CsvRenderer(BaseRenderer):
    """Lets `?format=csv` through content negotiation; the export streams its own body."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: object, accepted_media_type: str | None = None, renderer_context: dict | None = None
    ) -> bytes:
        return b"" if data is None else str(data).encode()


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_rows(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for event in events.iterator(chunk_size=500):
        row = services.audit_event_as_dict(event)
        row["changes"] = json.dumps(row["changes"], sort_keys=True)
        yield writer.writerow([_csv_safe(row[column]) for column in EXPORT_COLUMNS])


def _csv_safe(value: object) -> object:
    # A spreadsheet would run a cell starting with = + - @ as a formula (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _json_rows(events: QuerySet[AuditEvent]) -> Iterator[str]:
    yield "["
    first = True
    for event in events.iterator(chunk_size=500):
        yield ("" if first else ",") + json.dumps(services.audit_event_as_dict(event), default=str)
        first = False
    yield "]"


@extend_schema_view(
    list=extend_schema(summary="Audit events in the caller's scope, newest first"),
    retrieve=extend_schema(summary="One audit event"),
)
class AuditEventViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Superadmins read every event; domain admins the events about their domains."""

    permission_classes = [IsAdminRole]
    serializer_class = AuditEventOutputSerializer
    queryset = AuditEvent.objects.none()  # for the schema; requests go through get_queryset
    filterset_class = AuditEventFilter
    search_fields: list[str] = []
    ordering_fields = ["id", "created_at"]

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return services.audit_event_list(actor=self.request.user)

    @extend_schema(
        summary="Check the hash chain",
        responses={200: AuditVerifyOutputSerializer},
    )
    @action(detail=False, methods=["get"], permission_classes=[IsSuperadmin])
    def verify(self, request: Request) -> Response:
        result = services.audit_verify()
        return Response(
            AuditVerifyOutputSerializer(
                {
                    "ok": result.ok,
                    "checked": result.checked,
                    "first_broken_id": result.first_broken_id,
                    "reason": result.reason,
                }
            ).data
        )

    @extend_schema(
        summary="Download the filtered events as CSV or JSON (streamed)",
        parameters=[
            OpenApiParameter(
                "format", OpenApiTypes.STR, enum=["csv", "json"], description="csv (default) or json"
            ),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV, one event per row"),
            (200, "application/json"): AuditEventOutputSerializer(many=True),
        },
    )
    @action(
        detail=False, methods=["get"], renderer_classes=[CsvRenderer, JSONRenderer], pagination_class=None
    )
    def export(self, request: Request) -> StreamingHttpResponse:
        events = self.filter_queryset(self.get_queryset()).order_by("id")
        if request.query_params.get("format") == "json":
            response = StreamingHttpResponse(_json_rows(events), content_type="application/json")
            response["Content-Disposition"] = 'attachment; filename="audit-events.json"'
        else:
            response = StreamingHttpResponse(_csv_rows(events), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="audit-events.csv"'
        return response
