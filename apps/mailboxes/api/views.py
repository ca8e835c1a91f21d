from __future__ import annotations

from dataclasses import asdict

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import ReadOnlyOrAdminRole, ReadOnlyOrSuperadmin
from apps.mailboxes import selectors, services
from apps.mailboxes.api.filters import AliasFilter, DomainFilter, MailboxFilter
from apps.mailboxes.api.serializers import (
    AliasCreateInputSerializer,
    AliasOutputSerializer,
    AliasUpdateInputSerializer,
    DeletionReportSerializer,
    DomainCreateInputSerializer,
    DomainOutputSerializer,
    DomainUpdateInputSerializer,
    MailboxCreateInputSerializer,
    MailboxOutputSerializer,
    MailboxUpdateInputSerializer,
)
from apps.mailboxes.models import Alias, Domain, Mailbox

ERRORS = {400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


class DomainViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Hosted domains in the caller's scope. Superadmins add, change and delete them."""

    permission_classes = [ReadOnlyOrSuperadmin]
    serializer_class = DomainOutputSerializer
    filterset_class = DomainFilter
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self) -> QuerySet[Domain]:
        return selectors.domain_list(actor=self.request.user)

    @extend_schema(request=DomainCreateInputSerializer, responses={201: DomainOutputSerializer, **ERRORS})
    def create(self, request: Request) -> Response:
        data = DomainCreateInputSerializer.validated(request.data)
        domain = services.domain_create(actor=request.user, **data)
        return Response(self._out(domain), status=201)

    @extend_schema(request=DomainUpdateInputSerializer, responses={200: DomainOutputSerializer, **ERRORS})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = DomainUpdateInputSerializer.validated(request.data)
        domain = services.domain_update(actor=request.user, domain=self.get_object(), **data)
        return Response(self._out(domain))

    @extend_schema(responses={200: DeletionReportSerializer, **ERRORS})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        report = services.domain_delete(actor=request.user, domain=self.get_object())
        return Response(asdict(report))

    def _out(self, domain: Domain) -> dict:
        fresh = selectors.domain_get(actor=self.request.user, domain_id=domain.pk)
        return DomainOutputSerializer(fresh).data


class MailboxViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Mailboxes in the caller's scope. Domain admins manage their domains' mailboxes;
    owners may change their own password and display name."""

    serializer_class = MailboxOutputSerializer
    filterset_class = MailboxFilter
    search_fields = ["address", "display_name", "owner__email"]
    ordering_fields = ["address", "created_at", "used_bytes"]

    def get_permissions(self):
        if self.action == "partial_update":
            return super().get_permissions()  # owners may update their own mailbox
        return [ReadOnlyOrAdminRole()]

    def get_queryset(self) -> QuerySet[Mailbox]:
        return selectors.mailbox_list(actor=self.request.user)

    @extend_schema(request=MailboxCreateInputSerializer, responses={201: MailboxOutputSerializer, **ERRORS})
    def create(self, request: Request) -> Response:
        data = MailboxCreateInputSerializer.validated(request.data)
        owner = data.pop("owner", None)
        mailbox = services.mailbox_create(actor=request.user, owner_email=owner, **data)
        return Response(MailboxOutputSerializer(mailbox).data, status=201)

    @extend_schema(request=MailboxUpdateInputSerializer, responses={200: MailboxOutputSerializer, **ERRORS})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = MailboxUpdateInputSerializer.validated(request.data)
        mailbox = services.mailbox_update(actor=request.user, mailbox=self.get_object(), **data)
        return Response(MailboxOutputSerializer(mailbox).data)

    @extend_schema(responses={200: DeletionReportSerializer, **ERRORS})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        report = services.mailbox_delete(actor=request.user, mailbox=self.get_object())
        return Response(asdict(report))


class AliasViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Aliases and catch-alls (`@domain`) in the caller's scope."""

    permission_classes = [ReadOnlyOrAdminRole]
    serializer_class = AliasOutputSerializer
    filterset_class = AliasFilter
    search_fields = ["address", "description"]
    ordering_fields = ["address", "created_at"]

    def get_queryset(self) -> QuerySet[Alias]:
        return selectors.alias_list(actor=self.request.user)

    @extend_schema(request=AliasCreateInputSerializer, responses={201: AliasOutputSerializer, **ERRORS})
    def create(self, request: Request) -> Response:
        data = AliasCreateInputSerializer.validated(request.data)
        alias = services.alias_create(actor=request.user, **data)
        return Response(self._out(alias), status=201)

    @extend_schema(request=AliasUpdateInputSerializer, responses={200: AliasOutputSerializer, **ERRORS})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = AliasUpdateInputSerializer.validated(request.data)
        alias = services.alias_update(actor=request.user, alias=self.get_object(), **data)
        return Response(self._out(alias))

    @extend_schema(responses={200: DeletionReportSerializer, **ERRORS})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        report = services.alias_delete(actor=request.user, alias=self.get_object())
        return Response(asdict(report))

    def _out(self, alias: Alias) -> dict:
        return AliasOutputSerializer(selectors.alias_get(actor=self.request.user, alias_id=alias.pk)).data
