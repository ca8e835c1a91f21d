from django.urls import path

from apps.threats.views import quarantine as quarantine_views
from apps.threats.views import rules as rule_views

app_name = "threats"
urlpatterns: list = []

# The quarantine (everyone: their own mailboxes; administrators: their scope).
urlpatterns += [
    path("", quarantine_views.quarantine_list_view, name="quarantine-list"),
    path("bulk/", quarantine_views.quarantine_bulk_view, name="quarantine-bulk"),
    path("<int:item_id>/", quarantine_views.quarantine_detail_view, name="quarantine-detail"),
    path("<int:item_id>/preview/", quarantine_views.quarantine_preview_view, name="quarantine-preview"),
    path("<int:item_id>/release/", quarantine_views.quarantine_release_view, name="quarantine-release"),
    path("<int:item_id>/delete/", quarantine_views.quarantine_delete_view, name="quarantine-delete"),
    path("<int:item_id>/report/", quarantine_views.quarantine_report_view, name="quarantine-report"),
    path("<int:item_id>/request/", quarantine_views.quarantine_request_view, name="quarantine-request"),
    path("<int:item_id>/decide/", quarantine_views.quarantine_decide_view, name="quarantine-decide"),
]

# Threat rules (administrators): lists, content rules, domain policies.
urlpatterns += [
    path("rules/", rule_views.rules_view, name="rules"),
    path("rules/lists/", rule_views.list_entry_create_view, name="list-entry-create"),
    path("rules/content/", rule_views.content_rule_create_view, name="content-rule-create"),
    path(
        "rules/content/<int:rule_id>/delete/", rule_views.content_rule_delete_view, name="content-rule-delete"
    ),
    path("rules/policy/<int:domain_id>/", rule_views.policy_update_view, name="policy-update"),
]

# A mailbox's own allow/block list and digest frequency (everyone).
urlpatterns += [
    path("lists/", rule_views.lists_view, name="lists"),
    path(
        "lists/<int:mailbox_id>/entries/", rule_views.own_list_entry_create_view, name="own-list-entry-create"
    ),
    path("lists/<int:mailbox_id>/digest/", rule_views.preference_update_view, name="preference-update"),
    path("lists/entries/<int:entry_id>/delete/", rule_views.list_entry_delete_view, name="list-entry-delete"),
]

# One-click digest actions (the signed token is the credential) and suspensions.
from apps.threats.views import digest as digest_views  # noqa: E402
from apps.threats.views import reports as report_views  # noqa: E402
from apps.threats.views import suspensions as suspension_views  # noqa: E402

urlpatterns += [
    path("digest/<str:token>/", digest_views.digest_action_view, name="digest-action"),
    path("report/<int:item_id>/", report_views.webmail_spam_report_view, name="webmail-spam-report"),
    path("suspensions/", suspension_views.suspension_list_view, name="suspension-list"),
    path(
        "suspensions/<int:suspension_id>/lift/",
        suspension_views.suspension_lift_view,
        name="suspension-lift",
    ),
]
