import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from a3mailer import env

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_lists_every_variable_the_settings_read():
    settings_source = (ROOT / "a3mailer" / "settings.py").read_text()
    read = set(re.findall(r'(?:env_\w+|parse_listen)\(\s*"([A-Z0-9_]+)"', settings_source))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read, "no variables found: the pattern no longer matches settings.py"
    assert read - documented == set()


@pytest.mark.parametrize("raw, expected", [("true", True), ("1", True), ("OFF", False), ("0", False)])
def test_env_bool_accepts_only_strict_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("A3_TEST_FLAG", raw)
    assert env.env_bool("A3_TEST_FLAG", not expected) is expected


@pytest.mark.parametrize("raw", ["yes", "ture", "2"])
def test_env_bool_rejects_ambiguous_values(monkeypatch, raw):
    monkeypatch.setenv("A3_TEST_FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match="A3_TEST_FLAG"):
        env.env_bool("A3_TEST_FLAG", False)


def test_env_int_enforces_minimum(monkeypatch):
    monkeypatch.setenv("A3_TEST_INT", "3")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_int("A3_TEST_INT", 10, minimum=5)


@pytest.mark.parametrize(
    "raw, expected", [("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:8000", ("::1", 8000))]
)
def test_parse_listen_reads_host_and_port(monkeypatch, raw, expected):
    monkeypatch.setenv("A3_TEST_LISTEN", raw)
    assert env.parse_listen("A3_TEST_LISTEN", "x:1") == expected


@pytest.mark.parametrize("raw", ["nohost", "host:port", "h:70000"])
def test_parse_listen_rejects_garbage(monkeypatch, raw):
    monkeypatch.setenv("A3_TEST_LISTEN", raw)
    with pytest.raises(ImproperlyConfigured):
        env.parse_listen("A3_TEST_LISTEN", "x:1")


def test_env_secret_reads_file_variant(monkeypatch, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    monkeypatch.setenv("A3_TEST_SECRET_FILE", str(secret_file))
    assert env.env_secret("A3_TEST_SECRET") == "s3cret"


def test_persistent_secret_key_is_generated_once(tmp_path):
    first = env.persistent_secret_key(tmp_path)
    assert len(first) >= 50
    assert env.persistent_secret_key(tmp_path) == first
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"


def test_celery_uses_the_broker_from_django_settings():
    """Regression: a second config_from_object once replaced the settings source and
    Celery fell back to amqp://localhost."""
    from django.conf import settings

    from celery_workers import app

    assert app.conf.broker_url == settings.CELERY_BROKER_URL
    assert app.conf.task_acks_late is True
    assert {queue.name for queue in app.conf.task_queues} == {"default", "mail", "scan", "backup"}
    assert app.amqp.router.route({}, "mailboxes.deliver")["queue"].name == "mail"
    assert "core.heartbeat" in app.conf.beat_schedule
