from django.urls import path

from apps.relay.views import app_passwords as app_password_views
from apps.relay.views import dkim as dkim_views
from apps.relay.views import queue as queue_views
from apps.relay.views import transports as transport_views

app_name = "relay"
urlpatterns: list = []

# DKIM keys per domain.
urlpatterns += [
    path("dkim/", dkim_views.dkim_list_view, name="dkim-list"),
    path("dkim/<int:domain_id>/", dkim_views.dkim_domain_view, name="dkim-domain"),
    path("dkim/<int:domain_id>/generate/", dkim_views.dkim_generate_view, name="dkim-generate"),
    path("dkim/keys/<int:key_id>/activate/", dkim_views.dkim_activate_view, name="dkim-activate"),
    path("dkim/keys/<int:key_id>/check/", dkim_views.dkim_check_view, name="dkim-check"),
    path("dkim/keys/<int:key_id>/delete/", dkim_views.dkim_delete_view, name="dkim-delete"),
]

# The outbound queue (administrators).
urlpatterns += [
    path("queue/", queue_views.queue_list_view, name="queue-list"),
    path("queue/bulk/", queue_views.queue_bulk_view, name="queue-bulk"),
    path("queue/<int:item_id>/", queue_views.queue_detail_view, name="queue-detail"),
    path("queue/<int:item_id>/retry/", queue_views.queue_retry_view, name="queue-retry"),
    path("queue/<int:item_id>/hold/", queue_views.queue_hold_view, name="queue-hold"),
    path("queue/<int:item_id>/release/", queue_views.queue_release_view, name="queue-release"),
    path("queue/<int:item_id>/delete/", queue_views.queue_delete_view, name="queue-delete"),
]

# App passwords (everyone, for the mailboxes they manage).
urlpatterns += [
    path("app-passwords/", app_password_views.app_password_list_view, name="app-password-list"),
    path(
        "app-passwords/<int:app_password_id>/revoke/",
        app_password_views.app_password_revoke_view,
        name="app-password-revoke",
    ),
]

# Transport rules (superadmins).
urlpatterns += [
    path("transports/", transport_views.transport_list_view, name="transport-list"),
    path("transports/new/", transport_views.transport_create_view, name="transport-create"),
    path("transports/<int:rule_id>/", transport_views.transport_edit_view, name="transport-edit"),
    path("transports/<int:rule_id>/delete/", transport_views.transport_delete_view, name="transport-delete"),
]
