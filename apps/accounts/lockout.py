"""Brute-force lockout: one policy for the web sign-in, the API token endpoint and SMTP AUTH.

After A3_LOCKOUT_FAILURES failed attempts for one login name, or from one address, that name
or address is refused for A3_LOCKOUT_SECONDS, doubled for each earlier lockout of the same
name or address within 24 hours, and never longer than 24 hours. A refused attempt is not
counted and its password is never checked, so the end time that admins see and that clients
get as Retry-After holds.

django-axes keeps the counters (AccessAttempt rows in the database, so every process shares
them) and makes the lock decision; this module is the only code that talks to it. Every door
describes an attempt to axes with the same minimal request (`_attempt_request`): axes needs a
request, and the SMTP listener has none.

How the growing time maps onto axes: axes counts the failures newer than AXES_COOLOFF_TIME
and locks while they reach the limit, so that one duration is both the counting window and
the lock time. `lockout_window`, the AXES_COOLOFF_TIME callable, returns the base time; while
a lockout recorded in the auth log is in force for the name or address, it returns that
lockout's own duration instead. The failures behind a lockout thus stay in the window exactly
as long as the lockout lasts and drop out when it ends. The doubling is read from the LOCKOUT
auth events of the last 24 hours, counted from the last LOCKOUT_CLEARED of that name or
address: an admin's clear is a fresh start.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain

from axes.handlers.proxy import AxesProxyHandler
from axes.models import AccessAttempt, AccessAttemptExpiration
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, Sum
from django.http import HttpRequest
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

from apps.accounts import services
from apps.accounts.models import AuthEvent, User
from apps.alerts.services import emit
from apps.core.exceptions import ApplicationError, PermissionDeniedError

CHANNELS = ("web", "api", "smtp")
# The path axes records with each counter; read back to tell which door a failure came by.
_CHANNEL_PATHS = {"web": "/accounts/login/", "api": "/api/v1/auth/token/", "smtp": "/smtp/auth"}
_PATH_CHANNELS = {path: channel for channel, path in _CHANNEL_PATHS.items()}
_HISTORY = timedelta(hours=24)
_MAX_SECONDS = 24 * 3600

USERNAME = "username"
IP = "ip"
# A lockout subject: (USERNAME, login name) or (IP, address).
Subject = tuple[str, str]


@dataclass(frozen=True)
class Lockout:
    """One locked-out login name (`username`) or address (`ip`); the other field is empty."""

    username: str
    ip: str | None
    failures: int
    channel: str
    locked_until: datetime

    @property
    def subject(self) -> str:
        return IP if self.ip else USERNAME


# --- Service API -----------------------------------------------------------------------


def lockout_remaining(*, username: str, ip: str | None) -> int:
    """Seconds until this username or IP may try again; 0 when not locked."""
    username, ip = _username(username), _ip(ip)
    request = _attempt_request(username=username, ip=ip)
    if AxesProxyHandler.is_allowed(request, {"username": username}):
        return 0
    now = timezone.now()
    until = _locked_until(username=username, ip=ip, now=now)
    if until is None:
        # Locked by axes alone (a blank login name, or its IP block list): a window from now.
        return _window_seconds([], now)
    return max(1, math.ceil((until - now).total_seconds()))


def lockout_record_failure(*, username: str, ip: str | None, channel: str, user_agent: str = "") -> bool:
    """Count a failed login (channel: "web", "api" or "smtp"); True when it caused (or is
    within) a lockout.

    For doors that check the password themselves (SMTP AUTH): ask lockout_remaining first
    and refuse while it is not 0, so a locked-out client's password is never checked; call
    this only when a checked password was wrong. An attempt during a lockout is not counted.
    """
    username, ip = _username(username), _ip(ip)
    request = _attempt_request(username=username, ip=ip, channel=channel, user_agent=user_agent)
    credentials = {"username": username}
    if not AxesProxyHandler.is_allowed(request, credentials):
        return True
    # The signal Django's authenticate() sends on a failure: axes counts every door's
    # failures through this one receiver.
    user_login_failed.send(sender=__name__, credentials=credentials, request=request)
    return _lockout_note(username=username, ip=ip, channel=channel, user_agent=user_agent)


def lockout_authenticate(
    *, username: str, password: str, ip: str | None, channel: str, user_agent: str = ""
) -> User | None:
    """Check a password through Django's authentication backends; None when refused.

    axes' backend runs first and refuses a locked-out name or address before any password
    hash is computed. A failure reaches axes through Django's user_login_failed signal, is
    counted and may start a lockout, as lockout_record_failure does for other doors.
    """
    username, ip = _username(username), _ip(ip)
    request = _attempt_request(username=username, ip=ip, channel=channel, user_agent=user_agent)
    user = authenticate(request, username=username, password=password)
    if user is None:
        _lockout_note(username=username, ip=ip, channel=channel, user_agent=user_agent)
    return user


def lockout_record_success(*, username: str, ip: str | None, channel: str) -> None:
    """Forget this login name's failures from this address: its owner's own typos.

    The name's failures from other addresses and the address's failures for other names
    stay, so signing in to one account never wipes the count of an attack on others.
    """
    _channel_path(channel)  # rejects an unknown channel, like the other entry points
    username, ip = _username(username), _ip(ip)
    if username and ip:
        AxesProxyHandler.reset_attempts(username=username, ip_address=ip)


def lockouts_active() -> list[Lockout]:
    """Every login name and address locked out now, the latest to end first."""
    now = timezone.now()
    limit = settings.AXES_FAILURE_LIMIT
    since = now - timedelta(seconds=_MAX_SECONDS)
    recent = AccessAttempt.objects.filter(attempt_time__gte=since).order_by()
    # Only names and addresses with enough failures in the widest window can be locked.
    usernames = [
        name
        for name in recent.values("username")
        .annotate(total=Sum("failures_since_start"))
        .filter(total__gte=limit)
        .values_list("username", flat=True)
        if name
    ]
    ips = [
        address
        for address in recent.values("ip_address")
        .annotate(total=Sum("failures_since_start"))
        .filter(total__gte=limit)
        .values_list("ip_address", flat=True)
        if address
    ]
    subjects: list[Subject] = [(USERNAME, name) for name in usernames] + [(IP, address) for address in ips]
    if not subjects:
        return []
    events = _lockout_events(now=now, usernames=usernames, ips=ips)
    rows = _failure_rows(subjects, since=since)
    found = []
    for subject in subjects:
        lockouts = _subject_lockouts(events, subject)
        window = _window_seconds(lockouts, now)
        counted = [row for row in rows[subject] if row.attempt_time >= now - timedelta(seconds=window)]
        until = _end(counted, window)
        if until is None or until < now:
            continue
        active = [event for event in lockouts if _until(event) > now]
        kind, value = subject
        found.append(
            Lockout(
                username=value if kind == USERNAME else "",
                ip=value if kind == IP else None,
                failures=sum(row.failures for row in counted),
                channel=active[-1].channel if active else _PATH_CHANNELS.get(counted[0].path, "web"),
                locked_until=until,
            )
        )
    return sorted(found, key=lambda item: item.locked_until, reverse=True)


@transaction.atomic
def lockout_clear(*, actor: User, username: str = "", ip: str = "", channel: str = "web") -> int:
    """Lift the lockout of a login name and/or an address (superadmins only) and forget its
    earlier lockouts, so that the next one starts again at the base time.

    Records a LOCKOUT_CLEARED auth event per name or address, naming the actor, even when
    nothing was locked. Returns how many failure counters were removed.
    """
    if not actor.is_superadmin:
        raise PermissionDeniedError("Only a superadmin can clear lockouts.")
    name = _username(username) if username.strip() else ""
    address = _ip(ip) if ip.strip() else None
    if ip.strip() and address is None:
        raise ApplicationError("That is not an IP address.", fields={"ip": ["Enter a valid IP address."]})
    if not name and not address:
        raise ApplicationError(
            "Name a login name or an address to clear.",
            fields={"non_field_errors": ["Give a username or an ip."]},
        )
    removed = 0
    for subject in _subjects(name, address):
        kind, value = subject
        count = AccessAttempt.objects.filter(_subject_match([subject])).count()
        if kind == USERNAME:
            AxesProxyHandler.reset_attempts(username=value)
        else:
            AxesProxyHandler.reset_attempts(ip_address=value)
        removed += count
        services.auth_event_record(
            kind=AuthEvent.Kind.LOCKOUT_CLEARED,
            client=services.ClientInfo(ip=value if kind == IP else None),
            user=User.objects.filter(email=value).first() if kind == USERNAME else None,
            email=value if kind == USERNAME else "",
            channel=channel,
            subject=kind,
            actor=actor.email,
            actor_id=actor.pk,
            removed=count,
        )
    return removed


# --- axes configuration hooks (see the AXES_* settings) --------------------------------


def lockout_username(request: HttpRequest | None, credentials: dict | None) -> str:
    """AXES_USERNAME_CALLABLE: the normalised login name of an attempt."""
    bound = getattr(request, "a3_lockout_username", None)
    if bound is not None:
        return bound
    return _username(str((credentials or {}).get("username") or ""))


def lockout_client_ip(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the client address the auth record uses too."""
    return _ip(services.client_ip(request))


