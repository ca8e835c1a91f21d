from django.urls import path

from apps.mailboxes import views, webmail_views

app_name = "mailboxes"
urlpatterns = [
    path("domains/", views.domain_list_view, name="domain-list"),
    path("domains/new/", views.domain_create_view, name="domain-create"),
    path("domains/<int:domain_id>/", views.domain_edit_view, name="domain-edit"),
    path("domains/<int:domain_id>/delete/", views.domain_delete_view, name="domain-delete"),
    path("mailboxes/", views.mailbox_list_view, name="mailbox-list"),
    path("mailboxes/new/", views.mailbox_create_view, name="mailbox-create"),
    path("mailboxes/<int:mailbox_id>/", views.mailbox_edit_view, name="mailbox-edit"),
    path("mailboxes/<int:mailbox_id>/toggle/", views.mailbox_toggle_view, name="mailbox-toggle"),
    path("mailboxes/<int:mailbox_id>/delete/", views.mailbox_delete_view, name="mailbox-delete"),
    path("aliases/", views.alias_list_view, name="alias-list"),
    path("aliases/new/", views.alias_create_view, name="alias-create"),
    path("aliases/<int:alias_id>/", views.alias_edit_view, name="alias-edit"),
    path("aliases/<int:alias_id>/delete/", views.alias_delete_view, name="alias-delete"),
]

# Webmail: reading and filing mail in the dashboard.
urlpatterns += [
    path("webmail/", webmail_views.webmail_index_view, name="webmail"),
    path("webmail/<int:mailbox_id>/", webmail_views.webmail_mailbox_view, name="webmail-mailbox"),
    path("webmail/messages/<int:item_id>/", webmail_views.webmail_message_view, name="webmail-message"),
    path(
        "webmail/messages/<int:item_id>/body/",
        webmail_views.webmail_message_body_view,
        name="webmail-message-body",
    ),
    path(
        "webmail/messages/<int:item_id>/flags/",
        webmail_views.webmail_message_flags_view,
        name="webmail-message-flags",
    ),
    path(
        "webmail/messages/<int:item_id>/move/",
        webmail_views.webmail_message_move_view,
        name="webmail-message-move",
    ),
    path(
        "webmail/messages/<int:item_id>/delete/",
        webmail_views.webmail_message_delete_view,
        name="webmail-message-delete",
    ),
]
