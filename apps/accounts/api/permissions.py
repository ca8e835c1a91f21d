"""API role checks of the accounts app. Object scoping happens in selectors, never here."""

from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView


class IsSuperadmin(BasePermission):
    """Superadmins only; others signed in get 403, anonymous callers 401."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_superadmin)
