"""The brute-force lockout: one policy for web sign-in, the token endpoint and SMTP AUTH."""

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
import time_machine
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.backends import ModelBackend
from django.test import Client, RequestFactory, override_settings

from apps.accounts import lockout, services
from apps.accounts.exceptions import AuthenticationFailed, LockedOut
from apps.accounts.models import AuthEvent
from apps.alerts.models import Alert
from apps.core.exceptions import PermissionDeniedError
from tests.factories import TEST_PASSWORD, DomainAdminFactory, UserFactory

pytestmark = pytest.mark.django_db

LOGIN_URL = "/accounts/login/"
LOCKOUTS_URL = "/accounts/lockouts/"
CLEAR_URL = "/accounts/lockouts/clear/"
GENERIC_LOGIN_ERROR = "Invalid email or password."
LOCKED_ERROR = "Invalid email or password. Too many attempts; try again later."
ATTACKER = "192.0.2.66"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _verify(email, password="wrong password", *, ip=ATTACKER, channel="web"):
    request = RequestFactory().post(LOGIN_URL, REMOTE_ADDR=ip, HTTP_USER_AGENT="test-agent")
    return services.credentials_verify(request=request, email=email, password=password, channel=channel)


def _fail(email, *, ip=ATTACKER, channel="web", times=1):
    for _ in range(times):
        with pytest.raises(AuthenticationFailed):
            _verify(email, ip=ip, channel=channel)


def _lockout_events():
    return list(AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT).order_by("id"))


def _lockout_alerts():
    return list(Alert.objects.filter(kind="accounts.lockout").order_by("id"))


def _login(client, email, password):
    return client.post(LOGIN_URL, {"email": email, "password": password})


def _error_block(response):
    content = response.content.decode()
    start = content.index('<div class="form-errors"')
    return content[start : content.index("</div>", start)]


# --- the policy ------------------------------------------------------------------------------


def test_credentials_verify_locks_account_after_limit_and_refuses_correct_password(plain_user):
    _fail(plain_user.email, times=4)
    assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 0

    _fail(plain_user.email)  # the fifth failure trips the lockout

    with (
        mock.patch.object(
            ModelBackend, "authenticate", autospec=True, side_effect=ModelBackend.authenticate
        ) as backend,
        pytest.raises(LockedOut) as excinfo,
    ):
        _verify(plain_user.email, TEST_PASSWORD)

    backend.assert_not_called()  # a locked-out attempt never gets its password checked
    error = excinfo.value
    assert (error.code, error.status_code, error.message) == ("locked_out", 429, LOCKED_ERROR)
    assert 890 <= error.retry_after <= 900
    refused = AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED).latest("id")
    assert refused.detail == {"locked_out": True}
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_OK).exists()


