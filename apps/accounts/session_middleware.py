"""Keeps the sessions page true: every signed-in request touches its UserSession row, and
a session revoked from elsewhere is logged out on its very next request."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth import SESSION_KEY, logout
from django.http import HttpRequest, HttpResponse

from apps.accounts import web_sessions


class WebSessionMiddleware:
    """Runs after AuthenticationMiddleware (and django-otp's, whose verification state the
    row records for sessions it adopts).

    Before the view: a signed-in session whose row is gone was revoked and is logged out,
    so the view sees an anonymous request (pages redirect to sign-in, the API answers
    401/403). After the view: a session the view signed out loses its row."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        signed_in_key = None
        # Checking the session first keeps anonymous requests free of user lookups.
        if SESSION_KEY in request.session and request.user.is_authenticated:
            if web_sessions.web_session_touch(request):
                signed_in_key = request.session.session_key
            else:
                logout(request)
        response = self.get_response(request)
        if signed_in_key and not request.user.is_authenticated:
            web_sessions.web_session_end(session_key=signed_in_key)
        return response