def lockout_window(request: HttpRequest | None) -> timedelta:
    """AXES_COOLOFF_TIME: how far back failures count for this attempt's name and address."""
    username = getattr(request, "a3_lockout_username", None)
    if request is None or username is None:
        # axes' sign-in and sign-out housekeeping runs on real requests; with per-row
        # expiry it never needs the window, and the base time is right for anything else.
        return timedelta(seconds=settings.A3_LOCKOUT_SECONDS)
    now = timezone.now()
    history = _history(_subjects(username, _ip(request.META.get("REMOTE_ADDR"))), now=now)
    return timedelta(seconds=_window_seconds(chain.from_iterable(history.values()), now))


# --- Internals -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One axes counter: failures of one name from one address and client."""

    username: str
    ip: str | None
    attempt_time: datetime
    failures: int
    path: str


def _username(raw: str) -> str:
    return services.login_name_normalize(raw)


def _ip(raw: str | None) -> str | None:
    """An address in the text form the database stores, or None when there is none."""
    text = (raw or "").strip()
    if not text:
        return None
    try:
        return clean_ipv6_address(text) if ":" in text else str(ipaddress.IPv4Address(text))
    except (ValueError, ValidationError):
        return None


def _channel_path(channel: str | None) -> str:
    if channel is None:
        return "/"
    if channel not in _CHANNEL_PATHS:
        raise ValueError(f"unknown sign-in channel {channel!r}")
    return _CHANNEL_PATHS[channel]


