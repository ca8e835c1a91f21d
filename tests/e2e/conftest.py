"""Real processes for end-to-end tests: `manage.py serve` (and scale-out roles) on free
ports, in a temporary data dir, on SQLite or on a fresh PostgreSQL database when the suite
runs with DATABASE_URL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "admin@e2e.test"
ADMIN_PASSWORD = "e2e-admin-password-0451"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def fresh_database() -> Iterator[str | None]:
    """A new PostgreSQL database for the server under test when the suite runs on
    PostgreSQL; None (SQLite in the data dir) otherwise."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        yield None
        return
    import psycopg

    parts = urlsplit(url)
    name = f"a3e2e_{uuid.uuid4().hex[:10]}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def own_redis_database() -> Iterator[str | None]:
    """An empty Redis database of its own for the server under test when the suite runs
    with Redis: sharing the suite's would have its worker chew through the tasks the
    other tests queued (for messages of another database) before reaching its own."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        yield None
        return
    import redis

    parts = urlsplit(url)
    suite_db = int(parts.path.strip("/") or 0)
    own = urlunsplit(parts._replace(path=f"/{(suite_db + 8) % 16}"))
    client = redis.Redis.from_url(own)
    client.flushdb()
    try:
        yield own
    finally:
        client.flushdb()
        client.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Server:
    """A running A3Mailer installation: its processes, base URL and data dir."""

    data_dir: Path
    env: dict[str, str]
    http_port: int
    procs: list[Proc] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        log_path = self.data_dir / f"{name}.log"
        handle = log_path.open("wb")
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-6000:]}" for p in self.procs)

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.popen.poll() is not None:
                    raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise AssertionError(f"/readyz never became ready: {last}\n{self.logs()}")

    def wait_heartbeat(self, timeout: float = 60) -> float:
        """Wait until beat has had a worker run its heartbeat task; returns its age."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.wait_ready()
            if body.get("worker_heartbeat_age_seconds") is not None:
                return body["worker_heartbeat_age_seconds"]
            time.sleep(0.5)
        raise AssertionError(f"no worker heartbeat within {timeout}s\n{self.logs()}")

    def stop(self, timeout: float = 30) -> dict[str, int]:
        """SIGTERM every process and wait; returns exit codes (killed ones are reported)."""
        codes: dict[str, int] = {}
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                codes[proc.name] = proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                codes[proc.name] = proc.popen.wait()
                codes[proc.name + ":killed"] = 1
        return codes


@contextlib.contextmanager
def installation(tmp_path: Path, *, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    with fresh_database() as database_url, own_redis_database() as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
        http_port = free_port()
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "a3mailer.settings",
                "A3_DATA_DIR": str(tmp_path),
                "A3_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "A3_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
                "A3_SUBMISSION_LISTEN": f"127.0.0.1:{free_port()}",
                "DJANGO_SUPERUSER_EMAIL": ADMIN_EMAIL,
                "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
                "A3_HEARTBEAT_SECONDS": "2",
                # Password-only tokens for the tests at large; the MFA tests switch the policy on.
                "A3_MFA_REQUIRED_ROLES": "",
                "A3_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("DATABASE_URL", None)
        if database_url:
            env["DATABASE_URL"] = database_url
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.update(extra_env or {})
        server = Server(data_dir=tmp_path, env=env, http_port=http_port)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Server]:
    """One embedded `manage.py serve` shared by a test module."""
    with installation(tmp_path_factory.mktemp("serve")) as server:
        server.start("serve", sys.executable, "manage.py", "serve")
        server.wait_ready()
        yield server


def api(server: Server, method: str, path: str, body: dict | None = None, token: str | None = None):
    """Minimal JSON HTTP client: returns (status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.base_url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def admin_token(server: Server) -> str:
    status, body = api(
        server, "POST", "/api/v1/auth/token/", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert status == 201, body
    return body["token"]


# --- Headless Chromium (Debian's, driven by Playwright; never a downloaded browser) ---

CHROMIUM = "/usr/bin/chromium"
# Flags for a closed network and a root user (see the machine notes in the README).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
