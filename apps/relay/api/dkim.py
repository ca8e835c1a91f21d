"""REST API for DKIM keys: /api/v1/dkim-keys/.

Keys are scoped to the domains the caller administers; a key of any other domain is a 404.
Responses carry the public key as its DNS record, never the private key.
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import DestroyModelMixin, ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import IsAdminRole
from apps.core.api.serializers import StrictInputSerializer
from apps.relay import services
from apps.relay.models import DkimKey

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


class DkimKeyFilter(django_filters.FilterSet):
    domain = django_filters.CharFilter(
        field_name="domain__name", lookup_expr="iexact", help_text="Domain name (A-label)."
    )

    class Meta:
        model = DkimKey
        fields = ["domain", "algorithm", "is_active"]


class DkimKeyOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.name", read_only=True)
    state = serializers.SerializerMethodField(help_text="active, pending (never active yet) or retired.")
    dns_name = serializers.SerializerMethodField(help_text="Owner name of the TXT record to publish.")
    dns_value = serializers.SerializerMethodField(help_text="Value of the TXT record to publish.")

    class Meta:
        model = DkimKey
        fields = [
            "id",
            "domain",
            "selector",
            "algorithm",
            "is_active",
            "state",
            "created_at",
            "retired_at",
            "dns_name",
            "dns_value",
        ]
        read_only_fields = fields

    def get_state(self, key: DkimKey) -> str:
        return services.dkim_key_state(key)

    def get_dns_name(self, key: DkimKey) -> str:
        return services.dkim_dns_record(key)[0]

    def get_dns_value(self, key: DkimKey) -> str:
        return services.dkim_dns_record(key)[1]


class DkimKeyCreateInputSerializer(StrictInputSerializer):
    domain = serializers.CharField(max_length=253)
    algorithm = serializers.ChoiceField(choices=DkimKey.Algorithm.choices, default=DkimKey.Algorithm.RSA)
    selector = serializers.CharField(
        max_length=63, required=False, help_text="Defaults to a3-YYYYMMDD (with -2, -3 … when taken)."
    )


class DkimKeyRotateInputSerializer(StrictInputSerializer):
    domain = serializers.CharField(max_length=253)
    algorithm = serializers.ChoiceField(
        choices=DkimKey.Algorithm.choices,
        required=False,
        help_text="Defaults to the algorithm of the domain's active key.",
    )
    activate = serializers.BooleanField(
        default=False,
        help_text="Sign with the new key at once. Leave false to publish its record first, then activate.",
    )


class PublishedStatusOutputSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=[state.value for state in services.PublishedState])
    detail = serializers.CharField()
    dns_name = serializers.CharField(source="name")
    expected = serializers.CharField(help_text="The TXT value that should be published.")
    found = serializers.ListField(child=serializers.CharField(), help_text="TXT values found at dns_name.")


@extend_schema_view(
    list=extend_schema(responses={200: DkimKeyOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(
        responses={200: DkimKeyOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
    ),
)
class DkimKeyViewSet(ListModelMixin, RetrieveModelMixin, DestroyModelMixin, GenericViewSet):
    """DKIM signing keys of the domains the caller administers (superadmins: all)."""

    permission_classes = [IsAdminRole]
    serializer_class = DkimKeyOutputSerializer
    filterset_class = DkimKeyFilter
    search_fields = ["selector", "domain__name"]
    ordering_fields = ["created_at", "selector"]

    def get_queryset(self) -> QuerySet[DkimKey]:
        return services.dkim_key_list(actor=self.request.user)

    @extend_schema(request=DkimKeyCreateInputSerializer, responses={201: DkimKeyOutputSerializer, **ERRORS})
    def create(self, request: Request) -> Response:
        """Generate a key. It signs at once only if the domain has no active key yet."""
        data = DkimKeyCreateInputSerializer.validated(request.data)
        domain = services.dkim_domain_get_by_name(actor=request.user, name=data.pop("domain"))
        key = services.dkim_key_create(actor=request.user, domain=domain, **data)
        return Response(DkimKeyOutputSerializer(key).data, status=201)

    @extend_schema(responses={204: None, **ERRORS})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete a pending or retired key, or the domain's only key (which stops signing)."""
        services.dkim_key_delete(actor=request.user, key=self.get_object())
        return Response(status=204)

    @extend_schema(request=None, responses={200: DkimKeyOutputSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        """Make this key the domain's signer; the previous one is retired."""
        key = services.dkim_key_activate(actor=request.user, key=self.get_object())
        return Response(DkimKeyOutputSerializer(key).data)

    @extend_schema(request=None, responses={200: PublishedStatusOutputSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def check(self, request: Request, pk: str | None = None) -> Response:
        """Look up the key's TXT record in DNS and compare it with the key."""
        status = services.dkim_check_published(self.get_object())
        return Response(PublishedStatusOutputSerializer(status).data)

    @extend_schema(request=DkimKeyRotateInputSerializer, responses={201: DkimKeyOutputSerializer, **ERRORS})
    @action(detail=False, methods=["post"])
    def rotate(self, request: Request) -> Response:
        """Add a key under a new selector; with `activate` it signs at once."""
        data = DkimKeyRotateInputSerializer.validated(request.data)
        domain = services.dkim_domain_get_by_name(actor=request.user, name=data.pop("domain"))
        key = services.dkim_key_rotate(actor=request.user, domain=domain, **data)
        return Response(DkimKeyOutputSerializer(key).data, status=201)
