"""REST API for retention and legal holds.

- /api/v1/retention-policies/: CRUD for superadmins; domain admins read the policies on
  their domains and the global ones
- /api/v1/retention-runs/: the history of runs (superadmins); `POST preview/` is a dry run
  that is recorded as a run with `dry_run: true`
- /api/v1/legal-holds/: list and read (superadmins: all; domain admins: holds on their
  domains), create and `POST {id}/release/` (superadmins)

Mailbox users get a 403; objects outside the caller's scope are 404.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from apps.compliance.models import LegalHold, RetentionPolicy, RetentionRun
from apps.compliance.services import holds as hold_services
from apps.compliance.services import retention as retention_services
from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.mailboxes import selectors as mailbox_selectors
from apps.mailboxes.models import Folder

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}
READ_ERRORS = {403: ErrorSerializer, 404: ErrorSerializer}


class AdminReadsSuperadminWrites(BasePermission):
    """Superadmins and domain admins may read (scoped by the selectors); only superadmins
    may write."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_admin):
            return False
        return request.method in SAFE_METHODS or user.is_superadmin


class IsSuperadminRole(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_superadmin)


# --- Retention policies --------------------------------------------------------------------


class RetentionPolicyOutputSerializer(serializers.ModelSerializer):
    domain_name = serializers.CharField(source="domain.name", read_only=True, allow_null=True, default=None)

    class Meta:
        model = RetentionPolicy
        fields = [
            "id",
            "domain",
            "domain_name",
            "folder_special_use",
            "days",
            "is_active",
            "description",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class RetentionPolicyUpdateInputSerializer(StrictInputSerializer):
    folder_special_use = serializers.ChoiceField(
        choices=Folder.SpecialUse.choices,
        required=False,
        allow_blank=True,
        help_text='Only folders of this special use; "" for every folder.',
    )
    days = serializers.IntegerField(min_value=1, required=False, help_text="Delete mail older than this.")
    is_active = serializers.BooleanField(required=False)
    description = serializers.CharField(max_length=255, allow_blank=True, required=False)


class RetentionPolicyCreateInputSerializer(RetentionPolicyUpdateInputSerializer):
    domain_id = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="The domain; null for every domain."
    )
    folder_special_use = serializers.ChoiceField(
        choices=Folder.SpecialUse.choices,
        default="",
        allow_blank=True,
        help_text='Only folders of this special use; "" for every folder.',
    )
    days = serializers.IntegerField(min_value=1, help_text="Delete mail older than this.")
    is_active = serializers.BooleanField(default=True)
    description = serializers.CharField(max_length=255, allow_blank=True, default="")


