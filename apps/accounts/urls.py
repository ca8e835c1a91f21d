from django.urls import path

from apps.accounts import views

app_name = "accounts"
urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("tokens/", views.tokens_view, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token-revoke"),
    path("users/", views.user_list_view, name="user-list"),
    path("users/new/", views.user_create_view, name="user-create"),
    path("users/<int:user_id>/", views.user_edit_view, name="user-edit"),
    path("users/<int:user_id>/delete/", views.user_delete_view, name="user-delete"),
    path("events/", views.auth_events_view, name="auth-events"),
    path("lockouts/", views.lockout_list_view, name="lockout-list"),
    path("lockouts/clear/", views.lockout_clear_view, name="lockout-clear"),
]
