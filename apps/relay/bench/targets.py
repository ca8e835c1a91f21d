"""The servers under test: A3Mailer started from scratch (embedded on SQLite, or scale-out
on PostgreSQL + Redis + Celery), and the Postfix anchor from shared/bench.

Everything started here is registered on the caller's ExitStack the moment it exists, so
Ctrl-C or a failure at any step still stops processes and drops the temporary database.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from apps.core.benchmarks import NxdomainServer

ROOT = Path(settings.BASE_DIR)
DOMAIN = "bench.test"
RECIPIENT = f"bench@{DOMAIN}"
# Outbound: this mailbox submits (STARTTLS + AUTH) to a recipient whose domain a transport
# rule routes to the benchmark's sink.
OUTBOUND_SENDER = f"relay@{DOMAIN}"
OUTBOUND_DOMAIN = "external.test"
OUTBOUND_RECIPIENT = f"sink@{OUTBOUND_DOMAIN}"
ADMIN_EMAIL = "admin@bench.test"
PG_ADMIN_URL = os.environ.get("A3_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("A3_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# Variables of the calling shell that would point the server under test elsewhere.
_NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")

# MailItem rows filed in the mailbox's INBOX: what "delivered" means for A3Mailer.
_INBOX_COUNT = (
    "SELECT COUNT(*) FROM mailboxes_mailitem i JOIN mailboxes_folder f ON f.id = i.folder_id "
    "WHERE f.special_use = 'inbox' AND i.mailbox_id = "
)
INBOX_COUNT_SQLITE = _INBOX_COUNT + "?"
INBOX_COUNT_PG = _INBOX_COUNT + "%s"


class Unavailable(Exception):
    """A server (or what it needs) cannot be had on this machine; its rows are skipped."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Processes -------------------------------------------------------------------------


@contextlib.contextmanager
def teardown_on_exit() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose clean-up is not cut short by a second Ctrl-C or a SIGTERM:
    every step is bounded in time, and a half-done clean-up leaves processes behind."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        masked = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stack.close()
        finally:
            for sig, handler in masked.items():
                signal.signal(sig, handler)


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process group (it drains), SIGKILL it if it takes too long."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def spawn(name: str, args: list[str], *, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        # A session of its own: the terminal's Ctrl-C reaches only us, and we stop the
        # whole group (the process and anything it forked) by its id.
        # cwd is the log (data) dir: whatever a process writes to its working directory
        # (e.g. a beat schedule file) is removed with it instead of landing in the repo.
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args, cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return ManagedProcess(name, popen, log_path)


# --- A3Mailer --------------------------------------------------------------------------


@dataclass
class A3Mailer:
    mode: str  # "embedded" or "scaleout"
    data_dir: Path
    http_port: int
    smtp_port: int
    env: dict[str, str]
    submission_port: int = 0
    procs: list[ManagedProcess] = field(default_factory=list)
    database_url: str | None = None  # PostgreSQL; None for SQLite in data_dir
    mailbox_id: int | None = None
    sender_password: str = ""  # OUTBOUND_SENDER's, once provisioned
    _count: Callable[[], int] | None = None

    server = "A3Mailer"
    host = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.smtp_port

    def pids(self) -> list[int]:
        return [proc.popen.pid for proc in self.procs if proc.alive()]

    def prepare(self) -> None:
        """Nothing to reset: the runner counts from the current number of delivered items."""

    def delivered(self) -> int:
        if self._count is None:
            self._count = self._inbox_counter()
        return self._count()

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                tail = proc.log_tail()
                last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
                # The last line (usually the exception) first: it is what the summary shows.
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {last}\n{tail}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.procs)

    def _inbox_counter(self) -> Callable[[], int]:
        # Read-only connections, so the probe can never change what it measures.
        if self.database_url:
            import psycopg

            conn = psycopg.connect(
                self.database_url, autocommit=True, options="-c default_transaction_read_only=on"
            )
            return lambda: conn.execute(INBOX_COUNT_PG, (self.mailbox_id,)).fetchone()[0]
        path = self.data_dir / "a3mailer.sqlite3"
        sqlite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
        return lambda: sqlite.execute(INBOX_COUNT_SQLITE, (self.mailbox_id,)).fetchone()[0]


