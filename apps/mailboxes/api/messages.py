"""The message store over REST: list, read, download, flag, move and delete filed mail.

Every `{id}` here is a MailItem id (one message in one mailbox). Objects come only
through the scoped selectors, so another tenant's message is a 404 like a missing one.
Reading someone else's mailbox is recorded through `mailbox_access_record`; the services
record changes themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.http import FileResponse, HttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.core.api.errors import ErrorSerializer
from apps.mailboxes import selectors, services
from apps.mailboxes.api.serializers import (
    FolderExpungeInputSerializer,
    FolderExpungeOutputSerializer,
    MailboxFoldersOutputSerializer,
    MessageDetailOutputSerializer,
    MessageDetailQuerySerializer,
    MessageFlagsInputSerializer,
    MessageListQuerySerializer,
    MessageMoveInputSerializer,
    MessageOutputSerializer,
)
from apps.mailboxes.models import Mailbox, MailItem

ERRORS = {400: ErrorSerializer, 404: ErrorSerializer}
NOT_FOUND = {404: ErrorSerializer}

# Downloads keep their declared type only when a browser cannot run it in our origin;
# anything else (HTML, SVG, XML, scripts...) is served as opaque bytes.
_SAFE_DOWNLOAD_TYPES = {
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/json",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "text/plain",
    "text/csv",
    "text/calendar",
    "audio/mpeg",
    "audio/ogg",
    "video/mp4",
}
# A download is never a document in our origin, even if opened directly.
_DOWNLOAD_CSP = "default-src 'none'; sandbox"

ID_PARAMETER = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="MailItem id.")
INDEX_PARAMETER = OpenApiParameter(
    "index", OpenApiTypes.INT, OpenApiParameter.PATH, description="Attachment index from the detail."
)


def _download_headers(response: HttpResponse, *, filename: str) -> HttpResponse:
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = _DOWNLOAD_CSP
    response["Cache-Control"] = "private, no-store"
    return response


def _record_reads(*, actor, mailboxes: Iterable[Mailbox], action: str) -> None:
    seen: set[int] = set()
    for mailbox in mailboxes:
        if mailbox.pk not in seen:
            seen.add(mailbox.pk)
            services.mailbox_access_record(actor=actor, mailbox=mailbox, action=action)


class MessageViewSet(GenericViewSet):
    """Messages filed in mailboxes you may read, newest first."""

    serializer_class = MessageOutputSerializer
    queryset = MailItem.objects.none()  # for the schema; requests go through selectors
    filter_backends: list = []
    lookup_value_regex = "[^/]+"  # a malformed id reaches the selector: a JSON 404

    def get_queryset(self):
        return selectors.mail_item_list(actor=self.request.user)

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # Downloads answer with their own content type whatever Accept says (a client
        # asking for message/rfc822 must not get a 406); their errors are still JSON.
        return super().perform_content_negotiation(
            request, force=force or self.action in {"raw", "attachment"}
        )

    def _item(self, pk: str | None) -> MailItem:
        return selectors.mail_item_get(actor=self.request.user, item_id=pk)

    @extend_schema(
        parameters=[MessageListQuerySerializer],
        responses={200: MessageOutputSerializer(many=True), **ERRORS},
        description="Messages you may read, newest first, paginated. Filter by mailbox "
        "address and folder name, read state, flag, and full-text search.",
    )
    def list(self, request: Request) -> Response:
        query = MessageListQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        params = query.validated_data
        mailbox = (
            selectors.mailbox_get_by_address(actor=request.user, address=params["mailbox"])
            if params.get("mailbox")
            else None
        )
        folder = (
            selectors.folder_get(actor=request.user, mailbox=mailbox, name=params["folder"])
            if mailbox is not None and params.get("folder")
            else None
        )
        items = selectors.mail_item_list(
            actor=request.user,
            mailbox=mailbox,
            folder=folder,
            unread=params["unread"],
            flagged=params["flagged"],
            search=params["search"],
        )
        page = self.paginate_queryset(items)
        _record_reads(actor=request.user, mailboxes=(item.mailbox for item in page), action="list")
        return self.get_paginated_response(MessageOutputSerializer(page, many=True).data)

    @extend_schema(
        parameters=[ID_PARAMETER, MessageDetailQuerySerializer],
        responses={200: MessageDetailOutputSerializer, **ERRORS},
        description="Headers, text, sanitised HTML and attachments. Reading does not set \\Seen; "
        "PATCH the flags for that.",
    )
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        query = MessageDetailQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        item = self._item(pk)
        content = selectors.mail_item_content(
            item=item, allow_remote_images=query.validated_data["remote_images"]
        )
        _record_reads(actor=request.user, mailboxes=[item.mailbox], action="read")
        serializer = MessageDetailOutputSerializer(item, context={"content": content, "request": request})
        return Response(serializer.data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=MessageFlagsInputSerializer,
        responses={200: MessageOutputSerializer, **ERRORS},
        description="Set IMAP flags; flags left out are unchanged.",
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = MessageFlagsInputSerializer.validated(request.data)
        item = services.mail_item_set_flags(actor=request.user, item=self._item(pk), **data)
        return Response(MessageOutputSerializer(item).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        responses={
            200: OpenApiResponse(MessageOutputSerializer, description="Moved to Trash."),
            204: OpenApiResponse(description="It was in Trash: removed for good."),
            409: OpenApiResponse(ErrorSerializer, description="legal_hold: a legal hold keeps it."),
            **NOT_FOUND,
        },
        description="Delete as mail clients do: to Trash first; from Trash, for good "
        "(its bytes go back to the quota). Mail under legal hold stays: 409 `legal_hold`.",
    )
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        moved = services.mail_item_delete(actor=request.user, item=self._item(pk))
        if moved is None:
            return Response(status=204)
        return Response(MessageOutputSerializer(moved).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        request=MessageMoveInputSerializer,
        responses={200: MessageOutputSerializer, **ERRORS},
        description="Move to another folder of the same mailbox (a new UID there).",
    )
    @action(detail=True, methods=["post"])
    def move(self, request: Request, pk: str | None = None) -> Response:
        data = MessageMoveInputSerializer.validated(request.data)
        item = services.mail_item_move(actor=request.user, item=self._item(pk), folder_name=data["folder"])
        return Response(MessageOutputSerializer(item).data)

    @extend_schema(
        parameters=[ID_PARAMETER],
        responses={(200, "message/rfc822"): OpenApiTypes.BINARY, **NOT_FOUND},
        description="The message exactly as stored (RFC 5322, with our trace headers).",
    )
    def raw(self, request: Request, pk: str | None = None) -> HttpResponse:
        item = self._item(pk)
        handle = selectors.mail_item_open_raw(item=item)
        _record_reads(actor=request.user, mailboxes=[item.mailbox], action="raw")
        response = FileResponse(handle, content_type="message/rfc822")
        return _download_headers(response, filename=f"message-{item.pk}.eml")

    @extend_schema(
        parameters=[ID_PARAMETER, INDEX_PARAMETER],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **NOT_FOUND},
        description="An attachment's decoded bytes, always as a download.",
    )
    def attachment(self, request: Request, pk: str | None = None, index: str | None = None) -> HttpResponse:
        item = self._item(pk)
        found = selectors.mail_item_attachment(item=item, index=index)
        _record_reads(actor=request.user, mailboxes=[item.mailbox], action="attachment")
        content_type = found.content_type if found.content_type in _SAFE_DOWNLOAD_TYPES else ""
        response = HttpResponse(found.data, content_type=content_type or "application/octet-stream")
        return _download_headers(response, filename=found.filename)


class MailboxFolderViewSet(GenericViewSet):
    """A mailbox's folders: counts and quota, and expunge. Owners use these too."""

    queryset = Mailbox.objects.none()  # for the schema; requests go through selectors
    serializer_class = MailboxFoldersOutputSerializer
    filter_backends: list = []
    lookup_value_regex = "[^/]+"

    @extend_schema(
        responses={200: MailboxFoldersOutputSerializer, **NOT_FOUND},
        description="The mailbox's folders with total and unread counts, and its quota usage.",
    )
    @action(detail=True, methods=["get"])
    def folders(self, request: Request, pk: str | None = None) -> Response:
        mailbox = selectors.mailbox_get(actor=request.user, mailbox_id=pk)
        folders = selectors.folder_list(actor=request.user, mailbox=mailbox)
        _record_reads(actor=request.user, mailboxes=[mailbox], action="folders")
        return Response(MailboxFoldersOutputSerializer({"mailbox": mailbox, "folders": folders}).data)

    @extend_schema(
        request=FolderExpungeInputSerializer,
        responses={
            200: FolderExpungeOutputSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="legal_hold: the others were removed; `fields` has the `kept` and `removed` counts.",
            ),
            **ERRORS,
        },
        description="Remove for good every message in the folder flagged \\Deleted. Mail under "
        "legal hold stays (409 `legal_hold`).",
    )
    @action(detail=True, methods=["post"])
    def expunge(self, request: Request, pk: str | None = None) -> Response:
        data = FolderExpungeInputSerializer.validated(request.data)
        mailbox = selectors.mailbox_get(actor=request.user, mailbox_id=pk)
        folder = selectors.folder_get(actor=request.user, mailbox=mailbox, name=data["folder"])
        removed = services.folder_expunge(actor=request.user, folder=folder)
        mailbox.refresh_from_db(fields=["used_bytes"])
        return Response(
            FolderExpungeOutputSerializer(
                {"folder": folder.name, "expunged": removed, "used_bytes": mailbox.used_bytes}
            ).data
        )
