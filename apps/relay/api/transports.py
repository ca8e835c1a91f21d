"""REST API for transport rules: /api/v1/transport-rules/.

A transport rule sends the mail for one recipient domain ("*": every domain, a smarthost)
to a fixed host instead of the domain's MX hosts. Rules route everybody's mail, so only
superadmins may read or change them; everyone else gets a 403. The relay password is
write-only: responses only say whether one is set.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.relay import selectors, services
from apps.relay.models import TransportRule

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


class IsSuperadminRole(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_superadmin)


class TransportRuleOutputSerializer(serializers.ModelSerializer):
    has_password = serializers.SerializerMethodField(help_text="Whether a relay password is stored.")

    class Meta:
        model = TransportRule
        fields = [
            "id",
            "domain",
            "host",
            "port",
            "tls",
            "verify_certificate",
            "username",
            "has_password",
            "description",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_has_password(self, rule: TransportRule) -> bool:
        return bool(rule.password)


class TransportRuleUpdateInputSerializer(StrictInputSerializer):
    host = serializers.CharField(max_length=253, required=False)
    port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    tls = serializers.ChoiceField(choices=TransportRule.Tls.choices, required=False)
    verify_certificate = serializers.BooleanField(
        required=False, help_text="Check the host's certificate and name (with STARTTLS or implicit TLS)."
    )
    username = serializers.CharField(max_length=254, allow_blank=True, required=False)
    password = serializers.CharField(
        max_length=256,
        allow_blank=True,
        required=False,
        write_only=True,
        style={"input_type": "password"},
        help_text="SMTP AUTH password for the host. Omit to keep the stored one; empty clears it.",
    )
    description = serializers.CharField(max_length=255, allow_blank=True, required=False)
    is_active = serializers.BooleanField(required=False)


class TransportRuleCreateInputSerializer(TransportRuleUpdateInputSerializer):
    domain = serializers.CharField(max_length=253, help_text='Recipient domain, or "*" for every domain.')
    host = serializers.CharField(max_length=253)
    port = serializers.IntegerField(min_value=1, max_value=65535, default=25)


@extend_schema_view(
    list=extend_schema(responses={200: TransportRuleOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(
        responses={200: TransportRuleOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
    ),
)
class TransportRuleViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Transport rules (superadmins only). Mail for a domain with an active rule goes to the
    rule's host; a "*" rule catches every other domain."""

    permission_classes = [IsSuperadminRole]
    serializer_class = TransportRuleOutputSerializer
    search_fields = ["domain", "host", "description"]
    ordering_fields = ["domain", "host", "created_at"]

    def get_queryset(self) -> QuerySet[TransportRule]:
        return selectors.transport_rule_list(self.request.user)

    @extend_schema(
        request=TransportRuleCreateInputSerializer, responses={201: TransportRuleOutputSerializer, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        data = TransportRuleCreateInputSerializer.validated(request.data)
        rule = services.transport_rule_create(actor=request.user, **data)
        return Response(TransportRuleOutputSerializer(rule).data, status=201)

    @extend_schema(
        request=TransportRuleUpdateInputSerializer, responses={200: TransportRuleOutputSerializer, **ERRORS}
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change a rule; the domain is fixed (delete the rule and add another instead)."""
        data = TransportRuleUpdateInputSerializer.validated(request.data)
        rule = services.transport_rule_update(rule=self.get_object(), actor=request.user, **data)
        return Response(TransportRuleOutputSerializer(rule).data)

    @extend_schema(responses={204: None, 403: ErrorSerializer, 404: ErrorSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        services.transport_rule_delete(rule=self.get_object(), actor=request.user)
        return Response(status=204)
