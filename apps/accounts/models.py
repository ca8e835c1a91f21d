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