_offline_dns: NxdomainServer | None = None


def _bench_dns() -> str:
    """One offline resolver for every server of the run: scanning looks up SPF and DMARC
    records, and this machine may have no reachable resolver; Postfix, the yardstick,
    looks up nothing for local delivery either."""
    global _offline_dns
    if _offline_dns is None:
        _offline_dns = NxdomainServer().start()
    return _offline_dns.address


def _child_env(
    data_dir: Path, http_port: int, smtp_port: int, submission_port: int, password: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "a3mailer.settings",
            "A3_DATA_DIR": str(data_dir),
            "A3_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "A3_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "A3_SUBMISSION_LISTEN": f"127.0.0.1:{submission_port}",
            "DJANGO_SUPERUSER_EMAIL": ADMIN_EMAIL,
            "DJANGO_SUPERUSER_PASSWORD": password,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            # Celery reads this variable itself. Set explicitly because the Celery app does
            # not take the broker from the Django settings: without it every installation
            # would fall back to amqp://localhost and share that broker's queues with any
            # other A3Mailer on the machine. Scale-out replaces it with its Redis URL.
            "CELERY_BROKER_URL": "memory://",
            # The outbound run sends thousands of messages from one mailbox within the
            # hour: the sending limits would stop it, which is not what is measured.
            "A3_RATE_MAILBOX_MESSAGES_PER_HOUR": "100000000",
            "A3_RATE_MAILBOX_RECIPIENTS_PER_HOUR": "100000000",
            "A3_RATE_DOMAIN_MESSAGES_PER_HOUR": "100000000",
            "A3_RATE_DOMAIN_RECIPIENTS_PER_HOUR": "100000000",
            # Nor is behaviour analysis: that burst is exactly a sending spike.
            "A3_BEHAVIOUR_MIN_MESSAGES": "100000000",
            "A3_BEHAVIOUR_NEW_RECIPIENTS": "100000000",
            # The bench's administrator uses the API with a password only.
            "A3_MFA_REQUIRED_ROLES": "",
            "A3_DNS_NAMESERVERS": _bench_dns(),
        }
    )
    return env


