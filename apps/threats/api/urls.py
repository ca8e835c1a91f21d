from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.threats.api.lists import ListEntryViewSet
from apps.threats.api.policies import DomainPolicyViewSet
from apps.threats.api.quarantine import QuarantineViewSet
from apps.threats.api.reports import SpamReportView
from apps.threats.api.rules import ContentRuleViewSet
from apps.threats.api.suspensions import SuspensionViewSet

router = SimpleRouter()
router.register("quarantine", QuarantineViewSet, basename="quarantine")
router.register("threat-lists", ListEntryViewSet, basename="threat-list")
router.register("content-rules", ContentRuleViewSet, basename="content-rule")
router.register("threat-policies", DomainPolicyViewSet, basename="threat-policy")
router.register("suspensions", SuspensionViewSet, basename="suspension")
urlpatterns = [
    *router.urls,
    path("spam-reports/", SpamReportView.as_view(), name="spam-report"),
]
