"""The one-click page behind a quarantine digest's links. No sign-in: the signed,
single-use token in the URL is the credential, and it acts as the mailbox's owner.

GET only shows what the link will do, because mail scanners and link previews fetch
every URL in a message; the action needs the page's POST (CSRF-protected)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from apps.threats.services.digests import (
    DigestLinkGone,
    DigestLinkInvalid,
    digest_link_resolve,
    digest_link_use,
)

ACTION_WORDS = {
    "release": ("Release this message", "It is delivered to your inbox."),
    "delete": ("Delete this message", "It is removed from the quarantine for good."),
    "allow": ("Always allow this sender", "Mail from this sender is no longer held as spam for you."),
}


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def digest_action_view(request: HttpRequest, token: str) -> HttpResponse:
    try:
        if request.method == "POST":
            view = digest_link_use(token=token, request=request)
            template = "threats/digest_done.html"
        else:
            view = digest_link_resolve(token=token)
            template = "threats/digest_confirm.html"
    except (DigestLinkInvalid, DigestLinkGone) as exc:
        response = render(
            request,
            "threats/digest_invalid.html",
            {"message": exc.message, "gone": isinstance(exc, DigestLinkGone)},
            status=exc.status_code,
        )
    else:
        title, effect = ACTION_WORDS.get(view.link.action, ("", ""))
        response = render(
            request,
            template,
            {"view": view, "item": view.item, "mailbox": view.mailbox, "title": title, "effect": effect},
        )
    # The token is in the URL: keep it out of search indexes and other sites' logs.
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response