def _attempt_request(
    *, username: str, ip: str | None, channel: str | None = None, user_agent: str = ""
) -> HttpRequest:
    """The request axes sees for an attempt by any door."""
    request = HttpRequest()
    request.method = "POST"
    request.path = request.path_info = _channel_path(channel)
    request.META["PATH_INFO"] = request.path
    request.META["HTTP_USER_AGENT"] = user_agent.replace("\x00", "")[:255]
    if ip:
        request.META["REMOTE_ADDR"] = ip
    # axes hands lockout_username and lockout_window the request alone, not the credentials.
    request.a3_lockout_username = username  # type: ignore[attr-defined]
    return request


def _subjects(username: str, ip: str | None) -> list[Subject]:
    # A blank name matches no account and is never shown or cleared as a lockout; axes still
    # counts blank names together, which can only refuse attempts that would fail anyway.
    subjects: list[Subject] = []
    if username:
        subjects.append((USERNAME, username))
    if ip:
        subjects.append((IP, ip))
    return subjects


def _by_kind(subjects: Iterable[Subject]) -> dict[str, list[str]]:
    subjects = list(subjects)
    return {
        "usernames": [value for kind, value in subjects if kind == USERNAME],
        "ips": [value for kind, value in subjects if kind == IP],
    }


def _subject_match(subjects: Iterable[Subject]) -> Q:
    match = Q(pk__in=[])
    for kind, value in subjects:
        match |= Q(username=value) if kind == USERNAME else Q(ip_address=value)
    return match


def _lockout_events(*, now: datetime, usernames: list[str], ips: list[str]) -> list[AuthEvent]:
    """LOCKOUT and LOCKOUT_CLEARED events of the last 24 hours for these names and
    addresses, oldest first."""
    if not usernames and not ips:
        return []
    return list(
        AuthEvent.objects.filter(
            Q(email__in=usernames) | Q(ip__in=ips),
            kind__in=[AuthEvent.Kind.LOCKOUT, AuthEvent.Kind.LOCKOUT_CLEARED],
            created_at__gte=now - _HISTORY,
        ).order_by("created_at", "pk")
    )


def _history(subjects: list[Subject], *, now: datetime) -> dict[Subject, list[AuthEvent]]:
    """Each name's and address's lockouts of the last 24 hours since it was last cleared."""
    events = _lockout_events(now=now, **_by_kind(subjects))
    return {subject: _subject_lockouts(events, subject) for subject in subjects}


def _subject_lockouts(events: Iterable[AuthEvent], subject: Subject) -> list[AuthEvent]:
    """The LOCKOUT events of one name or address since it was last cleared, oldest first."""
    kind, value = subject
    found: list[AuthEvent] = []
    for event in events:
        if (event.email if kind == USERNAME else event.ip) != value:
            continue
        if event.kind == AuthEvent.Kind.LOCKOUT_CLEARED and event.detail.get("subject") == kind:
            found = []
        elif event.kind == AuthEvent.Kind.LOCKOUT and kind in event.detail.get("subjects", ()):
            found.append(event)
    return found


def _until(event: AuthEvent) -> datetime:
    return datetime.fromisoformat(event.detail["locked_until"])


def _window_seconds(lockouts: Iterable[AuthEvent], now: datetime) -> int:
    """The duration of a lockout in force, else the base time."""
    in_force = [int(event.detail["seconds"]) for event in lockouts if _until(event) > now]
    return max([settings.A3_LOCKOUT_SECONDS, *in_force])


