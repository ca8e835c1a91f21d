from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.alerts import selectors, services
from apps.alerts.api.filters import AlertFilter
from apps.alerts.api.serializers import AlertOutputSerializer
from apps.alerts.models import Alert
from apps.core.api.permissions import IsAdminRole


class AlertViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Alerts in the caller's scope, newest first."""

    permission_classes = [IsAdminRole]
    serializer_class = AlertOutputSerializer
    filterset_class = AlertFilter
    ordering_fields = ["created_at", "level"]

    def get_queryset(self) -> QuerySet[Alert]:
        return selectors.alert_list(actor=self.request.user)

    @extend_schema(request=None, responses={200: AlertOutputSerializer})
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        alert = services.alert_acknowledge(alert=self.get_object())
        return Response(AlertOutputSerializer(alert).data)
