"""REST API for content rules: /api/v1/content-rules/.

A content rule is a regular expression matched against the body text, the subject or
one header; a match adds the rule's score (negative scores lower it). Administrators
only: superadmins keep the server-wide rules and every domain's, a domain admin their
domains'. Mailbox users get a 403; rules outside the caller's scope are a 404.
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
from apps.core.api.permissions import IsAdminRole
from apps.core.api.serializers import StrictInputSerializer
from apps.relay.api.queue import NamedEnumField
from apps.threats import selectors
from apps.threats.api.common import ERRORS, READ_ERRORS, body_domain, id_parameter
from apps.threats.models import ContentRule
from apps.threats.services import rules

ID_PARAMETER = id_parameter("Content rule id.")


def _target_field(**kwargs: object) -> NamedEnumField:
    return NamedEnumField(schema_name="ContentRuleTargetEnum", choices=ContentRule.Target.choices, **kwargs)


class ContentRuleFilter(django_filters.FilterSet):
    target = django_filters.ChoiceFilter(choices=ContentRule.Target.choices)
    domain = django_filters.NumberFilter(field_name="domain_id", help_text="Rules of this domain id.")
    server_wide = django_filters.BooleanFilter(
        field_name="domain",
        lookup_expr="isnull",
        help_text="Only server-wide (true) or only domain rules (false).",
    )
    is_active = django_filters.BooleanFilter()

    class Meta:
        model = ContentRule
        fields = ["target", "domain", "server_wide", "is_active"]


class ContentRuleOutputSerializer(serializers.ModelSerializer):
    target = _target_field(read_only=True)
    header_name = serializers.CharField(read_only=True, help_text="The header matched, for target header.")
    domain_name = serializers.CharField(source="domain.name", read_only=True, allow_null=True, default=None)

    class Meta:
        model = ContentRule
        fields = [
            "id",
            "name",
            "target",
            "header_name",
            "pattern",
            "score",
            "is_active",
            "domain",
            "domain_name",
            "created_at",
        ]
        read_only_fields = fields


class ContentRuleUpdateInputSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=100, required=False)
    target = _target_field(required=False)
    header_name = serializers.CharField(
        max_length=100, required=False, allow_blank=True, help_text="Needed for target header, e.g. X-Mailer."
    )
    pattern = serializers.CharField(
        max_length=1000,
        required=False,
        trim_whitespace=False,
        help_text="A regular expression, case-insensitive unless it starts with (?-i).",
    )
    score = serializers.FloatField(required=False, help_text="Added on a match; negative lowers the score.")
    is_active = serializers.BooleanField(required=False)
    domain = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="The domain it applies to; null: every domain (superadmins).",
    )


class ContentRuleCreateInputSerializer(ContentRuleUpdateInputSerializer):
    name = serializers.CharField(max_length=100)
    target = _target_field()
    pattern = serializers.CharField(
        max_length=1000,
        trim_whitespace=False,
        help_text="A regular expression, case-insensitive unless it starts with (?-i).",
    )
    score = serializers.FloatField(help_text="Added on a match; negative lowers the score.")
    domain = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The domain it applies to; null: every domain (superadmins).",
    )


@extend_schema_view(
    list=extend_schema(responses={200: ContentRuleOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(
        parameters=[ID_PARAMETER], responses={200: ContentRuleOutputSerializer, **READ_ERRORS}
    ),
)
class ContentRuleViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Content rules in your scope (administrators only)."""

    permission_classes = [IsAdminRole]
    serializer_class = ContentRuleOutputSerializer
    filterset_class = ContentRuleFilter
    search_fields = ["name", "pattern", "header_name"]
    ordering_fields = ["name", "score", "created_at"]
    lookup_value_regex = "[^/]+"  # a malformed id reaches get_object: a JSON 404

    def get_queryset(self) -> QuerySet[ContentRule]:
        return selectors.content_rules_visible_to(self.request.user)

    @extend_schema(
        request=ContentRuleCreateInputSerializer, responses={201: ContentRuleOutputSerializer, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        """Add a rule. 400 for a pattern that does not compile, is too slow or matches empty
        text, and for a header rule without a header name."""
        data = ContentRuleCreateInputSerializer.validated(request.data)
        data["domain"] = body_domain(request.user, data["domain"])
        rule = rules.content_rule_create(actor=request.user, request=request, **data)
        return Response(ContentRuleOutputSerializer(rule).data, status=201)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=ContentRuleUpdateInputSerializer,
        responses={200: ContentRuleOutputSerializer, **ERRORS},
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change a rule; fields left out keep their value."""
        rule = self.get_object()
        data = ContentRuleUpdateInputSerializer.validated(request.data)
        if "domain" in data:
            data["domain"] = body_domain(request.user, data["domain"])
        rule = rules.content_rule_update(actor=request.user, rule=rule, request=request, **data)
        return Response(ContentRuleOutputSerializer(rule).data)

    @extend_schema(
        parameters=[ID_PARAMETER], responses={204: None, 403: ErrorSerializer, 404: ErrorSerializer}
    )
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        rules.content_rule_delete(actor=request.user, rule=self.get_object(), request=request)
        return Response(status=204)
