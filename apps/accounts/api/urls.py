from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.accounts.api.mfa import (
    BackupCodesView,
    MfaStatusView,
    TotpConfirmView,
    TotpView,
    UserMfaResetView,
)
from apps.accounts.api.sessions import WebSessionViewSet
from apps.accounts.api.sso import SsoProviderViewSet
from apps.accounts.api.views import (
    ApiTokenViewSet,
    AuthEventViewSet,
    LockoutViewSet,
    MeView,
    TokenObtainView,
    UserViewSet,
)

router = SimpleRouter()
router.register("auth/tokens", ApiTokenViewSet, basename="api-token")
router.register("auth/events", AuthEventViewSet, basename="auth-event")
router.register("auth/sessions", WebSessionViewSet, basename="web-session")
router.register("users", UserViewSet, basename="user")
router.register("lockouts", LockoutViewSet, basename="lockout")
router.register("sso-providers", SsoProviderViewSet, basename="sso-provider")

urlpatterns = [
    path("auth/token/", TokenObtainView.as_view(), name="token-obtain"),
    path("auth/me/", MeView.as_view(), name="me"),
    path("auth/mfa/", MfaStatusView.as_view(), name="mfa-status"),
    path("auth/mfa/totp/", TotpView.as_view(), name="mfa-totp"),
    path("auth/mfa/totp/confirm/", TotpConfirmView.as_view(), name="mfa-totp-confirm"),
    path("auth/mfa/backup-codes/", BackupCodesView.as_view(), name="mfa-backup-codes"),
    path("users/<int:pk>/mfa-reset/", UserMfaResetView.as_view(), name="user-mfa-reset"),
    *router.urls,
]
