from django.urls import path
from rest_framework.routers import SimpleRouter

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
router.register("users", UserViewSet, basename="user")
router.register("lockouts", LockoutViewSet, basename="lockout")

urlpatterns = [
    path("auth/token/", TokenObtainView.as_view(), name="token-obtain"),
    path("auth/me/", MeView.as_view(), name="me"),
    *router.urls,
]
