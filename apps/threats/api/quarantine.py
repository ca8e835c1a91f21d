"""REST API for the quarantine: /api/v1/quarantine/.

Everyone signed in reviews the quarantine in their scope (apps.threats.selectors):
superadmins every item, a domain admin the items held for mailboxes of their domains, a
mailbox user the items held for their own mailboxes. Within an item only the recipients
in the caller's scope are shown and acted on. An item outside the scope is a 404.

Who may release what is decided by apps.threats.services.quarantine: a mailbox user
releases spam and unscannable mail but only *requests* the release of malware and policy
hits, which an administrator then approves or denies. The stored message can be
downloaded by whoever may release it (so never by a user for malware).
"""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.http import HttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.core.exceptions import NotFoundError, PermissionDeniedError
from apps.mailboxes.parsing import headers_of
from apps.mailboxes.services import mailbox_access_record
from apps.relay.api.queue import NamedEnumField
from apps.threats import selectors
from apps.threats.api.common import ERRORS, READ_ERRORS, id_parameter
from apps.threats.models import Category, QuarantineItem, QuarantineRecipient
from apps.threats.services import quarantine as services

ID_PARAMETER = id_parameter("Quarantine item id.")
_DOWNLOAD_CSP = "default-src 'none'; sandbox"


# --- Serializers -----------------------------------------------------------------------------


class QuarantineListQuerySerializer(serializers.Serializer):
    """Query parameters of GET quarantine/."""

    category = NamedEnumField(
        schema_name="QuarantineCategoryEnum", choices=Category.choices, required=False, allow_blank=True
    )
    state = NamedEnumField(
        schema_name="QuarantineStateFilterEnum",
        choices=[*QuarantineItem.State.choices, ("all", "All")],
        required=False,
        allow_blank=True,
        help_text="Default: held.",
    )
    q = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="Part of the sender, From or subject."
    )
    mailbox = serializers.CharField(
        max_length=320, required=False, allow_blank=True, help_text="A recipient mailbox's address."
    )
    requested = serializers.BooleanField(
        required=False, default=False, help_text="Only items with a pending release request."
    )


class QuarantineRecipientOutputSerializer(serializers.ModelSerializer):
    address = serializers.CharField(source="mailbox.address", read_only=True)
    state = NamedEnumField(
        schema_name="QuarantineRecipientStateEnum", choices=QuarantineRecipient.State.choices, read_only=True
    )
    decided_by = serializers.CharField(
        source="decided_by.email",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="Who released or deleted.",
    )

    class Meta:
        model = QuarantineRecipient
        fields = ["mailbox", "address", "state", "requested_at", "request_note", "decided_by", "decided_at"]
        read_only_fields = fields


class QuarantineItemOutputSerializer(serializers.ModelSerializer):
    queue_id = serializers.CharField(source="message.queue_id", read_only=True)
    category = NamedEnumField(schema_name="QuarantineCategoryEnum", choices=Category.choices, read_only=True)
    state = NamedEnumField(
        schema_name="QuarantineStateEnum", choices=QuarantineItem.State.choices, read_only=True
    )
    reason = serializers.CharField(read_only=True, help_text="The main reason it is held, in plain words.")
    sender = serializers.CharField(read_only=True, help_text="The envelope sender.")
    size = serializers.IntegerField(read_only=True, help_text="Bytes.")
    recipients = QuarantineRecipientOutputSerializer(
        source="visible_recipients", many=True, read_only=True, help_text="The recipients in your scope."
    )

    class Meta:
        model = QuarantineItem
        fields = [
            "id",
            "queue_id",
            "category",
            "state",
            "score",
            "reason",
            "sender",
            "from_header",
            "subject",
            "size",
            "created_at",
            "expires_at",
            "recipients",
        ]
        read_only_fields = fields


class ScanStageOutputSerializer(serializers.Serializer):
    stage = serializers.CharField()
    score = serializers.FloatField(help_text="What the stage added to the score.")
    reasons = serializers.ListField(child=serializers.CharField(), help_text="Findings, in plain words.")
    ms = serializers.FloatField(help_text="Time the stage took.")
    status = serializers.CharField(help_text="ok, skipped, error or timeout.")
    category = serializers.CharField(
        default="", help_text="What the stage found that holds the message whatever the score, if anything."
    )


class HeaderOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    value = serializers.CharField()


class QuarantinePermissionsSerializer(serializers.Serializer):
    may_release = serializers.BooleanField(help_text="Release (and delete) the held copy yourself.")
    may_request_release = serializers.BooleanField(help_text="Ask an administrator to release it.")
    may_decide_request = serializers.BooleanField(help_text="Approve or deny a pending release request.")
    may_download = serializers.BooleanField(help_text="Download the stored message.")


