from __future__ import annotations

from django.db import models


class AlertQuerySet(models.QuerySet):
    def visible_to(self, user) -> AlertQuerySet:
        """Superadmins see every alert; domain admins see their domains' alerts."""
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            # Reverse side of Domain.admins (mailboxes app); read without importing it.
            return self.filter(domain_id__in=user.administered_domains.values("id"))
        return self.none()
