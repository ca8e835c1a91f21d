from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.accounts import urls as accounts_urls
from apps.core import views as core_views

api_v1 = [
    path("", include("apps.accounts.api.urls")),
    path("", include("apps.mailboxes.api.urls")),
    path("", include("apps.alerts.api.urls")),
    path("", include("apps.relay.api.urls")),
    path("", include("apps.compliance.api.urls")),
    path("", include("apps.threats.api.urls")),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),  # /metrics
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI injects one inline <style>; allow inline styles on this page only.
    path(
        "api/docs/",
        csp_update({"style-src": [UNSAFE_INLINE]})(SpectacularSwaggerSplitView.as_view(url_name="schema")),
        name="api-docs",
    ),
    # Passkey ceremonies: in the namespace django-otp-webauthn's template tags reverse.
    path("accounts/passkeys/", include((accounts_urls.webauthn_urlpatterns, "otp_webauthn"))),
    path("accounts/", include("apps.accounts.urls")),
    path("mail/", include("apps.mailboxes.urls")),
    path("alerts/", include("apps.alerts.urls")),
    path("relay/", include("apps.relay.urls")),
    path("compliance/", include("apps.compliance.urls")),
    path("quarantine/", include("apps.threats.urls")),
    # One sign-in for everyone: the admin site's own login would bypass the auth record,
    # the failure alerts and (later) MFA.
    path(
        "django-admin/login/",
        RedirectView.as_view(pattern_name="accounts:login", query_string=True),
        name="django-admin-login",
    ),
    path("django-admin/", admin.site.urls),
    path("", include("apps.core.urls")),
]
