"""Test-only URLconf: the project's URLs, plus the digest, suspension and suspension API
routes in case the project's threat URLconfs do not list them yet (they are added to the
same "threats" namespace, so reverse("threats:digest-action") works either way)."""

from django.urls import URLResolver, include, path
from rest_framework.routers import SimpleRouter

from a3mailer import urls as project_urls
from apps.threats import urls as threats_urls
from apps.threats.api.suspensions import SuspensionViewSet
from apps.threats.views import digest, suspensions

_ours = [
    path("digest/<str:token>/", digest.digest_action_view, name="digest-action"),
    path("suspensions/", suspensions.suspension_list_view, name="suspension-list"),
    path("suspensions/<int:suspension_id>/lift/", suspensions.suspension_lift_view, name="suspension-lift"),
]
_names = {pattern.name for pattern in threats_urls.urlpatterns}
threats_patterns = [*threats_urls.urlpatterns, *(p for p in _ours if p.name not in _names)]

router = SimpleRouter()
router.register("suspensions", SuspensionViewSet, basename="suspension")

urlpatterns = [
    path("quarantine/", include((threats_patterns, "threats"))),
    # Before the project's API: the first match wins, and both serve the same viewset.
    path("api/v1/", include((router.urls, "threats-suspensions"))),
    *(
        pattern
        for pattern in project_urls.urlpatterns
        if not (isinstance(pattern, URLResolver) and pattern.namespace == "threats")
    ),
]