def test_lockout_holds_for_base_time_then_lifts(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 900

        clock.shift(timedelta(seconds=899))
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 1

        clock.shift(timedelta(seconds=2))
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 0
        assert _verify(plain_user.email, TEST_PASSWORD) == plain_user


def test_lockout_by_address_spans_login_names():
    victim = UserFactory()
    for n in range(5):
        _fail(f"guess{n}@people.test")

    with pytest.raises(LockedOut):
        _verify(victim.email, TEST_PASSWORD)  # a new name from the same address

    assert _verify(victim.email, TEST_PASSWORD, ip="198.51.100.20") == victim  # another address
    [event] = _lockout_events()
    assert event.detail["subjects"] == ["ip"]
    assert event.ip == ATTACKER


def test_lockout_by_account_spans_addresses(plain_user):
    for n in range(5):
        _fail(plain_user.email, ip=f"198.51.100.{n + 1}")

    with pytest.raises(LockedOut):
        _verify(plain_user.email, TEST_PASSWORD, ip="203.0.113.9")

    [event] = _lockout_events()
    assert event.detail["subjects"] == ["username"]
    assert event.email == plain_user.email
    # The last address is not locked: it failed once, for a name that is locked.
    assert lockout.lockout_remaining(username="other@people.test", ip="198.51.100.5") == 0


def test_lockout_time_doubles_with_each_lockout_within_a_day(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 900

        clock.shift(timedelta(seconds=901))
        _fail(plain_user.email, times=5)
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 1800

        clock.shift(timedelta(seconds=901))
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 899

        clock.shift(timedelta(seconds=900))
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 0
        _fail(plain_user.email, times=5)
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 3600

    assert [event.detail["seconds"] for event in _lockout_events()] == [900, 1800, 3600]
    alerts = _lockout_alerts()
    assert [alert.data["seconds"] for alert in alerts] == [900, 1800, 3600]
    assert "locked for 1 hour" in alerts[-1].message


@override_settings(A3_LOCKOUT_SECONDS=50_000)
def test_lockout_time_is_capped_at_a_day(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)
        clock.shift(timedelta(seconds=50_001))
        _fail(plain_user.email, times=5)  # twice the base would be 100 000 s

        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 24 * 3600


def test_lockout_older_than_a_day_does_not_double(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)
        clock.shift(timedelta(hours=25))
        _fail(plain_user.email, times=5)

        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 900


def test_attempts_during_lockout_do_not_extend_it(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)
        clock.shift(timedelta(seconds=600))
        for _ in range(3):
            with pytest.raises(LockedOut):
                _verify(plain_user.email)

        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 300
    assert len(_lockout_events()) == 1


def test_failures_outside_the_window_do_not_add_up(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=4)
        clock.shift(timedelta(seconds=901))
        _fail(plain_user.email, times=4)

        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 0
    assert _lockout_events() == []


def test_successful_sign_in_forgets_own_typos_but_not_an_attack_from_the_address(plain_user):
    _fail(plain_user.email, times=3)
    _fail("someone-else@people.test", times=1)

    assert _verify(plain_user.email, TEST_PASSWORD) == plain_user
    _fail(plain_user.email, times=3)
    assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 0

    _fail("third@people.test", times=1)  # the address now has 1 + 3 + 1 failures
    assert lockout.lockout_remaining(username="fourth@people.test", ip=ATTACKER) > 0


def test_login_names_are_normalised_for_the_count(plain_user):
    _fail(plain_user.email.upper(), times=2)
    _fail(f"  {plain_user.email} ", ip="198.51.100.1", times=3)

    assert lockout.lockout_remaining(username=plain_user.email.title(), ip=None) > 0


def test_ipv6_spellings_share_one_counter():
    for spelling in ["2001:DB8::1", "2001:db8:0:0::1", "2001:0db8::0001"]:
        lockout.lockout_record_failure(username=f"{spelling}@people.test", ip=spelling, channel="smtp")
    lockout.lockout_record_failure(username="a@people.test", ip="2001:db8::1", channel="smtp")
    assert lockout.lockout_record_failure(username="b@people.test", ip="2001:db8::1", channel="smtp")

    assert lockout.lockout_remaining(username="c@people.test", ip="2001:DB8:0::1") > 0


# --- alert and auth record -------------------------------------------------------------------


def test_lockout_emits_one_alert_and_one_auth_event(plain_user):
    with time_machine.travel(START, tick=False):
        _fail(plain_user.email, times=5)
        for _ in range(2):
            with pytest.raises(LockedOut):
                _verify(plain_user.email)

    [event] = _lockout_events()
    assert (event.user, event.email, event.ip, event.channel, event.user_agent) == (
        plain_user,
        plain_user.email,
        ATTACKER,
        "web",
        "test-agent",
    )
    assert event.detail == {
        "subjects": ["username", "ip"],
        "failures": 5,
        "seconds": 900,
        "locked_until": (START + timedelta(seconds=900)).isoformat(),
    }
    [alert] = _lockout_alerts()
    assert alert.level == "warning"
    assert alert.message == (
        f"Sign-in locked for 15 minutes for account {plain_user.email} and address {ATTACKER} "
        "after 5 failed attempts (web)."
    )
    assert alert.data == {
        "email": plain_user.email,
        "ip": ATTACKER,
        "channel": "web",
        "subjects": ["username", "ip"],
        "failures": 5,
        "seconds": 900,
        "locked_until": event.detail["locked_until"],
    }


def test_lockout_of_unknown_name_is_recorded_without_an_account():
    _fail("nobody@people.test", times=5)

    [event] = _lockout_events()
    assert (event.user, event.email) == (None, "nobody@people.test")


# --- the SMTP-facing functions ---------------------------------------------------------------


def test_smtp_failures_lock_out_and_are_listed():
    results = [
        lockout.lockout_record_failure(
            username=" Mailer@People.Test ", ip="203.0.113.25", channel="smtp", user_agent=""
        )
        for _ in range(5)
    ]

    assert results == [False, False, False, False, True]
    assert lockout.lockout_remaining(username="mailer@people.test", ip="198.51.100.1") > 0
    assert lockout.lockout_remaining(username="other@people.test", ip="203.0.113.25") > 0
    assert lockout.lockout_record_failure(username="mailer@people.test", ip=None, channel="smtp")
    [event] = _lockout_events()
    assert (event.channel, event.email, event.ip) == ("smtp", "mailer@people.test", "203.0.113.25")
    listed = {(item.username, item.ip, item.channel, item.failures) for item in lockout.lockouts_active()}
    assert listed == {("mailer@people.test", None, "smtp", 5), ("", "203.0.113.25", "smtp", 5)}


def test_smtp_lockout_also_refuses_the_web_and_the_reverse(plain_user):
    for _ in range(5):
        lockout.lockout_record_failure(username=plain_user.email, ip="203.0.113.25", channel="smtp")

    with pytest.raises(LockedOut):
        _verify(plain_user.email, TEST_PASSWORD, ip="198.51.100.3")

    _fail("webby@people.test", times=5, ip="198.51.100.99")
    assert lockout.lockout_record_failure(username="webby@people.test", ip="203.0.113.1", channel="smtp")


def test_smtp_success_resets_own_failures():
    for _ in range(4):
        lockout.lockout_record_failure(username="mailer@people.test", ip="203.0.113.25", channel="smtp")

    lockout.lockout_record_success(username="mailer@people.test", ip="203.0.113.25", channel="smtp")

    assert not lockout.lockout_record_failure(
        username="mailer@people.test", ip="203.0.113.25", channel="smtp"
    )


def test_unknown_channel_is_a_programming_error():
    with pytest.raises(ValueError, match="channel"):
        lockout.lockout_record_failure(username="a@people.test", ip="203.0.113.25", channel="imap")


# --- clearing --------------------------------------------------------------------------------


def test_lockout_clear_lifts_lockout_records_actor_and_resets_doubling(superadmin, plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)

        removed = lockout.lockout_clear(actor=superadmin, username=plain_user.email.upper())

        assert removed == 1
        # One counter held all five failures, of the name and of the address: both are free.
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 0
        assert lockout.lockout_remaining(username="x@people.test", ip=ATTACKER) == 0
        assert lockout.lockout_clear(actor=superadmin, ip=ATTACKER) == 0
        assert _verify(plain_user.email, TEST_PASSWORD) == plain_user

        clock.shift(timedelta(seconds=60))
        _fail(plain_user.email, times=5)  # after a clear, the next lockout starts at the base
        assert lockout.lockout_remaining(username=plain_user.email, ip=ATTACKER) == 900

    cleared = list(AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT_CLEARED).order_by("id"))
    assert [(e.email, e.ip, e.user, e.detail["subject"]) for e in cleared] == [
        (plain_user.email, None, plain_user, "username"),
        ("", ATTACKER, None, "ip"),
    ]
    assert cleared[0].detail == {
        "subject": "username",
        "actor": superadmin.email,
        "actor_id": superadmin.pk,
        "removed": 1,
    }


@pytest.mark.parametrize("role", ["domain_admin", "user"])
def test_lockout_clear_is_for_superadmins_only(role, plain_user):
    actor = DomainAdminFactory() if role == "domain_admin" else UserFactory()
    _fail(plain_user.email, times=5)

    with pytest.raises(PermissionDeniedError):
        lockout.lockout_clear(actor=actor, username=plain_user.email)

    assert lockout.lockout_remaining(username=plain_user.email, ip=None) > 0
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT_CLEARED).exists()


