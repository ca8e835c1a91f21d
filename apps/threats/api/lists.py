"""REST API for allow and block lists: /api/v1/threat-lists/.

An entry matches a sender address, a sender domain (and its sub-domains) or a client IP
network. Scopes: server-wide (superadmins), a domain (its administrators) or one mailbox
(its owner, and its domain's administrators). Mailbox users keep their own lists here
too. Entries outside the caller's scope are a 404.
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

from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.relay.api.queue import NamedEnumField
from apps.threats import selectors
from apps.threats.api.common import ERRORS, READ_ERRORS, body_domain, body_mailbox, id_parameter
from apps.threats.models import ListEntry
from apps.threats.services import rules

ID_PARAMETER = id_parameter("List entry id.")
SCOPES = [("server", "Server-wide"), ("domain", "A domain"), ("mailbox", "One mailbox")]


def _kind_field(**kwargs: object) -> NamedEnumField:
    return NamedEnumField(schema_name="ListKindEnum", choices=ListEntry.Kind.choices, **kwargs)


def _match_field(**kwargs: object) -> NamedEnumField:
    return NamedEnumField(schema_name="ListMatchEnum", choices=ListEntry.Match.choices, **kwargs)


class ListEntryFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=ListEntry.Kind.choices)
    match = django_filters.ChoiceFilter(choices=ListEntry.Match.choices)
    scope = django_filters.ChoiceFilter(choices=SCOPES, method="filter_scope")
    domain = django_filters.NumberFilter(field_name="domain_id", help_text="Entries of this domain id.")
    mailbox = django_filters.NumberFilter(field_name="mailbox_id", help_text="Entries of this mailbox id.")
    value = django_filters.CharFilter(
        field_name="value", lookup_expr="icontains", help_text="Part of the value."
    )

    class Meta:
        model = ListEntry
        fields = ["kind", "match", "scope", "domain", "mailbox", "value"]

    def filter_scope(self, queryset: QuerySet[ListEntry], name: str, value: str) -> QuerySet[ListEntry]:
        if value == "mailbox":
            return queryset.filter(mailbox__isnull=False)
        if value == "domain":
            return queryset.filter(domain__isnull=False)
        return queryset.filter(domain__isnull=True, mailbox__isnull=True)


class ListEntryOutputSerializer(serializers.ModelSerializer):
    kind = _kind_field(read_only=True)
    match = _match_field(read_only=True)
    value = serializers.CharField(
        read_only=True, help_text="Normalised: lower-case address, IDNA domain, CIDR."
    )
    scope = serializers.SerializerMethodField(help_text="server, domain or mailbox.")
    domain_name = serializers.CharField(source="domain.name", read_only=True, allow_null=True, default=None)
    mailbox_address = serializers.CharField(
        source="mailbox.address", read_only=True, allow_null=True, default=None
    )
    created_by = serializers.CharField(
        source="created_by.email", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = ListEntry
        fields = [
            "id",
            "kind",
            "match",
            "value",
            "scope",
            "domain",
            "domain_name",
            "mailbox",
            "mailbox_address",
            "comment",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_scope(self, entry: ListEntry) -> str:
        if entry.mailbox_id is not None:
            return "mailbox"
        return "domain" if entry.domain_id is not None else "server"


class ListEntryCreateInputSerializer(StrictInputSerializer):
    kind = _kind_field()
    match = _match_field()
    value = serializers.CharField(
        max_length=320, help_text="A sender address, a sender domain, or an IP address or network (CIDR)."
    )
    domain = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="A domain's entry (its administrators)."
    )
    mailbox = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="A mailbox's own entry. Neither: server-wide.",
    )
    comment = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


@extend_schema_view(
    list=extend_schema(responses={200: ListEntryOutputSerializer(many=True)}),
    retrieve=extend_schema(
        parameters=[ID_PARAMETER], responses={200: ListEntryOutputSerializer, **READ_ERRORS}
    ),
)
class ListEntryViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Allow and block list entries in your scope. Within a scope an allow entry wins over
    a block entry; a mailbox's own list decides before its domain's, and that before the
    server's. Malware and policy hits are held whatever the lists say."""

    serializer_class = ListEntryOutputSerializer
    filterset_class = ListEntryFilter
    search_fields = ["value", "comment"]
    ordering_fields = ["kind", "match", "value", "created_at"]
    lookup_value_regex = "[^/]+"  # a malformed id reaches get_object: a JSON 404

    def get_queryset(self) -> QuerySet[ListEntry]:
        return (
            selectors.list_entries_visible_to(self.request.user)
            .select_related("created_by")
            .order_by("kind", "match", "value", "id")
        )

    @extend_schema(
        request=ListEntryCreateInputSerializer, responses={201: ListEntryOutputSerializer, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        """Add an entry. 400 for a value that is not an address, domain or network (or a domain
        and a mailbox both); 403 outside your scope; 409 when it is listed already."""
        data = ListEntryCreateInputSerializer.validated(request.data)
        entry = rules.list_entry_create(
            actor=request.user,
            kind=data["kind"],
            match=data["match"],
            value=data["value"],
            domain=body_domain(request.user, data["domain"]),
            mailbox=body_mailbox(request.user, data["mailbox"]),
            comment=data["comment"],
            request=request,
        )
        return Response(ListEntryOutputSerializer(entry).data, status=201)

    @extend_schema(
        parameters=[ID_PARAMETER], responses={204: None, 403: ErrorSerializer, 404: ErrorSerializer}
    )
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        rules.list_entry_delete(actor=request.user, entry=self.get_object(), request=request)
        return Response(status=204)