class QuarantineItemDetailOutputSerializer(QuarantineItemOutputSerializer):
    stages = ScanStageOutputSerializer(many=True, read_only=True, help_text="Every scan stage, in order.")
    auth_results = serializers.CharField(read_only=True, help_text="The Authentication-Results we added.")
    headers = HeaderOutputSerializer(many=True, read_only=True, help_text="The stored message's headers.")
    permissions = QuarantinePermissionsSerializer(read_only=True)
    may_release = serializers.BooleanField(
        source="permissions.may_release", read_only=True, help_text="Same as permissions.may_release."
    )

    class Meta(QuarantineItemOutputSerializer.Meta):
        fields = [
            *QuarantineItemOutputSerializer.Meta.fields,
            "stages",
            "auth_results",
            "headers",
            "permissions",
            "may_release",
        ]
        read_only_fields = fields


class QuarantineMailboxesInputSerializer(StrictInputSerializer):
    mailboxes = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        allow_empty=False,
        max_length=1000,
        help_text="Recipient mailbox ids; default: every held recipient you decide for.",
    )


class QuarantineReleaseInputSerializer(QuarantineMailboxesInputSerializer):
    allow_sender = serializers.BooleanField(
        default=False, help_text="Also put the sender on the allow list of these mailboxes."
    )


class QuarantineReportInputSerializer(StrictInputSerializer):
    is_spam = serializers.BooleanField(help_text="true: confirmed spam. false: a false positive.")


class QuarantineRequestInputSerializer(StrictInputSerializer):
    note = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        help_text="Why you need it, for the admin.",
    )


class QuarantineDecideInputSerializer(StrictInputSerializer):
    approve = serializers.BooleanField(help_text="true: release to the requesters. false: keep it held.")


class QuarantineOutcomeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="item_id")
    changed = serializers.IntegerField(help_text="Recipients decided by this call.")
    delivered = serializers.BooleanField(
        help_text="Released mail was filed now (false: delivery retries it)."
    )


class QuarantineReportOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    trained = serializers.IntegerField(help_text="How many domains' classifiers learnt from it.")


class QuarantineSummaryOutputSerializer(serializers.Serializer):
    spam = serializers.IntegerField()
    malware = serializers.IntegerField()
    policy = serializers.IntegerField()
    unscannable = serializers.IntegerField()
    requested = serializers.IntegerField(help_text="Recipients waiting for a release decision.")


# --- The view --------------------------------------------------------------------------------


def _permissions(user, item: QuarantineItem, rows: list[QuarantineRecipient]) -> dict[str, bool]:
    """What the buttons offer; the services decide again when one is pressed."""
    actions = services.quarantine_actions(user, item, rows)
    return {
        "may_release": actions.release,
        "may_request_release": actions.request_release,
        "may_decide_request": actions.decide_request,
        "may_download": actions.download,
    }


def _visible_recipients(user) -> Prefetch:
    rows = (
        selectors.quarantine_recipients_visible_to(user)
        .select_related("mailbox", "decided_by")
        .order_by("id")
    )
    return Prefetch("recipients", queryset=rows, to_attr="visible_recipients")


