from rest_framework.routers import SimpleRouter

from apps.compliance.api.audit import AuditEventViewSet
from apps.compliance.api.dlp import DlpHitViewSet, DlpPolicyViewSet, MessageClassificationViewSet
from apps.compliance.api.gdpr import GdprErasureViewSet, GdprExportViewSet
from apps.compliance.api.retention import LegalHoldViewSet, RetentionPolicyViewSet, RetentionRunViewSet

router = SimpleRouter()
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("dlp-policies", DlpPolicyViewSet, basename="dlp-policy")
router.register("dlp-hits", DlpHitViewSet, basename="dlp-hit")
router.register("dlp-classifications", MessageClassificationViewSet, basename="dlp-classification")
router.register("gdpr/exports", GdprExportViewSet, basename="gdpr-export")
router.register("gdpr/erasures", GdprErasureViewSet, basename="gdpr-erasure")
router.register("retention-policies", RetentionPolicyViewSet, basename="retention-policy")
router.register("retention-runs", RetentionRunViewSet, basename="retention-run")
router.register("legal-holds", LegalHoldViewSet, basename="legal-hold")
urlpatterns = [*router.urls]
