"""REST API for the verdict policy of each domain: /api/v1/threat-policies/{domain_id}/.

A domain's policy sets the score thresholds (a score at or above one triggers its action:
spam header, Junk folder, quarantine, rejection at SMTP time), what happens to mail that
cannot be scanned or when a scanner is down, how long the quarantine keeps mail, the
digest default and whether the Bayesian classifier is used. A domain that never changed
its policy has the server's defaults (`is_default` true). Administrators of the domain
only; other domains are a 404, mailbox users get a 403.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import IsAdminRole
from apps.core.api.serializers import StrictInputSerializer
from apps.core.exceptions import NotFoundError
from apps.mailboxes.models import Domain
from apps.relay.api.queue import NamedEnumField
from apps.threats import selectors
from apps.threats.api.common import ERRORS, READ_ERRORS, id_parameter
from apps.threats.models import Action, DigestFrequency, DomainPolicy, ScannerFailureMode
from apps.threats.services import rules

DOMAIN_PARAMETER = id_parameter("Domain id.", name="domain_id")
THRESHOLD_HELP = "Thresholds must not decrease: header ≤ junk ≤ quarantine ≤ reject."


def _action_field(**kwargs: object) -> NamedEnumField:
    return NamedEnumField(schema_name="VerdictActionEnum", choices=Action.choices, **kwargs)


def _failure_field(**kwargs: object) -> NamedEnumField:
    return NamedEnumField(schema_name="ScannerFailureModeEnum", choices=ScannerFailureMode.choices, **kwargs)


def _digest_field(**kwargs: object) -> NamedEnumField:
    return NamedEnumField(schema_name="DigestFrequencyEnum", choices=DigestFrequency.choices, **kwargs)


class DomainPolicyOutputSerializer(serializers.ModelSerializer):
    domain_name = serializers.CharField(source="domain.name", read_only=True)
    is_default = serializers.SerializerMethodField(help_text="No policy saved: the server defaults apply.")
    unscannable_action = _action_field(read_only=True)
    scanner_failure = _failure_field(read_only=True)
    digest_default = _digest_field(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = DomainPolicy
        fields = [
            "domain",
            "domain_name",
            "is_default",
            "header_score",
            "junk_score",
            "quarantine_score",
            "reject_score",
            "unscannable_action",
            "scanner_failure",
            "quarantine_days",
            "digest_default",
            "bayes_enabled",
            "updated_at",
        ]
        read_only_fields = fields

    def get_is_default(self, policy: DomainPolicy) -> bool:
        return policy.pk is None


class DomainPolicyInputSerializer(StrictInputSerializer):
    """PUT: every field. PATCH: the fields to change."""

    header_score = serializers.FloatField(help_text=f"Add the X-Spam-Flag header. {THRESHOLD_HELP}")
    junk_score = serializers.FloatField(help_text="File to the Junk folder.")
    quarantine_score = serializers.FloatField(help_text="Hold in the quarantine.")
    reject_score = serializers.FloatField(help_text="Reject at SMTP time, when the score is known then.")
    unscannable_action = _action_field(help_text="For mail that cannot be scanned (reject holds it instead).")
    scanner_failure = _failure_field(help_text="When a scanner is down or times out.")
    quarantine_days = serializers.IntegerField(
        min_value=1, max_value=rules.MAX_QUARANTINE_DAYS, help_text="Days held mail is kept."
    )
    digest_default = _digest_field(help_text="How often users get a quarantine digest unless they choose.")
    bayes_enabled = serializers.BooleanField(help_text="Score with the domain's Bayesian classifier.")


class DomainPolicyViewSet(GenericViewSet):
    """The verdict policy of each domain you administer."""

    permission_classes = [IsAdminRole]
    serializer_class = DomainPolicyOutputSerializer
    queryset = Domain.objects.none()  # for the schema; requests go through selectors
    filter_backends: list = []
    lookup_url_kwarg = "domain_id"
    lookup_value_regex = "[^/]+"  # a malformed id reaches the lookup: a JSON 404

    def get_queryset(self) -> QuerySet[Domain]:
        return (
            selectors.domains_administered(self.request.user).select_related("threat_policy").order_by("name")
        )

    def _domain(self) -> Domain:
        try:
            domain_id = int(self.kwargs["domain_id"])
        except ValueError:
            raise NotFoundError("No such domain.") from None
        domain = self.get_queryset().filter(pk=domain_id).first()
        if domain is None:
            raise NotFoundError("No such domain.")
        return domain

    @extend_schema(responses={200: DomainPolicyOutputSerializer(many=True), 403: ErrorSerializer})
    def list(self, request: Request) -> Response:
        """Every domain you administer with its effective policy, by domain name."""
        page = self.paginate_queryset(self.get_queryset())
        policies = [rules.domain_policy_get(domain=domain) for domain in page]
        return self.get_paginated_response(DomainPolicyOutputSerializer(policies, many=True).data)

    @extend_schema(
        parameters=[DOMAIN_PARAMETER], responses={200: DomainPolicyOutputSerializer, **READ_ERRORS}
    )
    def retrieve(self, request: Request, domain_id: str | None = None) -> Response:
        """The domain's effective policy: its own, or the server defaults."""
        return Response(DomainPolicyOutputSerializer(rules.domain_policy_get(domain=self._domain())).data)

    @extend_schema(
        parameters=[DOMAIN_PARAMETER],
        request=DomainPolicyInputSerializer,
        responses={200: DomainPolicyOutputSerializer, **ERRORS},
    )
    def update(self, request: Request, domain_id: str | None = None) -> Response:
        """Replace the domain's policy (every field)."""
        return self._save(request, partial=False)

    @extend_schema(
        parameters=[DOMAIN_PARAMETER],
        request=DomainPolicyInputSerializer,
        responses={200: DomainPolicyOutputSerializer, **ERRORS},
    )
    def partial_update(self, request: Request, domain_id: str | None = None) -> Response:
        """Change some of the domain's policy; the first change saves the rest of the
        server defaults with it."""
        return self._save(request, partial=True)

    def _save(self, request: Request, *, partial: bool) -> Response:
        domain = self._domain()
        data = DomainPolicyInputSerializer.validated(request.data, partial=partial)
        policy = rules.domain_policy_update(actor=request.user, domain=domain, request=request, **data)
        return Response(DomainPolicyOutputSerializer(policy).data)
