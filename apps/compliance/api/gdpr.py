"""/api/v1/gdpr/: subject access exports (request, poll, download, cancel) and erasures.

Jobs come only through the services' scoped lookups: someone else's job is a 404.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.compliance.models import ComplianceJob
from apps.compliance.services import gdpr
from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}
JOB_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Job id.")


class SubjectInputSerializer(StrictInputSerializer):
    subject = serializers.CharField(max_length=254, help_text="A mailbox address or a user's email.")


class JobLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    download = serializers.CharField(allow_null=True)
    cancel = serializers.CharField(allow_null=True)


class ComplianceJobOutputSerializer(serializers.ModelSerializer):
    # Plain strings in the schema: "kind" and "state" enums exist elsewhere under the same names.
    kind = serializers.CharField(read_only=True, help_text="export | erasure")
    state = serializers.CharField(read_only=True, help_text="queued | running | done | failed | cancelled")
    percent = serializers.IntegerField(read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="email", read_only=True)
    links = serializers.SerializerMethodField()

    class Meta:
        model = ComplianceJob
        fields = [
            "id",
            "kind",
            "subject",
            "state",
            "percent",
            "progress_done",
            "progress_total",
            "cancel_requested",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "error",
            "file_size",
            "file_sha256",
            "expires_at",
            "links",
        ]

    @extend_schema_field(JobLinksSerializer)
    def get_links(self, job: ComplianceJob) -> dict[str, str | None]:
        if job.kind == ComplianceJob.Kind.ERASURE:
            return {
                "self": reverse("api:gdpr-erasure-detail", args=[job.pk]),
                "download": None,
                "cancel": None,
            }
        active = job.state in (ComplianceJob.State.QUEUED, ComplianceJob.State.RUNNING)
        return {
            "self": reverse("api:gdpr-export-detail", args=[job.pk]),
            "download": reverse("api:gdpr-export-download", args=[job.pk])
            if job.state == ComplianceJob.State.DONE and job.file_path
            else None,
            "cancel": reverse("api:gdpr-export-cancel", args=[job.pk]) if active else None,
        }


class ErasureOutputSerializer(ComplianceJobOutputSerializer):
    certificate = serializers.JSONField(source="report", read_only=True)

    class Meta(ComplianceJobOutputSerializer.Meta):
        fields = [*ComplianceJobOutputSerializer.Meta.fields, "certificate"]


class GdprExportViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Subject access / portability exports. Anyone signed in may export what is in their
    scope: superadmins anyone, domain admins their domains' mailboxes and owners, mailbox
    users themselves."""

    permission_classes = [IsAuthenticated]
    serializer_class = ComplianceJobOutputSerializer

    def get_queryset(self) -> QuerySet[ComplianceJob]:
        return gdpr.export_list(actor=self.request.user)

    def get_object(self) -> ComplianceJob:
        return gdpr.export_get(actor=self.request.user, job_id=self.kwargs["pk"])

    @extend_schema(
        request=SubjectInputSerializer,
        responses={202: ComplianceJobOutputSerializer, **ERRORS},
        description="Start an export of everything held about a subject (or get the one already running).",
    )
    def create(self, request: Request) -> Response:
        data = SubjectInputSerializer.validated(request.data)
        job = gdpr.export_request(actor=request.user, subject=data["subject"])
        return Response(ComplianceJobOutputSerializer(job).data, status=202)

    @extend_schema(
        parameters=[JOB_ID],
        request=None,
        responses={200: ComplianceJobOutputSerializer, **ERRORS},
        description="Cancel a queued or running export; a running one leaves no partial file.",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = gdpr.export_cancel(actor=request.user, job=self.get_object())
        return Response(ComplianceJobOutputSerializer(job).data)

    @extend_schema(
        parameters=[JOB_ID],
        responses={(200, "application/zip"): OpenApiTypes.BINARY, **ERRORS},
        description="The finished archive, while its link has not expired (409 export_expired after).",
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> HttpResponse:
        job = self.get_object()
        handle = gdpr.export_open(actor=request.user, job=job)
        return FileResponse(
            handle, as_attachment=True, filename=f"export-{job.pk}.zip", content_type="application/zip"
        )


class GdprErasureViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Erasures of data subjects (superadmins), each with its certificate."""

    permission_classes = [IsAuthenticated]
    serializer_class = ErasureOutputSerializer

    def get_queryset(self) -> QuerySet[ComplianceJob]:
        return gdpr.job_list(actor=self.request.user, kind=ComplianceJob.Kind.ERASURE)

    def get_object(self) -> ComplianceJob:
        return gdpr.erasure_get(actor=self.request.user, job_id=self.kwargs["pk"])

    @extend_schema(
        request=SubjectInputSerializer,
        responses={202: ErasureOutputSerializer, **ERRORS},
        description="Erase everything held about a subject. 409 `legal_hold` while a legal hold covers it.",
    )
    def create(self, request: Request) -> Response:
        data = SubjectInputSerializer.validated(request.data)
        job = gdpr.erasure_request(actor=request.user, subject=data["subject"])
        return Response(ErasureOutputSerializer(job).data, status=202)
