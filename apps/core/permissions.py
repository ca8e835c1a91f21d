"""Role checks for dashboard views. Object scoping stays in selectors."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse


def _role_required(check: Callable[[object], bool]) -> Callable:
    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not check(request.user):
                # Pages outside your role do not exist for you, like objects outside your scope.
                raise Http404
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


superadmin_required = _role_required(lambda user: user.is_superadmin)
admin_required = _role_required(lambda user: user.is_admin)