def _next_seconds(lockouts: list[AuthEvent]) -> int:
    """The base time doubled for each earlier lockout, capped at 24 hours."""
    return min(_MAX_SECONDS, settings.A3_LOCKOUT_SECONDS * 2 ** min(len(lockouts), 32))


def _failure_rows(subjects: list[Subject], *, since: datetime) -> dict[Subject, list[_Row]]:
    """axes' counters for these names and addresses since a time, newest first."""
    found: dict[Subject, list[_Row]] = {subject: [] for subject in subjects}
    attempts = (
        AccessAttempt.objects.filter(_subject_match(subjects), attempt_time__gte=since)
        .order_by("-attempt_time", "-pk")
        .values_list("username", "ip_address", "attempt_time", "failures_since_start", "path_info")
    )
    for username, ip, attempt_time, failures, path in attempts:
        row = _Row(username=username, ip=ip, attempt_time=attempt_time, failures=failures, path=path)
        for subject in ((USERNAME, username), (IP, ip)):
            if subject in found:
                found[subject].append(row)
    return found


def _end(rows: list[_Row], window: int) -> datetime | None:
    """When counters (newest first) stop reaching the limit as they age out of the window;
    None when they do not reach it."""
    counted = 0
    for row in rows:
        counted += row.failures
        if counted >= settings.AXES_FAILURE_LIMIT:
            return row.attempt_time + timedelta(seconds=window)
    return None


def _locked_until(*, username: str, ip: str | None, now: datetime) -> datetime | None:
    subjects = _subjects(username, ip)
    window = _window_seconds(chain.from_iterable(_history(subjects, now=now).values()), now)
    rows = _failure_rows(subjects, since=now - timedelta(seconds=window))
    ends = [end for subject in subjects if (end := _end(rows[subject], window)) is not None]
    return max(ends, default=None)


def _lockout_note(*, username: str, ip: str | None, channel: str, user_agent: str) -> bool:
    """After a failure was counted: True when the name or address is now locked out. The
    failure that starts a lockout records it and fixes its duration."""
    now = timezone.now()
    subjects = _subjects(username, ip)
    history = _history(subjects, now=now)
    window = _window_seconds(chain.from_iterable(history.values()), now)
    rows = _failure_rows(subjects, since=now - timedelta(seconds=window))
    locked = [subject for subject in subjects if _end(rows[subject], window) is not None]
    if not locked:
        return False
    if any(_until(event) > now for subject in locked for event in history[subject]):
        return True  # a concurrent attempt has just started this lockout
    seconds = max(_next_seconds(history[subject]) for subject in locked)
    rows = _failure_rows(locked, since=now - timedelta(seconds=seconds))
    _lockout_start(
        username=username,
        ip=ip,
        channel=channel,
        user_agent=user_agent,
        subjects=locked,
        failures=max(sum(row.failures for row in rows[subject]) for subject in locked),
        seconds=seconds,
        locked_until=max(_end(rows[subject], seconds) or now for subject in locked),
    )
    return True


@transaction.atomic
def _lockout_start(
    *,
    username: str,
    ip: str | None,
    channel: str,
    user_agent: str,
    subjects: list[Subject],
    failures: int,
    seconds: int,
    locked_until: datetime,
) -> None:
    """Record a new lockout (LOCKOUT auth event, alert) and keep its counters long enough."""
    kinds = [kind for kind, _ in subjects]
    services.auth_event_record(
        kind=AuthEvent.Kind.LOCKOUT,
        client=services.ClientInfo(ip=ip, user_agent=user_agent[:300]),
        user=User.objects.filter(email=username).first() if username else None,
        email=username,
        channel=channel,
        subjects=kinds,
        failures=failures,
        seconds=seconds,
        locked_until=locked_until.isoformat(),
    )
    # Each counter got an expiry for the window it was counted in; the lockout's window is
    # longer after earlier lockouts, and axes deletes expired counters on every attempt.
    for pk, attempt_time in AccessAttempt.objects.filter(_subject_match(subjects)).values_list(
        "pk", "attempt_time"
    ):
        keep_until = attempt_time + timedelta(seconds=seconds)
        AccessAttemptExpiration.objects.filter(access_attempt_id=pk, expires_at__lt=keep_until).update(
            expires_at=keep_until
        )
    who = " and ".join(
        f"account {value}" if kind == USERNAME else f"address {value}" for kind, value in subjects
    )
    emit(
        "accounts.lockout",
        "warning",
        f"Sign-in locked for {_duration(seconds)} for {who} after {failures} failed attempts ({channel}).",
        email=username,
        ip=ip,
        channel=channel,
        subjects=kinds,
        failures=failures,
        seconds=seconds,
        locked_until=locked_until.isoformat(),
    )


def _duration(seconds: int) -> str:
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