def test_lockouts_active_lists_only_current_lockouts(plain_user):
    with time_machine.travel(START, tick=False) as clock:
        _fail(plain_user.email, times=5)
        _fail("few@people.test", ip="198.51.100.50", times=2)

        [by_account, by_address] = sorted(
            lockout.lockouts_active(), key=lambda item: item.subject, reverse=True
        )
        assert (by_account.subject, by_account.username, by_account.ip) == (
            "username",
            plain_user.email,
            None,
        )
        assert (by_address.subject, by_address.username, by_address.ip) == ("ip", "", ATTACKER)
        assert by_account.locked_until == START + timedelta(seconds=900)
        assert (by_account.failures, by_account.channel) == (5, "web")

        clock.shift(timedelta(seconds=901))
        assert lockout.lockouts_active() == []


# --- the web sign-in -------------------------------------------------------------------------


def test_web_login_locks_out_and_refuses_correct_password_with_429(user_a):
    client = Client(REMOTE_ADDR=ATTACKER)
    for _ in range(5):
        response = _login(client, user_a.email, "not the password")
        assert response.status_code == 400

    response = _login(client, user_a.email, TEST_PASSWORD)

    assert response.status_code == 429
    assert LOCKED_ERROR in response.content.decode()
    assert 890 <= int(response.headers["Retry-After"]) <= 900
    assert SESSION_KEY not in client.session
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_OK).exists()