def _temp_database(stack: contextlib.ExitStack) -> str:
    """A fresh PostgreSQL database, dropped on exit; its URL."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            name = f"a3bench_{uuid.uuid4().hex[:10]}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # any failure means "no PostgreSQL here"
        raise Unavailable(f"PostgreSQL at {_redact(PG_ADMIN_URL)}: {exc}") from exc

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    return urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))


def _temp_redis_db(stack: contextlib.ExitStack) -> str:
    """An empty Redis database number (highest first: CI and tests use the low ones),
    flushed on exit; its URL."""
    try:
        import redis

        for number in range(15, 0, -1):
            client = redis.Redis.from_url(f"{REDIS_URL}/{number}", socket_connect_timeout=5)
            if client.dbsize() == 0:
                break
        else:
            raise Unavailable(f"no empty database at {_redact(REDIS_URL)}")
    except Unavailable:
        raise
    except Exception as exc:  # any failure means "no Redis here"
        raise Unavailable(f"Redis at {_redact(REDIS_URL)}: {exc}") from exc
    stack.callback(client.flushdb)
    return f"{REDIS_URL}/{number}"


def _redact(url: str) -> str:
    """host:port only: the URL may carry a password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _keep_logs(data_dir: Path, log_dir: Path) -> None:
    """Copy the processes' logs out of the temporary data dir before it is removed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for path in data_dir.glob("*.log"):
        shutil.copy2(path, log_dir / path.name)


def start_a3mailer(
    mode: str, stack: contextlib.ExitStack, *, keep_logs_in: Path, outbound_sink: int | None = None
) -> A3Mailer:
    """Start A3Mailer in `mode` on a fresh data dir and free ports, with the bench domain
    and mailbox; everything is undone when `stack` closes. With `outbound_sink` (a port on
    127.0.0.1) it is also set up to relay: see provision_outbound."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"a3bench-{mode}-"))
    stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
    logs_name = f"{mode}-outbound" if outbound_sink else mode
    stack.callback(_keep_logs, data_dir, keep_logs_in / logs_name)
    password = secrets.token_urlsafe(18)
    server = A3Mailer(mode, data_dir, free_port(), free_port(), {}, submission_port=free_port())
    server.env = _child_env(data_dir, server.http_port, server.smtp_port, server.submission_port, password)
    # Always set: an A3_SCANNING exported in the shell must not relabel the modes.
    server.env["A3_SCANNING"] = "false" if mode == "unscanned" else "true"
    if mode == "scaleout":
        server.database_url = _temp_database(stack)
        server.env["DATABASE_URL"] = server.database_url
        server.env["REDIS_URL"] = server.env["CELERY_BROKER_URL"] = _temp_redis_db(stack)

    def run(name: str, *args: str) -> None:
        proc = spawn(name, [sys.executable, *args], env=server.env, log_dir=data_dir)
        server.procs.append(proc)
        stack.callback(proc.stop)

    manage = str(ROOT / "manage.py")
    if mode in ("embedded", "unscanned"):
        run("serve", manage, "serve")  # every role in one process
        _wait_ready(server)
    else:
        front = "web,smtp,submission" if outbound_sink else "web,smtp"
        run("serve", manage, "serve", "--roles", front)  # migrates first
        _wait_ready(server)
        celery = ["-m", "celery", "-A", "celery_workers"]
        run(
            "worker",
            *celery,
            "worker",
            "--pool",
            "threads",
            "-c",
            "4",
            "-Q",
            "default,mail,scan,backup",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "WARNING",  # as the embedded worker logs: per-task INFO lines cost CPU
        )
        run("beat", *celery, "beat", "--loglevel", "WARNING", "--schedule", str(data_dir / "beat-schedule"))
    _wait_smtp(server)
    server.mailbox_id = _provision(server, password)
    if outbound_sink:
        _wait_smtp(server, port=server.submission_port)
        server.sender_password = provision_outbound(server, password, outbound_sink)
    return server


def _wait_ready(server: A3Mailer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/readyz", timeout=2):
                return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")[:300]
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"A3Mailer ({server.mode}) not ready within {timeout:.0f} s: {last}\n{server.logs()}")


def _wait_smtp(server: A3Mailer, timeout: float = 60, port: int | None = None) -> None:
    """The smtp role starts after web: wait for its banner, not just /readyz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port or server.smtp_port), 2) as sock,
        ):
            if sock.recv(512).startswith(b"220"):
                sock.sendall(b"QUIT\r\n")
                return
        time.sleep(0.25)
    raise RuntimeError(f"A3Mailer ({server.mode}) SMTP never answered\n{server.logs()}")


class ApiError(RuntimeError):
    def __init__(self, path: str, status: int, body: bytes) -> None:
        super().__init__(f"POST {path}: {status} {body[:300]!r}")
        self.status = status


def _api(server: A3Mailer, path: str, body: dict, token: str | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ApiError(path, exc.code, exc.read()) from exc


def _provision(server: A3Mailer, password: str) -> int:
    """Domain and mailbox through the REST API, as an administrator would; the mailbox id."""
    token = _api(server, "/api/v1/auth/token/", {"email": ADMIN_EMAIL, "password": password})["token"]
    _api(server, "/api/v1/domains/", {"name": DOMAIN}, token)
    mailbox = _api(
        server,
        "/api/v1/mailboxes/",
        {"address": RECIPIENT, "password": secrets.token_urlsafe(18), "quota_bytes": 0},
        token,
    )
    return int(mailbox["id"])


def provision_outbound(server: A3Mailer, admin_password: str, sink_port: int) -> str:
    """The sending mailbox, a DKIM key for the bench domain (so every message is signed, as
    real outbound mail is) and a transport rule sending OUTBOUND_DOMAIN to the sink on
    127.0.0.1:`sink_port`; the sender's password."""
    token = _api(server, "/api/v1/auth/token/", {"email": ADMIN_EMAIL, "password": admin_password})["token"]
    sender_password = secrets.token_urlsafe(18)
    _api(
        server,
        "/api/v1/mailboxes/",
        {"address": OUTBOUND_SENDER, "password": sender_password, "quota_bytes": 0},
        token,
    )
    _api(server, "/api/v1/dkim-keys/", {"domain": DOMAIN}, token)
    rule = {"domain": OUTBOUND_DOMAIN, "host": "127.0.0.1", "port": sink_port, "tls": "opportunistic"}
    try:
        _api(server, "/api/v1/transport-rules/", rule, token)
    except ApiError as exc:
        if exc.status not in (404, 405):
            raise
        _manage_shell(  # an installation without the transport-rules endpoint
            server,
            "from apps.relay.services import transport_rule_create\n"
            f"transport_rule_create(domain={OUTBOUND_DOMAIN!r}, host='127.0.0.1', port={sink_port}, "
            "tls='opportunistic')",
        )
    return sender_password


