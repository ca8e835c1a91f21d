"""API for web sessions: list where one is signed in, sign one browser out, sign out
everywhere. Superadmins reach any user's sessions with `?user=<id>`."""

from __future__ import annotations

from django.contrib.auth import logout
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.accounts import selectors, services, web_sessions
from apps.accounts.models import ApiToken, User, UserSession
from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer
from apps.core.exceptions import NotFoundError

USER_PARAMETER = OpenApiParameter(
    "user",
    OpenApiTypes.INT,
    OpenApiParameter.QUERY,
    required=False,
    description="Superadmins: the id of the user whose sessions to act on (default: your own). "
    "Others get 404 for any id but their own.",
)


class WebSessionOutputSerializer(serializers.ModelSerializer):
    device = serializers.SerializerMethodField(help_text="A rough guess from the User-Agent header.")
    current = serializers.SerializerMethodField(help_text="Whether this is the session making the request.")

    class Meta:
        model = UserSession
        fields = [
            "id",
            "device",
            "user_agent",
            "ip",
            "method",
            "mfa_verified",
            "created_at",
            "last_seen_at",
            "current",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_device(self, session: UserSession) -> str:
        return web_sessions.user_agent_summary(session.user_agent)

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_current(self, session: UserSession) -> bool:
        return bool(session.session_key) and session.session_key == self.context.get("current_key")


class SessionsRevokeAllInputSerializer(StrictInputSerializer):
    keep_current = serializers.BooleanField(
        default=True,
        help_text="Keep the credential making this request: its session, or its API token.",
    )
    revoke_tokens = serializers.BooleanField(
        default=True, help_text="Revoke the user's API tokens too. App passwords are never touched."
    )


class SessionsRevokedOutputSerializer(serializers.Serializer):
    sessions = serializers.IntegerField(help_text="Web sessions signed out.")
    tokens = serializers.IntegerField(help_text="API tokens revoked.")


class WebSessionViewSet(ListModelMixin, GenericViewSet):
    """Signed-in web sessions: the caller's own, or any user's for superadmins."""

    permission_classes = [IsAuthenticated]
    serializer_class = WebSessionOutputSerializer
    filter_backends: list = []
    lookup_value_regex = r"\d+"

    def _subject(self) -> User:
        user_id = self.request.query_params.get("user")
        actor = self.request.user
        if not user_id or user_id == str(actor.pk):
            return actor
        if not actor.is_superadmin:
            raise NotFoundError("No such user.")
        return selectors.user_get(actor=actor, user_id=user_id)

    def _current_key(self) -> str | None:
        # Only a request authenticated by its session has a current session.
        return self.request.session.session_key if not isinstance(self.request.auth, ApiToken) else None

    def get_queryset(self) -> QuerySet[UserSession]:
        return web_sessions.web_sessions_list(actor=self.request.user, user=self._subject())

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "current_key": self._current_key()}

    @extend_schema(parameters=[USER_PARAMETER])
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH), USER_PARAMETER],
        responses={204: None, 404: ErrorSerializer},
    )
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Sign one session out; its next request is anonymous."""
        session = web_sessions.web_session_revoke(
            actor=request.user,
            user=self._subject(),
            session_id=pk or "",
            client=services.ClientInfo.from_request(request),
        )
        if session.session_key == self._current_key():
            # The caller's own session is gone from the store: finish signing it out so
            # that the response does not try to save it again.
            logout(request._request)
        return Response(status=204)

    @extend_schema(
        parameters=[USER_PARAMETER],
        request=SessionsRevokeAllInputSerializer,
        responses={200: SessionsRevokedOutputSerializer, 404: ErrorSerializer},
    )
    @action(detail=False, methods=["post"], url_path="revoke-all")
    def revoke_all(self, request: Request) -> Response:
        """Sign out everywhere: every session and (by default) every API token of the
        user, except the credential making this request unless `keep_current` is false."""
        data = SessionsRevokeAllInputSerializer.validated(request.data)
        subject = self._subject()
        own = subject.pk == request.user.pk
        keep = own and data["keep_current"]
        token = request.auth if isinstance(request.auth, ApiToken) else None
        current_key = self._current_key()
        revoked = web_sessions.web_sessions_revoke_all(
            actor=request.user,
            user=subject,
            keep_current=current_key if keep else None,
            revoke_tokens=data["revoke_tokens"],
            keep_token_id=token.pk if keep and token is not None else None,
            client=services.ClientInfo.from_request(request),
        )
        if own and not keep and current_key:
            logout(request._request)
        return Response(SessionsRevokedOutputSerializer(revoked).data)
