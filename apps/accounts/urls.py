from django.urls import path
from django.views.i18n import JavaScriptCatalog

from apps.accounts import mfa_views, passkey_views, session_views, views
from apps.accounts.sso import views as sso_views

app_name = "accounts"
urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("login/mfa/", mfa_views.login_mfa_view, name="login-mfa"),
    path("logout/", views.logout_view, name="logout"),
    path("security/", mfa_views.security_view, name="security"),
    path("mfa/setup/", mfa_views.mfa_setup_view, name="mfa-setup"),
    path("mfa/verify/", mfa_views.mfa_verify_view, name="mfa-verify"),
    path("mfa/totp/remove/", mfa_views.totp_remove_view, name="mfa-totp-remove"),
    path("mfa/backup-codes/", mfa_views.backup_codes_regenerate_view, name="mfa-backup-codes"),
    path("passkeys/", passkey_views.passkey_list_view, name="passkey-list"),
    path("passkeys/<int:passkey_id>/rename/", passkey_views.passkey_rename_view, name="passkey-rename"),
    path("passkeys/<int:passkey_id>/remove/", passkey_views.passkey_remove_view, name="passkey-remove"),
    path("tokens/", views.tokens_view, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token-revoke"),
    path("users/", views.user_list_view, name="user-list"),
    path("users/new/", views.user_create_view, name="user-create"),
    path("users/<int:user_id>/", views.user_edit_view, name="user-edit"),
    path("users/<int:user_id>/delete/", views.user_delete_view, name="user-delete"),
    path("users/<int:user_id>/mfa-reset/", mfa_views.user_mfa_reset_view, name="user-mfa-reset"),
    path("events/", views.auth_events_view, name="auth-events"),
    path("lockouts/", views.lockout_list_view, name="lockout-list"),
    path("lockouts/clear/", views.lockout_clear_view, name="lockout-clear"),
    path("sso/", sso_views.provider_list_view, name="sso-provider-list"),
    path("sso/new/", sso_views.provider_create_view, name="sso-provider-create"),
    path("sso/<int:provider_id>/", sso_views.provider_edit_view, name="sso-provider-edit"),
    path("sso/<int:provider_id>/delete/", sso_views.provider_delete_view, name="sso-provider-delete"),
    path("sso/login/<slug:slug>/", sso_views.sso_begin_view, name="sso-begin"),
    path("sso/complete/<slug:slug>/", sso_views.sso_complete_view, name="sso-complete"),
    path("sso/saml/acs/", sso_views.saml_acs_view, name="sso-saml-acs"),
    path("sso/saml/metadata/", sso_views.saml_metadata_view, name="sso-saml-metadata"),
    path("sessions/", session_views.sessions_view, name="sessions"),
    path("sessions/<int:session_id>/revoke/", session_views.session_revoke_view, name="session-revoke"),
    path("sessions/revoke-all/", session_views.sessions_revoke_all_view, name="sessions-revoke-all"),
    path(
        "sessions/tokens/<int:token_id>/revoke/",
        session_views.session_token_revoke_view,
        name="session-token-revoke",
    ),
    path(
        "sessions/app-passwords/<int:app_password_id>/revoke/",
        session_views.session_app_password_revoke_view,
        name="session-app-password-revoke",
    ),
    path("password/", session_views.password_change_view, name="password-change"),
    path("password/reset/", session_views.password_reset_view, name="password-reset"),
    path("password/reset/sent/", session_views.password_reset_sent_view, name="password-reset-sent"),
    path(
        "password/reset/<str:uidb64>/<str:token>/",
        session_views.password_reset_confirm_view,
        name="password-reset-confirm",
    ),
]

# django-otp-webauthn's ceremony endpoints, with A3Mailer's views (passkey_views): included
# by a3mailer/urls.py under accounts/passkeys/ in the namespace "otp_webauthn", whose URL
# names the library's template tags reverse.
webauthn_urlpatterns = [
    path(
        "registration/begin/",
        passkey_views.PasskeyRegistrationBeginView.as_view(),
        name="credential-registration-begin",
    ),
    path(
        "registration/complete/",
        passkey_views.PasskeyRegistrationCompleteView.as_view(),
        name="credential-registration-complete",
    ),
    path(
        "authentication/begin/",
        passkey_views.PasskeyAuthenticationBeginView.as_view(),
        name="credential-authentication-begin",
    ),
    path(
        "authentication/complete/",
        passkey_views.PasskeyAuthenticationCompleteView.as_view(),
        name="credential-authentication-complete",
    ),
    # The messages the library's script shows go through gettext().
    path(
        "jsi18n/",
        JavaScriptCatalog.as_view(packages=["django_otp_webauthn"]),
        name="js-i18n-catalog",
    ),
]