class QuarantineViewSet(GenericViewSet):
    """Held messages in your scope, newest first, and the decisions on them."""

    serializer_class = QuarantineItemOutputSerializer
    queryset = QuarantineItem.objects.none()  # for the schema; requests go through selectors
    filter_backends: list = []
    lookup_value_regex = "[^/]+"  # a malformed id reaches the selector: a JSON 404

    def get_queryset(self) -> QuerySet[QuarantineItem]:
        return selectors.quarantine_items_visible_to(self.request.user)

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The download answers message/rfc822 whatever Accept says; its errors stay JSON.
        return super().perform_content_negotiation(request, force=force or self.action == "raw")

    def _item(self, pk: str | None) -> QuarantineItem:
        try:
            item_id = int(pk or "")
        except ValueError:
            raise NotFoundError("no such quarantined message") from None
        return selectors.quarantine_item_get(self.request.user, item_id)

    @extend_schema(
        parameters=[QuarantineListQuerySerializer],
        responses={200: QuarantineItemOutputSerializer(many=True), 400: ErrorSerializer},
        description="Quarantined messages in your scope, newest first, paginated; held ones unless "
        "`state` says otherwise.",
    )
    def list(self, request: Request) -> Response:
        query = QuarantineListQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        params = query.validated_data
        items = selectors.quarantine_items_search(
            request.user,
            category=params.get("category", ""),
            state=params.get("state", ""),
            query=params.get("q", "").strip(),
            mailbox=params.get("mailbox", ""),
            requested=params["requested"],
        ).prefetch_related(_visible_recipients(request.user))
        page = self.paginate_queryset(items)
        return self.get_paginated_response(QuarantineItemOutputSerializer(page, many=True).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        responses={200: QuarantineItemDetailOutputSerializer, **READ_ERRORS},
        description="The full verdict (every stage's score, reasons and time), the recipients in "
        "your scope with their state, the stored message's headers, and what you may do.",
    )
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        item = self._item(pk)
        rows = list(selectors.quarantine_item_recipients(request.user, item))
        verdict = selectors.quarantine_item_verdict(item)
        try:
            raw = selectors.quarantine_item_raw(item)
        except NotFoundError:
            raw = b""  # expired or cleaned up: the verdict is still worth showing
        item.visible_recipients = rows
        item.stages = verdict.stages if verdict is not None else []
        item.auth_results = verdict.auth_results if verdict is not None else ""
        item.headers = [{"name": name, "value": value} for name, value in headers_of(raw)] if raw else []
        item.permissions = _permissions(request.user, item, rows)
        return Response(QuarantineItemDetailOutputSerializer(item).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=QuarantineReleaseInputSerializer,
        responses={200: QuarantineOutcomeOutputSerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Deliver the held message to the INBOX of the chosen recipients (default: all you
        decide for). 403 for a mailbox user and malware or policy hits: request it instead."""
        data = QuarantineReleaseInputSerializer.validated(request.data)
        outcome = services.quarantine_release(
            actor=request.user,
            item=self._item(pk),
            mailbox_ids=data.get("mailboxes"),
            allow_sender=data["allow_sender"],
            request=request,
        )
        return Response(QuarantineOutcomeOutputSerializer(outcome).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=QuarantineMailboxesInputSerializer,
        responses={200: QuarantineOutcomeOutputSerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="delete", url_name="delete")
    def delete_item(self, request: Request, pk: str | None = None) -> Response:
        """Discard the held copy for the chosen recipients (default: all you decide for)."""
        data = QuarantineMailboxesInputSerializer.validated(request.data)
        outcome = services.quarantine_delete(
            actor=request.user, item=self._item(pk), mailbox_ids=data.get("mailboxes"), request=request
        )
        return Response(QuarantineOutcomeOutputSerializer(outcome).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=QuarantineReportInputSerializer,
        responses={200: QuarantineReportOutputSerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"])
    def report(self, request: Request, pk: str | None = None) -> Response:
        """Teach the spam classifier: confirmed spam, or a false positive. Does not release."""
        data = QuarantineReportInputSerializer.validated(request.data)
        item = self._item(pk)
        trained = services.quarantine_report(
            actor=request.user, item=item, is_spam=data["is_spam"], request=request
        )
        return Response(QuarantineReportOutputSerializer({"id": item.pk, "trained": trained}).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=QuarantineRequestInputSerializer,
        responses={200: QuarantineOutcomeOutputSerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="request-release", url_name="request-release")
    def request_release(self, request: Request, pk: str | None = None) -> Response:
        """Ask the administrators to release what you may not release yourself."""
        data = QuarantineRequestInputSerializer.validated(request.data)
        outcome = services.release_request(
            actor=request.user, item=self._item(pk), note=data["note"], request=request
        )
        return Response(QuarantineOutcomeOutputSerializer(outcome).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=QuarantineDecideInputSerializer,
        responses={200: QuarantineOutcomeOutputSerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="decide-request", url_name="decide-request")
    def decide_request(self, request: Request, pk: str | None = None) -> Response:
        """Approve (release to the requesters) or deny (keep held) pending release requests.
        Administrators of a recipient's domain only."""
        data = QuarantineDecideInputSerializer.validated(request.data)
        outcome = services.release_request_decide(
            actor=request.user, item=self._item(pk), approve=data["approve"], request=request
        )
        return Response(QuarantineOutcomeOutputSerializer(outcome).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        responses={
            (200, "message/rfc822"): OpenApiTypes.BINARY,
            403: OpenApiResponse(ErrorSerializer, description="A mailbox user and malware or a policy hit."),
            404: ErrorSerializer,
        },
    )
    @action(detail=True, methods=["get"])
    def raw(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The held message exactly as stored, as a download. Administrators always; a
        mailbox user only what they may release themselves (never malware)."""
        item = self._item(pk)
        if not services.user_may_release(request.user, item):
            raise PermissionDeniedError(f"Only an administrator may download quarantined {item.category}.")
        raw = selectors.quarantine_item_raw(item)
        for row in selectors.quarantine_item_recipients(request.user, item):
            mailbox_access_record(actor=request.user, mailbox=row.mailbox, action="quarantine_raw")
        response = HttpResponse(raw, content_type="message/rfc822")
        response["Content-Disposition"] = content_disposition_header(True, f"quarantine-{item.pk}.eml")
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = _DOWNLOAD_CSP
        response["Cache-Control"] = "private, no-store"
        return response

    @extend_schema(responses={200: QuarantineSummaryOutputSerializer})
    @action(detail=False, methods=["get"], pagination_class=None)
    def summary(self, request: Request) -> Response:
        """Held items per category in your scope, and the pending release requests."""
        return Response(QuarantineSummaryOutputSerializer(selectors.quarantine_counts(request.user)).data)
