"""Private instances of the external engines (clamd, Rspamd, spamd) for the scanning
benchmark and the tests: each runs from a temporary directory of its own, on loopback
ports (or a socket) nobody else uses, with no network lookups and no downloads, and is
stopped by its process group, never by name. The machine's own services are untouched.

    with ClamdRunner() as clamd:
        settings.A3_CLAMD_ADDRESS = clamd.address
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path

from apps.core.benchmarks import NxdomainServer

CLAMD = "/usr/sbin/clamd"
SIGTOOL = "/usr/bin/sigtool"
RSPAMD = "/usr/bin/rspamd"
SPAMD = "/usr/sbin/spamd"

# The EICAR test file (https://www.eicar.org): every scanner flags it, and it is harmless.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Eicar-Test-Signature"
# The GTUBE test pattern: every spam filter gives it its highest score.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# Rspamd modules that query DNS or the network. Off, so that no scan waits for timeouts on
# a machine without a resolver (and no scan result depends on the outside world).
RSPAMD_NETWORK_MODULES = (
    "rbl",
    "surbl",
    "emails",
    "spf",
    "dkim",
    "dmarc",
    "arc",
    "asn",
    "fuzzy_check",
    "mx_check",
    "dcc",
    "hfilter",
    "rspamd_update",
    "bimi",
    "external_services",
    "url_redirector",
    "antivirus",
)


class EngineUnavailable(Exception):
    """The engine is not installed here (the caller skips what needs it)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The engine's own system user when we are root (rspamd and spamd refuse to run as
    root); None when we are not, or it does not exist."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)


