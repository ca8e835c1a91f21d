from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Q
from django.utils import timezone

if TYPE_CHECKING:
    from apps.accounts.models import User


class UserQuerySet(models.QuerySet):
    def visible_to(self, user: User) -> UserQuerySet:
        """Superadmins see everyone; domain admins see themselves and the owners of
        mailboxes in their domains; everyone else sees only themselves."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            return self.filter(Q(pk=user.pk) | Q(mailboxes__domain__admins=user)).distinct()
        return self.filter(pk=user.pk)


class ApiTokenQuerySet(models.QuerySet):
    def usable(self) -> ApiTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