def test_web_login_answers_are_the_same_for_unknown_and_known_accounts(user_a):
    wrong = _login(Client(REMOTE_ADDR="198.51.100.1"), user_a.email, "nope")
    unknown = _login(Client(REMOTE_ADDR="198.51.100.2"), "nobody@alpha.test", "nope")
    assert (wrong.status_code, _error_block(wrong)) == (unknown.status_code, _error_block(unknown))
    assert GENERIC_LOGIN_ERROR in _error_block(wrong)

    for email, ip in [(user_a.email, "198.51.100.1"), ("nobody@alpha.test", "198.51.100.2")]:
        for _ in range(4):
            _login(Client(REMOTE_ADDR=ip), email, "nope")
    known_locked = _login(Client(REMOTE_ADDR="198.51.100.1"), user_a.email, TEST_PASSWORD)
    unknown_locked = _login(Client(REMOTE_ADDR="198.51.100.2"), "nobody@alpha.test", TEST_PASSWORD)

    assert known_locked.status_code == unknown_locked.status_code == 429
    assert _error_block(known_locked) == _error_block(unknown_locked)
    assert LOCKED_ERROR in _error_block(known_locked)


def test_web_login_counts_the_client_behind_a_trusted_proxy(settings, user_a):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.2"
    for n in range(5):
        response = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.200, 203.0.113.{n}").post(
            LOGIN_URL, {"email": f"guess{n}@alpha.test", "password": "nope"}
        )
        assert response.status_code == 400

    # Five clients failed once each behind one proxy: nobody is locked out.
    response = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.77").post(
        LOGIN_URL, {"email": user_a.email, "password": TEST_PASSWORD}
    )
    assert response.status_code == 302
    assert set(AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED).values_list("ip", flat=True)) == {
        f"203.0.113.{n}" for n in range(5)
    }


# --- the lockouts page -----------------------------------------------------------------------


def _signed_in(user, **defaults):
    client = Client(**defaults)
    client.force_login(user)
    return client


