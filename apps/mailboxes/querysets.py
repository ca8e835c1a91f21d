"""The scoping funnel: every read of mailbox data starts from `visible_to(user)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from apps.accounts.models import User


def _is_active_user(user: User) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active)


class DomainQuerySet(models.QuerySet):
    def visible_to(self, user: User) -> DomainQuerySet:
        """Superadmins: all. Domain admins: the domains assigned to them. Mailbox users:
        the domains their own mailboxes are in (read-only)."""
        if not _is_active_user(user):
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            return self.filter(admins=user)
        return self.filter(mailboxes__owner=user).distinct()

    def manageable_by(self, user: User) -> DomainQuerySet:
        """Domains whose mailboxes and aliases the user may change."""
        if not _is_active_user(user):
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            return self.filter(admins=user)
        return self.none()


class MailboxQuerySet(models.QuerySet):
    def visible_to(self, user: User) -> MailboxQuerySet:
        if not _is_active_user(user):
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            return self.filter(domain__admins=user)
        return self.filter(owner=user)


class AliasQuerySet(models.QuerySet):
    def visible_to(self, user: User) -> AliasQuerySet:
        """Mailbox users see the aliases that deliver to one of their mailboxes."""
        if not _is_active_user(user):
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            return self.filter(domain__admins=user)
        addresses = user.mailboxes.values("address")
        return self.filter(destinations__address__in=addresses).distinct()


class MailItemQuerySet(models.QuerySet):
    def visible_to(self, user: User) -> MailItemQuerySet:
        """Superadmins: all mail. Domain admins: mail in their domains' mailboxes. Mailbox
        users: their own mailboxes only."""
        if not _is_active_user(user):
            return self.none()
        if user.is_superadmin:
            return self.all()
        if user.is_domain_admin:
            return self.filter(mailbox__domain__admins=user)
        # A disabled mailbox (or domain) stops serving its owner too: that is how an
        # administrator cuts off a departing or compromised user.
        return self.filter(mailbox__owner=user, mailbox__is_active=True, mailbox__domain__is_active=True)