class EngineRunner(ABC):
    """start() → ready on `address`; stop() kills the process group and removes the
    directory. Also a context manager. Start-up is retried on a fresh port if the port
    picked was taken meanwhile."""

    name = "engine"
    binary = ""
    start_timeout = 120.0
    attempts = 3

    def __init__(self, *, keep_dir: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"a3-{self.name}-"))
        # Engines running as their own user must reach it; it holds no secrets.
        os.chmod(self.dir, 0o755)  # noqa: S103
        self.keep_dir = keep_dir
        self.popen: subprocess.Popen | None = None
        self.log_path = self.dir / f"{self.name}.out"

    # -- per engine
    @abstractmethod
    def _prepare(self) -> list[str]:
        """Write the configuration (fresh ports); the command line."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether the engine answers on `address`."""

    @property
    @abstractmethod
    def address(self) -> str:
        """Where the engine listens (socket path or host:port)."""

    # -- common
    @classmethod
    def installed(cls) -> bool:
        return all(os.access(path, os.X_OK) for path in cls.required())

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return (cls.binary,)

    def start(self) -> EngineRunner:
        missing = [path for path in self.required() if not os.access(path, os.X_OK)]
        if missing:
            raise EngineUnavailable(f"{self.name}: {', '.join(missing)} not installed")
        for attempt in range(1, self.attempts + 1):
            args = self._prepare()
            with self.log_path.open("ab") as log:
                self.popen = subprocess.Popen(  # noqa: S603 - a fixed binary, our arguments
                    args,
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopped as one
                    env={**os.environ, "HOME": str(self.dir), "LANG": "C"},
                )
            if self._wait_ready():
                return self
            dead = self.popen.poll() is not None
            self._kill()
            if not dead or attempt == self.attempts:
                break  # alive but not answering: no point in another port
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready within {self.start_timeout:.0f} s:\n{tail}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                return False
            if self.ready():
                return True
            time.sleep(0.1)
        return False

    def pids(self) -> list[int]:
        return [self.popen.pid] if self.popen is not None and self.popen.poll() is None else []

    def log_tail(self, chars: int = 3000) -> str:
        texts = []
        for path in [*sorted(self.dir.glob("*.log")), self.log_path]:
            with contextlib.suppress(OSError):
                texts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-chars:])
        return "\n".join(texts)

    def _kill(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Workers the main process forked may outlive it by a moment: the group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen = None

    def stop(self) -> None:
        self._kill()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EngineRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClamdRunner(EngineRunner):
    """clamd on a Unix socket in its directory, with a one-signature database built from
    the EICAR file by sigtool (no freshclam, no download)."""

    name = "clamd"
    binary = CLAMD
    start_timeout = 60.0

    def __init__(self, *, options: dict[str, str] | None = None, keep_dir: bool = False) -> None:
        super().__init__(keep_dir=keep_dir)
        self.options = options or {}  # more clamd.conf directives, e.g. StreamMaxLength

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return (CLAMD, SIGTOOL)

    @property
    def address(self) -> str:
        return str(self.dir / "clamd.sock")

    def _prepare(self) -> list[str]:
        db = self.dir / "db"
        db.mkdir(exist_ok=True)
        sample = self.dir / "eicar.com"
        sample.write_bytes(EICAR)
        hashed = subprocess.run(  # noqa: S603 - fixed binary
            [SIGTOOL, "--sha256", str(sample)], capture_output=True, check=True, timeout=60, cwd=self.dir
        ).stdout.decode()
        digest, size, _name = hashed.strip().split(":", 2)
        (db / "a3test.hsb").write_text(f"{digest}:{size}:{EICAR_SIGNATURE}\n")
        config = self.dir / "clamd.conf"
        config.write_text(
            "\n".join(
                [
                    f"DatabaseDirectory {db}",
                    f"LocalSocket {self.address}",
                    "LocalSocketMode 660",
                    "FixStaleSocket yes",
                    "Foreground yes",
                    f"LogFile {self.dir / 'clamd.log'}",
                    f"PidFile {self.dir / 'clamd.pid'}",
                    "Bytecode no",
                    "MaxThreads 4",
                    "SelfCheck 3600",
                    *(f"{name} {value}" for name, value in self.options.items()),
                    "",
                ]
            )
        )
        return [CLAMD, "-c", str(config)]

    def ready(self) -> bool:
        from apps.threats.stages.external import ClamdClient

        return Path(self.address).exists() and ClamdClient(self.address, timeout=2).ping()


class RspamdRunner(EngineRunner):
    """Rspamd with its normal worker (scanning) and controller on free loopback ports, the
    proxy and fuzzy workers off, the network modules off, and its databases in its
    directory. Compiled regular expressions (Hyperscan) are cached in one directory per
    machine user, so later start-ups take a second instead of ten."""

    name = "rspamd"
    binary = RSPAMD
    start_timeout = 180.0

    def __init__(self, *, workers: int = 2, nameserver: str = "", keep_dir: bool = False) -> None:
        super().__init__(keep_dir=keep_dir)
        self.workers = workers
        self.port = 0
        self.controller_port = 0
        # Some modules still resolve names (received hosts, URLs) with the network ones
        # off: they ask `nameserver`, by default an offline resolver of our own answering NXDOMAIN at
        # once, never the machine's resolver (1 s timeouts offline).
        self.nameserver = nameserver
        self._offline_resolver: NxdomainServer | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> list[str]:
        self.port, self.controller_port = free_port(), free_port()
        etc = self.dir / "etc"
        for sub in ("local.d", "override.d"):
            (etc / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("db", "run", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
        override = etc / "override.d"
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\ncount = {self.workers};\n'
        )
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.controller_port}";\n'
        )
        (override / "worker-proxy.inc").write_text("enabled = false;\n")
        (override / "worker-fuzzy.inc").write_text("enabled = false;\ncount = -1;\n")
        for module in RSPAMD_NETWORK_MODULES:
            (etc / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        user = _service_user("_rspamd")
        cache = Path(tempfile.gettempdir()) / f"a3-rspamd-hscache-{os.geteuid()}"
        cache.mkdir(mode=0o755, exist_ok=True)
        if not self.nameserver and self._offline_resolver is None:
            self._offline_resolver = NxdomainServer().start()
        nameserver = self.nameserver or self._offline_resolver.address  # type: ignore[union-attr]
        (etc / "local.d" / "options.inc").write_text(
            f'hs_cache_dir = "{cache}/";\n'
            f'dns {{\n  nameserver = ["{nameserver}"];\n  timeout = 1s;\n  retransmits = 1;\n}}\n'
        )
        _chown_tree(self.dir, user)
        _chown_tree(cache, user)
        args = [
            RSPAMD,
            "-f",
            f"--var=LOCAL_CONFDIR={etc}",
            f"--var=DBDIR={self.dir / 'db'}",
            f"--var=RUNDIR={self.dir / 'run'}",
            f"--var=LOGDIR={self.dir / 'log'}",
        ]
        if user is not None:
            args += ["-u", user.pw_name, "-g", _group_name(user)]
        elif os.geteuid() == 0:
            args.append("--insecure")  # root without the _rspamd user
        return args

    def stop(self) -> None:
        super().stop()
        if self._offline_resolver is not None:
            self._offline_resolver.stop()
            self._offline_resolver = None

    def ready(self) -> bool:
        for port in (self.port, self.controller_port):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status != 200:
                        return False
            except (OSError, urllib.error.URLError):
                return False
        return True


class SpamdRunner(EngineRunner):
    """spamd on a free loopback port, local tests only (-L: no DNS or network rules), no
    Bayes, its home directory inside its own directory."""

    name = "spamd"
    binary = SPAMD
    start_timeout = 120.0

    def __init__(self, *, children: int = 2, keep_dir: bool = False) -> None:
        super().__init__(keep_dir=keep_dir)
        self.children = children
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _prepare(self) -> list[str]:
        self.port = free_port()
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        user = _service_user("debian-spamd")
        _chown_tree(self.dir, user)
        args = [
            SPAMD,
            "-L",
            "-x",
            "-4",
            f"--listen=127.0.0.1:{self.port}",
            "-A",
            "127.0.0.1",
            "-H",
            str(home),
            "-m",
            str(self.children),
            f"--min-children={self.children}",
            "--round-robin",
            "--cf=use_bayes 0",
            "--cf=bayes_auto_learn 0",
            f"--pidfile={self.dir / 'spamd.pid'}",
            "-s",
            str(self.dir / "spamd.log"),
        ]
        if user is not None:
            args += ["-u", user.pw_name, "-g", _group_name(user)]
        return args

    def ready(self) -> bool:
        from apps.threats.stages.external import SpamdClient

        return SpamdClient(self.address, timeout=2).ping()


def _group_name(user: pwd.struct_passwd) -> str:
    import grp

    try:
        return grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        return str(user.pw_gid)