def test_lockouts_page_lists_lockouts_for_superadmin(superadmin, plain_user):
    _fail(plain_user.email, times=5)

    response = _signed_in(superadmin).get(LOCKOUTS_URL)

    assert response.status_code == 200
    content = response.content.decode()
    assert f"account {plain_user.email}" in content
    assert f"address {ATTACKER}" in content
    assert content.count(">Clear</button>") == 2
    assert f'href="{LOCKOUTS_URL}"' in content  # the nav link


def test_lockouts_page_htmx_gets_the_table_only(superadmin, plain_user):
    _fail(plain_user.email, times=5)

    response = _signed_in(superadmin).get(LOCKOUTS_URL, HTTP_HX_REQUEST="true")

    content = response.content.decode()
    assert content.startswith('<div id="lockout-table">')
    assert f"account {plain_user.email}" in content
    assert "<html" not in content


def test_lockouts_page_clear_works_without_javascript(superadmin, plain_user):
    _fail(plain_user.email, times=5)
    client = Client(enforce_csrf_checks=True)
    client.force_login(superadmin)
    page = client.get(LOCKOUTS_URL)
    token = page.context["csrf_token"]

    response = client.post(CLEAR_URL, {"username": plain_user.email, "csrfmiddlewaretoken": str(token)})

    assert response.status_code == 302
    assert response.headers["Location"] == LOCKOUTS_URL
    assert lockout.lockout_remaining(username=plain_user.email, ip=None) == 0
    event = AuthEvent.objects.get(kind=AuthEvent.Kind.LOCKOUT_CLEARED)
    assert event.detail["actor"] == superadmin.email
    follow = client.get(LOCKOUTS_URL).content.decode()
    assert f"Lockout of {plain_user.email} cleared." in follow
    assert f"account {plain_user.email}" not in follow


def test_lockouts_page_clear_requires_csrf_token(superadmin, plain_user):
    _fail(plain_user.email, times=5)
    client = Client(enforce_csrf_checks=True)
    client.force_login(superadmin)

    response = client.post(CLEAR_URL, {"username": plain_user.email})

    assert response.status_code == 403
    assert lockout.lockout_remaining(username=plain_user.email, ip=None) > 0


def test_lockouts_page_clear_by_htmx_returns_the_refreshed_table(superadmin, plain_user):
    for n in range(5):
        _fail(f"guess{n}@people.test")
        _fail(plain_user.email, ip=f"198.51.100.{n + 1}")

    response = _signed_in(superadmin).post(CLEAR_URL, {"ip": ATTACKER}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    content = response.content.decode()
    assert content.startswith('<div id="lockout-table">')
    assert f"address {ATTACKER}" not in content
    assert f"account {plain_user.email}" in content
    assert lockout.lockout_remaining(username="x@people.test", ip=ATTACKER) == 0


@pytest.mark.parametrize("body", [{}, {"username": "a@people.test", "ip": ATTACKER}, {"ip": "not-an-ip"}])
def test_lockouts_page_clear_rejects_bad_form(superadmin, body):
    client = _signed_in(superadmin)

    response = client.post(CLEAR_URL, body, follow=True)

    assert "Nothing to clear" in response.content.decode()
    assert not AuthEvent.objects.filter(kind=AuthEvent.Kind.LOCKOUT_CLEARED).exists()


@pytest.mark.parametrize("role", ["domain_admin", "user"])
def test_lockouts_page_is_404_for_non_superadmins(role, plain_user):
    actor = DomainAdminFactory() if role == "domain_admin" else UserFactory()
    _fail(plain_user.email, times=5)
    client = _signed_in(actor)

    assert client.get(LOCKOUTS_URL).status_code == 404
    assert client.post(CLEAR_URL, {"username": plain_user.email}).status_code == 404
    assert lockout.lockout_remaining(username=plain_user.email, ip=None) > 0
    assert f'href="{LOCKOUTS_URL}"' not in client.get("/accounts/events/").content.decode()


def test_lockouts_page_redirects_anonymous_to_login(db):
    response = Client().get(LOCKOUTS_URL)

    assert response.status_code == 302
    assert response.headers["Location"].startswith(LOGIN_URL)
