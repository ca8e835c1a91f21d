from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.decorators import action
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from apps.accounts import lockout, mfa, selectors, services
from apps.accounts.api.mfa import TokenObtainedOutputSerializer
from apps.accounts.api.permissions import IsSuperadmin
from apps.accounts.api.serializers import (
    ApiTokenOutputSerializer,
    AuthEventOutputSerializer,
    LockoutClearInputSerializer,
    LockoutClearOutputSerializer,
    LockoutOutputSerializer,
    TokenCreateInputSerializer,
    TokenIssuedOutputSerializer,
    TokenObtainInputSerializer,
    UserCreateInputSerializer,
    UserOutputSerializer,
    UserUpdateInputSerializer,
)
from apps.accounts.exceptions import LockedOut
from apps.accounts.models import ApiToken, AuthEvent, User
from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import ReadOnlyOrSuperadmin


def _issued(issued: services.IssuedToken) -> dict:
    return {
        "token": issued.secret,
        "id": issued.token.pk,
        "name": issued.token.name,
        "expires_at": issued.token.expires_at,
    }


class TokenObtainView(APIView):
    """Exchange email and password (and `otp` once the account has a second factor) for a
    bearer token. Where policy requires a second factor the account does not have yet, the
    token has the `mfa_enrolment` scope."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    @extend_schema(
        request=TokenObtainInputSerializer,
        responses={
            201: TokenObtainedOutputSerializer,
            400: ErrorSerializer,
            401: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "`authentication_failed` (wrong or unknown email or password, never saying "
                    "which); after a correct password, `mfa_required` (send `otp`) or "
                    "`invalid_otp` (wrong, reused or expired code; counts towards the lockout)."
                ),
            ),
            429: OpenApiResponse(
                ErrorSerializer,
                description="`locked_out` after repeated failures (with Retry-After), or `throttled`.",
            ),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        data = TokenObtainInputSerializer.validated(request.data)
        user = services.credentials_verify(
            request=request, email=data["email"], password=data["password"], channel="api"
        )
        issued = mfa.api_token_obtain(
            user=user,
            otp=data.get("otp"),
            name=data.get("name") or "API token",
            expires_in_days=data.get("expires_in_days"),
            client=services.ClientInfo.from_request(request),
        )
        body = _issued(issued)
        if issued.token.scope != mfa.FULL_SCOPE:
            body["scope"] = issued.token.scope  # the client must enrol before anything else
        return Response(body, status=201)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, LockedOut):
            response["Retry-After"] = str(exc.retry_after)  # RFC 9110: seconds
        return response


class MeView(APIView):
    @extend_schema(responses={200: UserOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(UserOutputSerializer(request.user).data)


class ApiTokenViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """The caller's own API tokens: list, create more, revoke (DELETE)."""

    permission_classes = [IsAuthenticated]
    serializer_class = ApiTokenOutputSerializer

    def get_queryset(self) -> QuerySet[ApiToken]:
        return selectors.api_token_list(actor=self.request.user)

    @extend_schema(
        request=TokenCreateInputSerializer,
        responses={
            201: TokenIssuedOutputSerializer,
            403: OpenApiResponse(
                ErrorSerializer,
                description="`mfa_verification_required`: the session has not passed its second factor.",
            ),
        },
    )
    def create(self, request: Request) -> Response:
        data = TokenCreateInputSerializer.validated(request.data)
        # A session must have passed the second factor its account has or needs.
        mfa.mfa_session_require(request)
        parent = request.auth if isinstance(request.auth, ApiToken) else None
        issued = services.api_token_create(
            user=request.user,
            name=data["name"],
            expires_in_days=data.get("expires_in_days"),
            client=services.ClientInfo.from_request(request),
            # A token made with a token never outlives it; a session is not capped.
            not_after=parent.expires_at if parent is not None else None,
        )
        return Response(_issued(issued), status=201)

    @extend_schema(responses={200: ApiTokenOutputSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        token = services.api_token_revoke(
            actor=request.user,
            token=self.get_object(),
            client=services.ClientInfo.from_request(request),
        )
        return Response(ApiTokenOutputSerializer(token).data)


class UserViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Users in the caller's scope. Superadmins create, change and delete them."""

    permission_classes = [ReadOnlyOrSuperadmin]
    serializer_class = UserOutputSerializer
    filterset_fields = ["role", "is_active"]
    ordering_fields = ["email", "date_joined"]
    search_fields = ["email", "full_name"]

    def get_queryset(self) -> QuerySet[User]:
        return selectors.user_list(actor=self.request.user)

    @extend_schema(
        request=UserCreateInputSerializer, responses={201: UserOutputSerializer, 409: ErrorSerializer}
    )
    def create(self, request: Request) -> Response:
        data = UserCreateInputSerializer.validated(request.data)
        password = data.pop("password", None)
        user = services.user_create(actor=request.user, password=password, **data)
        return Response(UserOutputSerializer(user).data, status=201)

    @extend_schema(request=UserUpdateInputSerializer, responses={200: UserOutputSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = UserUpdateInputSerializer.validated(request.data)
        user = services.user_update(actor=request.user, user=self.get_object(), **data)
        return Response(UserOutputSerializer(user).data)

    @extend_schema(responses={204: None, 409: ErrorSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        services.user_delete(actor=request.user, user=self.get_object())
        return Response(status=204)


class AuthEventViewSet(ListModelMixin, GenericViewSet):
    """Sign-in record: superadmins see all, others their own."""

    permission_classes = [IsAuthenticated]
    serializer_class = AuthEventOutputSerializer
    filterset_fields = ["kind", "channel", "email"]

    def get_queryset(self) -> QuerySet[AuthEvent]:
        return selectors.auth_event_list(actor=self.request.user)


class LockoutViewSet(GenericViewSet):
    """Login names and addresses locked out after repeated sign-in failures (superadmins)."""

    permission_classes = [IsSuperadmin]
    serializer_class = LockoutOutputSerializer
    filter_backends: list = []

    @extend_schema(responses={200: LockoutOutputSerializer(many=True)})
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(lockout.lockouts_active())
        return self.get_paginated_response(LockoutOutputSerializer(page, many=True).data)

    @extend_schema(
        request=LockoutClearInputSerializer,
        responses={200: LockoutClearOutputSerializer, 400: ErrorSerializer},
    )
    @action(detail=False, methods=["post"])
    def clear(self, request: Request) -> Response:
        data = LockoutClearInputSerializer.validated(request.data)
        removed = lockout.lockout_clear(actor=request.user, channel="api", **data)
        return Response(LockoutClearOutputSerializer({"removed": removed}).data)