def _manage_shell(server: A3Mailer, code: str) -> None:
    done = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        cwd=server.data_dir,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py shell failed: {(done.stderr or done.stdout)[-500:]}")


# --- Postfix ---------------------------------------------------------------------------


# Where the shared postfix-anchor.sh delivers bench@bench.test (its documented layout).
DEFAULT_ANCHOR = ROOT.parent / "shared" / "bench" / "postfix-anchor.sh"
POSTFIX_MAILDIR_NEW = Path("/tmp/pfbench/maildirs/bench.test/bench/new")  # noqa: S108 - fixed by the script


def postfix_anchor_path() -> Path:
    configured = os.environ.get("A3_BENCH_POSTFIX_ANCHOR")
    return Path(configured) if configured else DEFAULT_ANCHOR


@dataclass
class Postfix:
    """The private Postfix instance run by postfix-anchor.sh (all state in /tmp/pfbench)."""

    script: Path
    port: int = 2602
    master_pid: int | None = None

    server = "Postfix"
    mode = "anchor"
    host = "127.0.0.1"

    def _run(self, action: str, timeout: float) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - the anchor script, fixed actions
                ["bash", str(self.script), action, str(self.port)],  # noqa: S607
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"postfix-anchor.sh {action}: no answer within {timeout:.0f} s") from exc
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()[-500:]
            raise Unavailable(f"postfix-anchor.sh {action} failed ({done.returncode}): {detail}")
        return done.stdout.strip()

    def start(self, stack: contextlib.ExitStack) -> None:
        if not self.script.is_file():
            raise Unavailable(f"anchor script not found at {self.script}")
        stack.callback(self.stop)  # also after a failed start: it may have half-started
        # The first start apt-installs postfix (the script retries for up to 10 min).
        self._run("start", timeout=900)
        # Asked once: the RSS sampler wants the root ten times a second, and spawning the
        # script that often would take CPU from the server being measured.
        self.master_pid = int(self._run("pids", timeout=30))

    def stop(self) -> None:
        with contextlib.suppress(Unavailable):
            self._run("stop", timeout=60)

    def prepare(self) -> None:
        """Empty queue and maildir, so the next run counts from zero."""
        self._run("reset", timeout=180)

    def delivered(self) -> int:
        """Files in the Maildir's new/: the script's `count`, read directly for the
        shared anchor script (the latency probe asks every millisecond, and spawning the
        script would take that CPU from the server under test); other scripts are asked."""
        if self.script.resolve() != DEFAULT_ANCHOR.resolve():
            return int(self._run("count", timeout=30) or 0)
        try:
            return len(os.listdir(POSTFIX_MAILDIR_NEW))
        except FileNotFoundError:
            return 0

    def pids(self) -> list[int]:
        return [self.master_pid] if self.master_pid else []  # every other one is its child

    def check_alive(self) -> None:
        if not self.master_pid or not Path(f"/proc/{self.master_pid}").exists():
            raise RuntimeError("the Postfix master is not running")
