"""Web sessions as users see them: one UserSession row per signed-in browser, started by
login_complete, kept current by WebSessionMiddleware, and revocable one at a time or all
at once ("sign out everywhere").

Revoking deletes the Django session from the session store, which signs the browser out
on its next request, and then the row. Sessions started by sign-in also carry the id of
their row (SESSION_ROW_KEY), a second key for the middleware: when no row is found under
the session's key, the key was rotated (Django's cycle_key) and the row follows it, or the
row is gone and the session is logged out even if its stored data survived. A signed-in
session with no row id predates tracking: it is adopted (gets a row) and keeps working.

Revocation needs a server-side session engine (database, cache, file; the default is the
database): with signed-cookie sessions, a browser keeps the session data itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache import cache
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import ApiToken, AuthEvent, User, UserSession
from apps.core.exceptions import NotFoundError

__all__ = [
    "SESSION_ROW_KEY",
    "RevokedCredentials",
    "api_tokens_revoke_all",
    "user_agent_summary",
    "web_session_end",
    "web_session_get",
    "web_session_mark_verified",
    "web_session_rekey",
    "web_session_revoke",
    "web_session_start",
    "web_session_touch",
    "web_sessions_list",
    "web_sessions_revoke_all",
]

# Where a tracked Django session keeps the id of its UserSession row.
SESSION_ROW_KEY = "_a3_web_session"
# last_seen_at is for people reading the sessions page: a minute's precision is plenty and
# saves a write on almost every request.
TOUCH_INTERVAL = timedelta(minutes=1)


# --- Recording -------------------------------------------------------------------------


def web_session_start(*, request: HttpRequest, user: User, method: str, mfa_verified: bool) -> UserSession:
    """Record the session Django just started for `user` (call after django's login()).
    Also forgets the user's rows of sessions that have ended meanwhile."""
    if not request.session.session_key:
        request.session.save()
    key = request.session.session_key
    client = services.ClientInfo.from_request(request)
    now = timezone.now()
    session, _ = UserSession.objects.update_or_create(
        session_key=key,
        defaults={
            "user": user,
            "ip": client.ip,
            "user_agent": client.user_agent[:300],
            "created_at": now,
            "last_seen_at": now,
            "mfa_verified": mfa_verified,
            "method": method,
        },
    )
    request.session[SESSION_ROW_KEY] = session.pk
    ended = UserSession.objects.filter(user=user).exclude(session_key=key)
    ended.exclude(pk__in=_live(ended).values("pk")).delete()
    return session


def web_session_mark_verified(*, request: HttpRequest) -> None:
    """The session's user has just passed a second factor."""
    if request.session.session_key:
        UserSession.objects.filter(session_key=request.session.session_key).update(
            mfa_verified=True, last_seen_at=timezone.now()
        )


def web_session_touch(request: HttpRequest) -> bool:
    """For a signed-in request: keep its row current and return True; False when the
    session was revoked and must be logged out.

    Costs one query a minute per session and process, none in between: a revoked session
    is already gone from the session store, so the row need not be read on every request
    (revocation clears this cache entry too). A session without a row id predates
    tracking and is adopted, in the same single query."""
    session = request.session
    key = session.session_key
    user = request.user
    if not key or not user.is_authenticated:
        return True
    checked = _touch_cache_key(key)
    now = timezone.now()
    # The time of the last check travels with the entry (the cache's own expiry runs on
    # the cache server's clock, which may not be ours).
    last = cache.get(checked)
    if last and last[0] == user.pk and now.timestamp() - last[1] < TOUCH_INTERVAL.total_seconds():
        return True
    ip = services.client_ip(request)
    marker = session.get(SESSION_ROW_KEY)
    if marker is None:
        _adopt(request, key=key, user=user, now=now, ip=ip)
    elif not UserSession.objects.filter(session_key=key, user=user).update(last_seen_at=now, ip=ip):
        # No row under this key: either the key was rotated since the row was made
        # (Django's cycle_key), and the row follows it, or the row is gone: revoked.
        followed = UserSession.objects.filter(pk=int(marker), user=user).update(
            session_key=key, last_seen_at=now, ip=ip
        )
        if not followed:
            return False
    cache.set(checked, (user.pk, now.timestamp()), TOUCH_INTERVAL.total_seconds() * 2)
    return True


def _adopt(request: HttpRequest, *, key: str, user: User, now: datetime, ip: str | None) -> None:
    """Give a signed-in session from before tracking its row, or touch the row it got
    earlier: one upsert, so two requests of the session racing here cannot collide."""
    is_verified = getattr(user, "is_verified", None)  # set by django-otp's middleware
    UserSession.objects.bulk_create(
        [
            UserSession(
                session_key=key,
                user=user,
                ip=ip,
                user_agent=services.ClientInfo.from_request(request).user_agent[:300],
                created_at=now,
                last_seen_at=now,
                mfa_verified=bool(is_verified()) if callable(is_verified) else False,
                method="unknown",
            )
        ],
        update_conflicts=True,
        unique_fields=["session_key"],
        update_fields=["last_seen_at", "ip"],
    )


def _touch_cache_key(session_key: str) -> str:
    return f"a3:web-session:{session_key}"


def _forget_touches(keys: set[str] | list[str]) -> None:
    """The next request of these sessions checks its row again."""
    cache.delete_many([_touch_cache_key(key) for key in keys])


def web_session_rekey(*, request: HttpRequest, old_key: str | None) -> None:
    """The request's session got a new key (cycle_key) during this request: move its row
    over now, so that revoking "all other sessions" right after keeps it."""
    new_key = request.session.session_key
    if old_key and new_key and old_key != new_key:
        UserSession.objects.filter(session_key=old_key).update(session_key=new_key)
        _forget_touches([old_key])


def web_session_end(*, session_key: str) -> None:
    """The session was signed out: forget its row. Idempotent."""
    UserSession.objects.filter(session_key=session_key).delete()
    _forget_touches([session_key])


# --- Reading ---------------------------------------------------------------------------


def _may_manage(actor: User, user: User) -> bool:
    """Everyone manages their own sessions; superadmins also everyone else's."""
    return actor.is_authenticated and actor.is_active and (actor.pk == user.pk or actor.is_superadmin)


def web_sessions_list(*, actor: User, user: User) -> QuerySet[UserSession]:
    """The live web sessions of `user`, most recently seen first; empty when `actor` may
    not see them. Rows of sessions that have expired are left out."""
    if not _may_manage(actor, user):
        return UserSession.objects.none()
    return _live(UserSession.objects.filter(user=user)).order_by("-last_seen_at", "-pk")


def web_session_get(*, actor: User, user: User, session_id: int | str) -> UserSession:
    """One live session of `user`. Raises NotFoundError, also for other users' sessions."""
    try:
        return web_sessions_list(actor=actor, user=user).get(pk=int(session_id))
    except (UserSession.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such session.") from None


def _live(queryset: QuerySet[UserSession]) -> QuerySet[UserSession]:
    """Rows whose Django session can still be in use: seen within the session lifetime,
    and with a database-backed engine, still stored and unexpired."""
    now = timezone.now()
    queryset = queryset.filter(last_seen_at__gte=now - timedelta(seconds=settings.SESSION_COOKIE_AGE))
    model = _store_model()
    if model is not None:
        queryset = queryset.filter(
            session_key__in=model.objects.filter(expire_date__gt=now).values("session_key")
        )
    return queryset


# --- Revoking --------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokedCredentials:
    sessions: int
    tokens: int


@transaction.atomic
def web_session_revoke(
    *, actor: User, user: User, session_id: int | str, client: services.ClientInfo | None = None
) -> UserSession:
    """Sign one session of `user` out: its stored Django session and its row are deleted,
    so its next request is anonymous. Records SESSION_REVOKED on the owner's record.
    Raises NotFoundError for a session outside the actor's reach or already gone."""
    session = web_session_get(actor=actor, user=user, session_id=session_id)
    session_pk = session.pk
    _store_delete([session.session_key])
    session.delete()
    session.pk = session_pk  # callers still name the session they revoked
    services.auth_event_record(
        kind=AuthEvent.Kind.SESSION_REVOKED,
        client=client or services.ClientInfo(),
        user=user,
        session_id=session_pk,
        session_ip=session.ip,
        actor=actor.email,
    )
    return session


@transaction.atomic
def web_sessions_revoke_all(
    *,
    actor: User,
    user: User,
    keep_current: str | None,
    revoke_tokens: bool = True,
    keep_token_id: int | None = None,
    client: services.ClientInfo | None = None,
    reason: str = "signed out everywhere",
) -> RevokedCredentials:
    """Sign `user` out everywhere: every web session but the one keyed `keep_current`,
    and unless told otherwise every API token but `keep_token_id` (tokens are often
    minted from a session, so a session someone else took over may have left one behind).
    App passwords are separate mail credentials and are not touched.

    With a database-backed session engine, signed-in sessions that never got a row (from
    before tracking) are found in the store and deleted too. Records SESSION_REVOKED, and
    TOKEN_REVOKED when tokens went. Raises NotFoundError when the actor may not."""
    if not _may_manage(actor, user):
        raise NotFoundError("No such user.")
    rows = UserSession.objects.filter(user=user)
    if keep_current:
        rows = rows.exclude(session_key=keep_current)
    live = _live(rows).count()
    keys = set(rows.values_list("session_key", flat=True))
    untracked = _untracked_keys(user) - {keep_current}
    _store_delete(keys | untracked)
    rows.delete()
    client = client or services.ClientInfo()
    sessions = live + len(untracked)
    services.auth_event_record(
        kind=AuthEvent.Kind.SESSION_REVOKED,
        client=client,
        user=user,
        all=True,
        count=sessions,
        kept_current=bool(keep_current),
        actor=actor.email,
        reason=reason,
    )
    tokens = (
        api_tokens_revoke_all(user=user, keep_token_id=keep_token_id, client=client, reason=reason)
        if revoke_tokens
        else 0
    )
    return RevokedCredentials(sessions=sessions, tokens=tokens)


def api_tokens_revoke_all(
    *, user: User, keep_token_id: int | None = None, client: services.ClientInfo | None = None, reason: str
) -> int:
    """Revoke every usable API token of `user` but `keep_token_id`; returns how many.
    Records one TOKEN_REVOKED event when any went."""
    tokens = ApiToken.objects.usable().filter(user=user)
    if keep_token_id is not None:
        tokens = tokens.exclude(pk=keep_token_id)
    revoked = tokens.update(revoked_at=timezone.now())
    if revoked:
        services.auth_event_record(
            kind=AuthEvent.Kind.TOKEN_REVOKED,
            client=client or services.ClientInfo(),
            user=user,
            channel="api",
            reason=reason,
            count=revoked,
        )
    return revoked


# --- The session store -----------------------------------------------------------------


def _store_class() -> type[SessionBase]:
    return import_module(settings.SESSION_ENGINE).SessionStore


def _store_model() -> type[models.Model] | None:
    """The table of a database-backed session engine (db, cached_db); None for others."""
    get_model_class = getattr(_store_class(), "get_model_class", None)
    return get_model_class() if get_model_class is not None else None


def _store_delete(keys: set[str] | list[str]) -> None:
    _forget_touches(keys)
    store_class = _store_class()
    for key in keys:
        # Through the engine, so a cached_db session leaves its cache entry too.
        store_class(session_key=key).delete()


def _untracked_keys(user: User) -> set[str]:
    """Keys of stored, unexpired sessions signed in as `user` that have no row. Decodes
    only sessions without a row, which after the first sign-ins are few."""
    model = _store_model()
    if model is None:
        return set()
    decoder = _store_class()()
    untracked = model.objects.filter(expire_date__gt=timezone.now()).exclude(
        session_key__in=UserSession.objects.values("session_key")
    )
    found = set()
    for key, data in untracked.values_list("session_key", "session_data").iterator():
        if decoder.decode(data).get(SESSION_KEY) == str(user.pk):
            found.add(key)
    return found


# --- Presentation ----------------------------------------------------------------------

# Order matters: Edge and Opera also claim Chrome, Chrome also claims Safari.
_BROWSERS = [
    (re.compile(r"Edg(?:e|A|iOS)?/"), "Edge"),
    (re.compile(r"OPR/|Opera"), "Opera"),
    (re.compile(r"Firefox/|FxiOS/"), "Firefox"),
    (re.compile(r"Chrome/|CriOS/|Chromium/"), "Chrome"),
    (re.compile(r"Version/[\d.]+.*Safari/"), "Safari"),
    (re.compile(r"^curl/"), "curl"),
    (re.compile(r"python-requests|python-httpx|aiohttp|Python-urllib", re.IGNORECASE), "Python"),
]
_SYSTEMS = [
    (re.compile(r"Windows"), "Windows"),
    (re.compile(r"Android"), "Android"),
    (re.compile(r"iPhone|iPod"), "iOS"),
    (re.compile(r"iPad"), "iPadOS"),
    (re.compile(r"CrOS"), "ChromeOS"),
    (re.compile(r"Mac OS X|Macintosh"), "macOS"),
    (re.compile(r"Linux|X11"), "Linux"),
]


def user_agent_summary(user_agent: str) -> str:
    """A short device description for people, e.g. "Firefox on Linux". A rough guess from
    the User-Agent header (which the client chooses freely), never used for decisions."""
    browser = next((name for pattern, name in _BROWSERS if pattern.search(user_agent or "")), "")
    system = next((name for pattern, name in _SYSTEMS if pattern.search(user_agent or "")), "")
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or "Unknown device"
