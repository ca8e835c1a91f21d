"""One rule for HTMX responses, shared by every dashboard view."""

from django.http import HttpRequest


def htmx_partial(request: HttpRequest) -> bool:
    """True when the request wants only a fragment: an HTMX request that is not a boosted
    navigation. Everything else gets the full page, so pages work without JavaScript."""
    return bool(request.htmx) and not request.htmx.boosted
