"""REST API for "report spam / not spam": POST /api/v1/spam-reports/.

A signed-in user marks messages filed in their mailboxes (administrators: in the
mailboxes they administer) as spam or as not spam. The Bayesian classifier of each
mailbox's domain learns from them, and they move to Junk or back to the INBOX. The rules
live in apps.threats.services.learning.spam_report.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.threats.services.learning import spam_report

MAX_MESSAGES_PER_REPORT = 500


class SpamReportInputSerializer(StrictInputSerializer):
    messages = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        allow_empty=False,
        max_length=MAX_MESSAGES_PER_REPORT,
        help_text="Ids of filed messages (as listed by /api/v1/messages/).",
    )
    is_spam = serializers.BooleanField(help_text="true: spam, to Junk. false: not spam, to the INBOX.")


class SpamReportOutputSerializer(serializers.Serializer):
    trained = serializers.IntegerField(
        help_text="Messages the classifier learnt from (a repeated report teaches nothing new)."
    )
    moved = serializers.IntegerField(help_text="Messages moved to Junk, or back to the INBOX.")


class SpamReportView(APIView):
    """Report filed mail as spam, or as not spam."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="spam_reports_create",
        request=SpamReportInputSerializer,
        responses={
            200: SpamReportOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="`invalid` input."),
            404: OpenApiResponse(
                ErrorSerializer,
                description="`not_found`: a message id that is not in a mailbox of yours; nothing changed.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Teach the spam classifier of each message's domain and move the messages: to
        Junk (`is_spam` true) or to the INBOX (false). Safe to repeat."""
        data = SpamReportInputSerializer.validated(request.data)
        outcome = spam_report(
            actor=request.user, mail_item_ids=data["messages"], is_spam=data["is_spam"], request=request
        )
        return Response(SpamReportOutputSerializer(outcome).data)