@extend_schema_view(
    list=extend_schema(responses={200: RetentionPolicyOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(responses={200: RetentionPolicyOutputSerializer, **READ_ERRORS}),
)
class RetentionPolicyViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Retention policies. The most specific active policy applies to each folder: domain
    and folder, then domain, then every domain and folder, then every domain."""

    permission_classes = [AdminReadsSuperadminWrites]
    serializer_class = RetentionPolicyOutputSerializer
    ordering_fields = ["days", "created_at"]

    def get_queryset(self) -> QuerySet[RetentionPolicy]:
        return retention_services.retention_policy_list(actor=self.request.user)

    @extend_schema(
        request=RetentionPolicyCreateInputSerializer,
        responses={201: RetentionPolicyOutputSerializer, **ERRORS},
    )
    def create(self, request: Request) -> Response:
        data = RetentionPolicyCreateInputSerializer.validated(request.data)
        domain_id = data.pop("domain_id")
        domain = (
            mailbox_selectors.domain_get(actor=request.user, domain_id=domain_id)
            if domain_id is not None
            else None
        )
        policy = retention_services.retention_policy_create(actor=request.user, domain=domain, **data)
        return Response(RetentionPolicyOutputSerializer(policy).data, status=201)

    @extend_schema(
        request=RetentionPolicyUpdateInputSerializer,
        responses={200: RetentionPolicyOutputSerializer, **ERRORS},
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change a policy; its domain is fixed."""
        data = RetentionPolicyUpdateInputSerializer.validated(request.data)
        policy = retention_services.retention_policy_update(
            actor=request.user, policy=self.get_object(), **data
        )
        return Response(RetentionPolicyOutputSerializer(policy).data)

    @extend_schema(responses={204: None, **READ_ERRORS})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        retention_services.retention_policy_delete(actor=request.user, policy=self.get_object())
        return Response(status=204)


# --- Retention runs ----------------------------------------------------------------------


class RetentionRunOutputSerializer(serializers.ModelSerializer):
    per_mailbox = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Items deleted (or due, in a dry run) per mailbox address.",
    )

    class Meta:
        model = RetentionRun
        fields = [
            "id",
            "started_at",
            "finished_at",
            "dry_run",
            "deleted_items",
            "deleted_bytes",
            "deleted_blobs",
            "held_items",
            "per_mailbox",
            "error",
        ]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(responses={200: RetentionRunOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(responses={200: RetentionRunOutputSerializer, **READ_ERRORS}),
)
class RetentionRunViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Retention runs (superadmins). The daily job deletes; `preview` only counts."""

    permission_classes = [IsSuperadminRole]
    serializer_class = RetentionRunOutputSerializer

    def get_queryset(self) -> QuerySet[RetentionRun]:
        return retention_services.retention_run_list(actor=self.request.user)

    @extend_schema(request=None, responses={201: RetentionRunOutputSerializer, 403: ErrorSerializer})
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        """Dry run: what the policies would delete now, per mailbox. Deletes nothing."""
        run = retention_services.retention_apply(dry_run=True)
        return Response(RetentionRunOutputSerializer(run).data, status=201)


# --- Legal holds ---------------------------------------------------------------------------


class LegalHoldOutputSerializer(serializers.ModelSerializer):
    mailbox_address = serializers.CharField(
        source="mailbox.address", read_only=True, allow_null=True, default=None
    )
    domain_name = serializers.CharField(source="domain.name", read_only=True, allow_null=True, default=None)
    created_by_email = serializers.CharField(
        source="created_by.email", read_only=True, allow_null=True, default=None
    )
    is_active = serializers.SerializerMethodField(help_text="Not released and not past its end.")
    blocked_deletions = serializers.SerializerMethodField(help_text="Deletions this hold refused.")

    class Meta:
        model = LegalHold
        fields = [
            "id",
            "scope",
            "mailbox",
            "mailbox_address",
            "domain",
            "domain_name",
            "sender",
            "date_from",
            "date_to",
            "reason",
            "created_by_email",
            "created_at",
            "ends_at",
            "released_at",
            "is_active",
            "blocked_deletions",
        ]
        read_only_fields = fields

    def get_is_active(self, hold: LegalHold) -> bool:
        return hold_services.legal_hold_is_active(hold)

    def get_blocked_deletions(self, hold: LegalHold) -> int:
        counted = getattr(hold, "blocked_count", None)  # annotated by legal_hold_list
        return counted if counted is not None else hold.blocked.count()


class LegalHoldCreateInputSerializer(StrictInputSerializer):
    scope = serializers.ChoiceField(choices=LegalHold.Scope.choices)
    mailbox_id = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="mailbox scope; narrows a search."
    )
    domain_id = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="domain scope; narrows a search."
    )
    sender = serializers.CharField(
        max_length=254, allow_blank=True, default="", help_text="search: envelope sender or From contains."
    )
    date_from = serializers.DateTimeField(required=False, allow_null=True, default=None)
    date_to = serializers.DateTimeField(required=False, allow_null=True, default=None)
    reason = serializers.CharField()
    ends_at = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="The hold lapses then; null: until released."
    )


@extend_schema_view(
    list=extend_schema(responses={200: LegalHoldOutputSerializer(many=True), 403: ErrorSerializer}),
    retrieve=extend_schema(responses={200: LegalHoldOutputSerializer, **READ_ERRORS}),
)
class LegalHoldViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Legal holds: mail they cover cannot be deleted (expunge, delete from Trash,
    retention, erasure, mailbox deletion); attempts answer 409 `legal_hold`."""

    permission_classes = [AdminReadsSuperadminWrites]
    serializer_class = LegalHoldOutputSerializer

    def get_queryset(self) -> QuerySet[LegalHold]:
        return hold_services.legal_hold_list(actor=self.request.user)

    @extend_schema(
        request=LegalHoldCreateInputSerializer, responses={201: LegalHoldOutputSerializer, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        data = LegalHoldCreateInputSerializer.validated(request.data)
        mailbox_id, domain_id = data.pop("mailbox_id"), data.pop("domain_id")
        mailbox = (
            mailbox_selectors.mailbox_get(actor=request.user, mailbox_id=mailbox_id) if mailbox_id else None
        )
        domain = mailbox_selectors.domain_get(actor=request.user, domain_id=domain_id) if domain_id else None
        hold = hold_services.legal_hold_create(actor=request.user, mailbox=mailbox, domain=domain, **data)
        return Response(LegalHoldOutputSerializer(hold).data, status=201)

    @extend_schema(request=None, responses={200: LegalHoldOutputSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Release the hold: what it kept may be deleted again."""
        hold = hold_services.legal_hold_release(actor=request.user, hold=self.get_object())
        return Response(LegalHoldOutputSerializer(hold).data)
