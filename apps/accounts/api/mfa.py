"""REST API for second factors: /api/v1/auth/mfa/… for the caller's own factors, and
/api/v1/users/{id}/mfa-reset/ for administrators. The rules live in apps/accounts/mfa.py.

An enrolment-scope token (issued by POST /api/v1/auth/token/ to a user whom policy requires
to have a second factor and who has none) reaches these endpoints and GET /api/v1/auth/me/
only; see apps/accounts/authentication.py.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from apps.accounts import mfa, selectors, services
from apps.accounts.api.serializers import TokenIssuedOutputSerializer
from apps.core.api.errors import ErrorSerializer
from apps.core.api.permissions import IsAdminRole
from apps.core.api.serializers import StrictInputSerializer

# --- Serializers --------------------------------------------------------------------------


class TokenObtainedOutputSerializer(TokenIssuedOutputSerializer):
    scope = serializers.ChoiceField(
        choices=[mfa.ENROLMENT_SCOPE],
        required=False,
        help_text=(
            "Present only for a limited token: `mfa_enrolment` means the account must set up a "
            "second factor first, and this token reaches only the MFA endpoints and "
            "GET /api/v1/auth/me/ (for an hour). Absent for a full token."
        ),
    )


class MfaStatusOutputSerializer(serializers.Serializer):
    required = serializers.BooleanField(help_text="Policy requires this account to have a second factor.")
    enabled = serializers.BooleanField(help_text="The account has a second factor (TOTP or a passkey).")
    totp = serializers.BooleanField(help_text="An authenticator app is set up.")
    backup_codes_remaining = serializers.IntegerField(help_text="Unused backup codes.")
    passkeys = serializers.IntegerField(help_text="Registered passkeys.")


class TotpEnrolmentOutputSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="Base32 TOTP secret (SHA-1, 6 digits, 30 s).")
    otpauth_url = serializers.CharField(help_text="The otpauth:// URI, as a QR code would carry it.")


class OtpInputSerializer(StrictInputSerializer):
    otp = serializers.CharField(max_length=16, help_text="The current code from the authenticator app.")


class BackupCodesOutputSerializer(serializers.Serializer):
    backup_codes = serializers.ListField(
        child=serializers.CharField(),
        help_text="Single-use codes, shown only in this response; the previous ones stop working.",
    )


class MfaResetOutputSerializer(serializers.Serializer):
    removed = serializers.IntegerField(
        help_text="Devices removed (authenticator apps, passkeys, backup codes)."
    )


# --- Permissions ----------------------------------------------------------------------------


class CanManageOwnFactors(BasePermission):
    """Adding a first factor: anyone signed in (an enrolment token too). Changing one that
    exists: a full-scope token or a session verified with it."""

    message = "Verify your second factor in this session first (or use a full-scope token)."
    code = "mfa_verification_required"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return mfa.mfa_manage_ok(request)


_VERIFY_FIRST = OpenApiResponse(
    ErrorSerializer, description="`mfa_verification_required`: the caller has not passed its second factor."
)


# --- Views ------------------------------------------------------------------------------------


def _client(request: Request) -> services.ClientInfo:
    return services.ClientInfo.from_request(request)


class MfaStatusView(APIView):
    """What second factors the caller has, and whether policy requires one."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: MfaStatusOutputSerializer})
    def get(self, request: Request) -> Response:
        status = mfa.mfa_status(request.user)
        return Response(MfaStatusOutputSerializer(status).data)


class TotpView(APIView):
    """Start adding an authenticator app (POST), or remove it (DELETE)."""

    permission_classes = [IsAuthenticated, CanManageOwnFactors]

    @extend_schema(request=None, responses={201: TotpEnrolmentOutputSerializer, 403: _VERIFY_FIRST})
    def post(self, request: Request) -> Response:
        """Start enrolment: a new secret, not used for sign-in until confirmed. Starting again
        replaces an unconfirmed one."""
        enrolment = mfa.totp_begin(user=request.user)
        return Response(TotpEnrolmentOutputSerializer(enrolment._asdict()).data, status=201)

    @extend_schema(responses={204: None, 403: _VERIFY_FIRST})
    def delete(self, request: Request) -> Response:
        """Remove the authenticator app (backup codes go too when no other factor is left).
        Removing when there is none is harmless."""
        mfa.totp_remove(user=request.user, actor=request.user, client=_client(request))
        return Response(status=204)


class TotpConfirmView(APIView):
    """Finish adding the authenticator app with its current code."""

    permission_classes = [IsAuthenticated, CanManageOwnFactors]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    @extend_schema(
        request=OtpInputSerializer,
        responses={
            200: BackupCodesOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="`invalid_otp`, or `invalid` input."),
            403: _VERIFY_FIRST,
            409: OpenApiResponse(ErrorSerializer, description="`totp_not_started`: POST …/totp/ first."),
        },
    )
    def post(self, request: Request) -> Response:
        """Confirm and get 10 backup codes (shown once). Enrolment-scope tokens are revoked:
        get a full token from POST /api/v1/auth/token/ with `otp`."""
        data = OtpInputSerializer.validated(request.data)
        codes = mfa.totp_confirm(user=request.user, otp=data["otp"], client=_client(request))
        return Response(BackupCodesOutputSerializer({"backup_codes": codes}).data)


class BackupCodesView(APIView):
    """Make a new set of backup codes; the old ones stop working."""

    permission_classes = [IsAuthenticated, CanManageOwnFactors]

    @extend_schema(
        request=None,
        responses={
            200: BackupCodesOutputSerializer,
            403: _VERIFY_FIRST,
            409: OpenApiResponse(ErrorSerializer, description="`mfa_not_enabled`: no factor to back up."),
        },
    )
    def post(self, request: Request) -> Response:
        codes = mfa.backup_codes_regenerate(user=request.user, client=_client(request))
        return Response(BackupCodesOutputSerializer({"backup_codes": codes}).data)


class UserMfaResetView(APIView):
    """Remove every second factor of a user, e.g. after a lost phone: superadmins for anyone
    else, domain admins for the owners of mailboxes in their domains."""

    permission_classes = [IsAdminRole]

    @extend_schema(
        request=None,
        responses={200: MfaResetOutputSerializer, 403: ErrorSerializer, 404: ErrorSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        user = selectors.user_get(actor=request.user, user_id=pk)
        removed = mfa.mfa_reset(actor=request.user, user=user, client=_client(request), channel="api")
        return Response(MfaResetOutputSerializer({"removed": removed}).data)
