"""The project's URLs plus POST /api/v1/spam-reports/, for the spam report API tests
until apps/threats/api/urls.py registers the view."""

from django.urls import include, path

from a3mailer import urls as project
from apps.threats.api.reports import SpamReportView

api_v1 = [*project.api_v1, path("spam-reports/", SpamReportView.as_view(), name="spam-report")]

urlpatterns = [
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    *(route for route in project.urlpatterns if str(route.pattern) != "api/v1/"),
]
