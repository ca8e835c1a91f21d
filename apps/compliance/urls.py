from django.urls import path

app_name = "compliance"
urlpatterns: list = []

# The compliance dashboard and DLP policies.
from apps.compliance.views import dashboard as dashboard_views  # noqa: E402
from apps.compliance.views import dlp as dlp_views  # noqa: E402

urlpatterns += [
    path("", dashboard_views.dashboard_view, name="dashboard"),
    path("dlp/", dlp_views.dlp_policy_list_view, name="dlp-list"),
    path("dlp/new/", dlp_views.dlp_policy_create_view, name="dlp-create"),
    path("dlp/<int:policy_id>/delete/", dlp_views.dlp_policy_delete_view, name="dlp-delete"),
]

# The audit log.
from apps.compliance.views import audit as audit_views  # noqa: E402

urlpatterns += [
    path("audit/", audit_views.audit_log_view, name="audit-log"),
    path("audit/verify/", audit_views.audit_verify_view, name="audit-verify"),
]

# Retention policies and runs, legal holds.
from apps.compliance.views import retention as retention_views  # noqa: E402

urlpatterns += [
    path("retention/", retention_views.retention_list_view, name="retention-list"),
    path("retention/new/", retention_views.retention_create_view, name="retention-create"),
    path("retention/<int:policy_id>/", retention_views.retention_edit_view, name="retention-edit"),
    path("retention/<int:policy_id>/delete/", retention_views.retention_delete_view, name="retention-delete"),
    path("retention/preview/", retention_views.retention_preview_view, name="retention-preview"),
    path("retention/runs/", retention_views.retention_runs_view, name="retention-runs"),
    path("holds/", retention_views.holds_list_view, name="holds-list"),
    path("holds/new/", retention_views.holds_create_view, name="holds-create"),
    path("holds/<int:hold_id>/release/", retention_views.holds_release_view, name="holds-release"),
]

# GDPR exports and erasures.
from apps.compliance.views import gdpr as gdpr_views  # noqa: E402

urlpatterns += [
    path("gdpr/", gdpr_views.gdpr_view, name="gdpr"),
    path("gdpr/exports/<int:job_id>/row/", gdpr_views.gdpr_export_row_view, name="gdpr-export-row"),
    path(
        "gdpr/exports/<int:job_id>/download/",
        gdpr_views.gdpr_export_download_view,
        name="gdpr-export-download",
    ),
    path("gdpr/exports/<int:job_id>/cancel/", gdpr_views.gdpr_export_cancel_view, name="gdpr-export-cancel"),
    path("gdpr/erasures/new/", gdpr_views.gdpr_erasure_view, name="gdpr-erasure"),
    path("gdpr/erasures/<int:job_id>/", gdpr_views.gdpr_erasure_detail_view, name="gdpr-erasure-detail"),
]
