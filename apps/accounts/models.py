from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils import timezone

from apps.accounts.querysets import ApiTokenQuerySet, UserQuerySet


class UserManager(BaseUserManager.from_queryset(UserQuerySet)):  # type: ignore[misc]
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        user = self.model(email=email.strip().lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("role", User.Role.SUPERADMIN)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in to the dashboard or API. The email is the login."""

    class Role(models.TextChoices):
        SUPERADMIN = "superadmin", "Superadmin"
        DOMAIN_ADMIN = "domain_admin", "Domain admin"
        USER = "user", "Mailbox user"

    email = models.CharField("email address", max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.USER, db_index=True)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    @property
    def is_superadmin(self) -> bool:
        return self.is_active and self.role == self.Role.SUPERADMIN

    @property
    def is_domain_admin(self) -> bool:
        return self.is_active and self.role == self.Role.DOMAIN_ADMIN

    @property
    def is_admin(self) -> bool:
        return self.is_superadmin or self.is_domain_admin

    @property
    def is_staff(self) -> bool:
        # Django's admin site is for superadmins only.
        return self.is_superadmin


class ApiToken(models.Model):
    """A named bearer credential. Only a hash of the secret is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    # "mfa_enrolment": issued to a user whom policy requires to have a second factor and
    # who has none yet; it reaches only the MFA enrolment endpoints.
    scope = models.CharField(max_length=16, default="full")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def is_usable(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuthEvent(models.Model):
    """One record per authentication event: the place the compliance audit log takes over."""

    class Kind(models.TextChoices):
        LOGIN_OK = "login_ok", "Login succeeded"
        LOGIN_FAILED = "login_failed", "Login failed"
        LOGOUT = "logout", "Logout"
        TOKEN_CREATED = "token_created", "API token created"
        TOKEN_REVOKED = "token_revoked", "API token revoked"
        LOCKOUT = "lockout", "Locked out"
        LOCKOUT_CLEARED = "lockout_cleared", "Lockout cleared"
        MFA_OK = "mfa_ok", "Second factor verified"
        MFA_FAILED = "mfa_failed", "Second factor failed"
        MFA_ENROLLED = "mfa_enrolled", "Second factor added"
        MFA_REMOVED = "mfa_removed", "Second factor removed"
        MFA_RESET = "mfa_reset", "Second factors reset by an administrator"
        BACKUP_CODES_GENERATED = "backup_codes_generated", "Backup codes generated"
        BACKUP_CODE_USED = "backup_code_used", "Backup code used"
        SSO_LOGIN = "sso_login", "Signed in through SSO"
        SSO_LINKED = "sso_linked", "SSO identity linked"
        SSO_PROVISIONED = "sso_provisioned", "Account created through SSO"
        PASSWORD_CHANGED = "password_changed", "Password changed"
        PASSWORD_RESET_REQUESTED = "password_reset_requested", "Password reset requested"
        PASSWORD_RESET = "password_reset", "Password reset"
        SESSION_REVOKED = "session_revoked", "Session signed out"
        APP_PASSWORD_CREATED = "app_password_created", "App password created"
        APP_PASSWORD_REVOKED = "app_password_revoked", "App password revoked"

    kind = models.CharField(max_length=32, choices=Kind.choices, db_index=True)
    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="auth_events"
    )
    # The login name as typed, kept for failures where no user matched.
    email = models.CharField(max_length=254, blank=True, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True, db_index=True)
    user_agent = models.CharField(max_length=300, blank=True)
    channel = models.CharField(max_length=16, default="web")  # web | api | smtp
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["kind", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.email} {self.created_at:%Y-%m-%d %H:%M}"


class UserSession(models.Model):
    """A signed-in web session, as the user sees it on the sessions page: which device,
    from where, when last seen. Revoking it deletes the Django session."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="web_sessions")
    session_key = models.CharField(max_length=40, unique=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now, db_index=True)
    mfa_verified = models.BooleanField(default=False)
    method = models.CharField(max_length=16, default="password")  # password | passkey | sso

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return f"{self.user.email} from {self.ip or '?'}"


class SsoProvider(models.Model):
    """An identity provider users can sign in with: OpenID Connect (generic, Google or
    Microsoft Entra presets) or SAML 2.0. Settings made in the dashboard; the client
    secret is encrypted at rest."""

    class Kind(models.TextChoices):
        OIDC = "oidc", "OpenID Connect"
        GOOGLE = "google", "Google"
        MICROSOFT = "microsoft", "Microsoft Entra ID"
        SAML = "saml", "SAML 2.0"

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    enabled = models.BooleanField(default=True)
    # OpenID Connect
    issuer = models.URLField(blank=True, help_text="Discovery at <issuer>/.well-known/openid-configuration")
    client_id = models.CharField(max_length=255, blank=True)
    client_secret = models.TextField(blank=True)  # encrypted
    scopes = models.CharField(max_length=255, default="openid email profile")
    # SAML
    idp_entity_id = models.CharField(max_length=255, blank=True)
    idp_sso_url = models.URLField(blank=True)
    idp_x509_cert = models.TextField(blank=True)
    # Accounts and roles
    jit_provisioning = models.BooleanField(default=False)
    jit_domains = models.JSONField(default=list, blank=True)  # email domains allowed to self-provision
    groups_claim = models.CharField(max_length=100, blank=True)
    role_mapping = models.JSONField(default=dict, blank=True)  # group -> role
    trust_idp_mfa = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
