"""REST API for app passwords: /api/v1/app-passwords/.

An app password lets a device send mail (SMTP AUTH) as a mailbox without knowing the
mailbox password, and can be revoked on its own. Mailbox users manage those of their own
mailboxes, administrators those of the mailboxes they administer; anything else is a 404.
The secret is returned once, by create; only a hash of it is stored.
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.accounts.mfa import mfa_session_require
from apps.core.addresses import AddressError, parse_address
from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.mailboxes.models import AppPassword
from apps.relay import selectors, services


class AppPasswordFilter(django_filters.FilterSet):
    mailbox = django_filters.CharFilter(method="filter_mailbox", help_text="Mailbox address.")
    revoked = django_filters.BooleanFilter(
        field_name="revoked_at", lookup_expr="isnull", exclude=True, help_text="Only revoked, or only active."
    )

    class Meta:
        model = AppPassword
        fields = ["mailbox", "revoked"]

    def filter_mailbox(self, queryset: QuerySet[AppPassword], name: str, value: str) -> QuerySet[AppPassword]:
        try:
            address = parse_address(value).value
        except AddressError:
            return queryset.none()
        return queryset.filter(mailbox__address=address)


class AppPasswordOutputSerializer(serializers.ModelSerializer):
    mailbox = serializers.CharField(source="mailbox.address", read_only=True)
    is_active = serializers.BooleanField(source="is_usable", read_only=True)

    class Meta:
        model = AppPassword
        fields = [
            "id",
            "mailbox",
            "name",
            "is_active",
            "created_at",
            "last_used_at",
            "last_used_ip",
            "revoked_at",
        ]
        read_only_fields = fields


class AppPasswordCreatedOutputSerializer(AppPasswordOutputSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="Use it as the SMTP password. Shown only in this response."
    )

    class Meta(AppPasswordOutputSerializer.Meta):
        fields = [*AppPasswordOutputSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class AppPasswordCreateInputSerializer(StrictInputSerializer):
    mailbox = serializers.CharField(max_length=254, help_text="Address of the mailbox it logs in to.")
    name = serializers.CharField(max_length=100, help_text="Which device or program uses it.")


@extend_schema_view(
    list=extend_schema(responses={200: AppPasswordOutputSerializer(many=True)}),
    retrieve=extend_schema(responses={200: AppPasswordOutputSerializer, 404: ErrorSerializer}),
)
class AppPasswordViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """App passwords of the mailboxes the caller manages (their own, or administered)."""

    serializer_class = AppPasswordOutputSerializer
    filterset_class = AppPasswordFilter
    ordering_fields = ["created_at", "last_used_at", "name"]

    def get_queryset(self) -> QuerySet[AppPassword]:
        return selectors.app_password_list(self.request.user)

    @extend_schema(
        request=AppPasswordCreateInputSerializer,
        responses={
            201: AppPasswordCreatedOutputSerializer,
            400: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
    )
    def create(self, request: Request) -> Response:
        """Create an app password; the response carries its secret, shown only this once."""
        data = AppPasswordCreateInputSerializer.validated(request.data)
        mfa_session_require(request)  # a session must have passed its second factor
        mailbox = selectors.app_password_mailbox_get(request.user, data["mailbox"])
        issued = services.app_password_create(actor=request.user, mailbox=mailbox, name=data["name"])
        body = dict(AppPasswordOutputSerializer(issued.app_password).data, secret=issued.secret)
        return Response(body, status=201)

    @extend_schema(responses={204: None, 404: ErrorSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Revoke an app password: it stops working at once. Revoking twice is harmless."""
        services.app_password_revoke(actor=request.user, app_password=self.get_object())
        return Response(status=204)
