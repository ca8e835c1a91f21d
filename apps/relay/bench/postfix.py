"""A private Postfix instance in a directory of its own, for the outbound benchmark and the
end-to-end tests: loopback only, no chroot, every file under `base`, the system's
/etc/postfix instance neither used nor started.

It follows shared/bench/postfix-anchor.sh (the inbound anchor), but starts from Debian's own
main.cf and master.cf and changes them with `postconf -e`, `-M` and `-F`, so what is left at
its defaults is what any Postfix installation has. Two uses:

- a destination: it accepts mail for `mailbox_domain` and delivers each address in
  `mailboxes` into a Maildir under `base/mail/`;
- a relay: it accepts mail from loopback for any domain and passes it to `relay_to`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
VIRTUAL_UID = 5000  # numeric owner of the Maildirs; needs no passwd entry
_SYSTEM_CONFIG = Path("/etc/postfix")
_DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.dist")
_TEMPLATE_BLANKS = (
    "sendmail_path",
    "newaliases_path",
    "mailq_path",
    "html_directory",
    "manpage_directory",
    "sample_directory",
    "readme_directory",
)


class PostfixUnavailable(Exception):
    """Postfix is not installed, or the instance could not be started."""


def postfix_installed() -> bool:
    return POSTFIX.exists() and POSTCONF.exists()


@dataclass
class PrivatePostfix:
    base: Path  # must be traversable by the postfix user (not under a 0700 directory)
    port: int
    hostname: str = "mx.postfix.test"
    mailbox_domain: str = ""
    mailboxes: list[str] = field(default_factory=list)  # addresses in mailbox_domain
    relay_to: tuple[str, int] | None = None  # host, port: relay everything there
    tls_pair: tuple[Path, Path] | None = None  # cert, key: offer STARTTLS
    settings: dict[str, str] = field(default_factory=dict)  # more main.cf parameters

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def spool(self) -> Path:
        return self.base / "spool"

    @property
    def maillog(self) -> Path:
        return self.base / "log" / "maillog"

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.base / "mail" / domain / local

    def delivered(self, address: str) -> list[Path]:
        """The message files delivered to `address` so far."""
        new = self.maildir(address) / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def _postconf(self, *args: str) -> None:
        # Fixed program, arguments we build: no shell.
        done = subprocess.run(  # noqa: S603
            [str(POSTCONF), "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise PostfixUnavailable(f"postconf {' '.join(args)[:200]}: {done.stderr.strip()[-500:]}")

    def configure(self) -> None:
        """Write main.cf and master.cf from Debian's files, changed for this instance."""
        if not postfix_installed():
            raise PostfixUnavailable(f"{POSTFIX} is not installed")
        for name in ("etc", "data", "log", "mail", "spool"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        main_cf = _SYSTEM_CONFIG / "main.cf"
        if not main_cf.exists():  # "No configuration" installs leave only the templates
            main_cf = _DEBIAN_MAIN_CF if _DEBIAN_MAIN_CF.exists() else _SYSTEM_CONFIG / "main.cf.proto"
        shutil.copyfile(main_cf, self.etc / "main.cf")
        shutil.copyfile(_SYSTEM_CONFIG / "master.cf", self.etc / "master.cf")
        os.chown(self.base / "data", _uid("postfix"), -1)
        vmailbox = self.etc / "vmailbox"
        # address → Maildir (the trailing "/"), relative to virtual_mailbox_base.
        vmailbox.write_text(
            "".join(f"{a} {self.maildir(a).relative_to(self.base / 'mail')}/\n" for a in self.mailboxes)
        )
        for address in self.mailboxes:
            for sub in ("new", "cur", "tmp"):
                (self.maildir(address) / sub).mkdir(parents=True, exist_ok=True)
        for path in [self.base / "mail", *(self.base / "mail").rglob("*")]:
            os.chown(path, VIRTUAL_UID, VIRTUAL_UID)
        self.maillog.touch()
        parameters = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(self.base / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or self.hostname,
            "myorigin": "$myhostname",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:local delivery is disabled in this instance",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_banner": "$myhostname ESMTP",
            "biff": "no",
            "append_dot_mydomain": "no",
            # No syslog daemon here: log to a file through postlogd.
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base / "log"),
            "smtp_tls_security_level": "none",
        }
        if self.mailbox_domain:
            parameters.update(
                {
                    "virtual_mailbox_domains": self.mailbox_domain,
                    "virtual_mailbox_maps": f"texthash:{vmailbox}",
                    "virtual_mailbox_base": str(self.base / "mail"),
                    "virtual_uid_maps": f"static:{VIRTUAL_UID}",
                    "virtual_gid_maps": f"static:{VIRTUAL_UID}",
                    "virtual_minimum_uid": "1000",
                    "virtual_mailbox_limit": "0",
                }
            )
        if self.relay_to:
            host, port = self.relay_to
            parameters["relayhost"] = f"[{host}]:{port}"
            parameters["default_transport"] = "smtp"
        else:
            parameters["relayhost"] = ""
            parameters["default_transport"] = "error:outbound mail is disabled in this instance"
        if self.tls_pair:
            cert, key = self.tls_pair
            parameters["smtpd_tls_security_level"] = "may"
            parameters["smtpd_tls_chain_files"] = f"{key}, {cert}"
        else:
            parameters["smtpd_tls_security_level"] = "none"
        parameters.update(self.settings)
        # Debian's templates leave these empty for the installer to fill in; Postfix
        # refuses an empty value, so fall back to the compiled-in defaults.
        self._postconf("-X", *_TEMPLATE_BLANKS)
        self._postconf("-e", *(f"{name}={value}" for name, value in parameters.items()))
        # master.cf: no chroot (its files would have to be copied in), and the port 25
        # listener replaced by one on our loopback port.
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-MX", "smtp/inet")
        listen = f"127.0.0.1:{self.port}"
        self._postconf("-M", f"{listen}/inet={listen} inet n - n - - smtpd")

    def _run(self, action: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(  # noqa: S603 - fixed program and actions
            [str(POSTFIX), "-c", str(self.etc), action],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 30) -> None:
        """Configure, start and wait until the listener answers."""
        self.configure()
        done = self._run("check")
        if done.returncode != 0:
            raise PostfixUnavailable(f"postfix check failed: {done.stderr.strip()} {self._log_tail()}")
        done = self._run("start")
        if done.returncode != 0:
            raise PostfixUnavailable(
                f"postfix start failed ({done.returncode}): {done.stderr.strip()} {self._log_tail()}"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
            time.sleep(0.1)
        raise PostfixUnavailable(f"postfix did not answer on 127.0.0.1:{self.port}: {self._log_tail()}")

    def master_pid(self) -> int | None:
        try:
            pid = int((self.spool / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def queue_files(self) -> int:
        found = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            directory = self.spool / sub
            if directory.is_dir():
                found += sum(len(files) for _, _, files in os.walk(directory))
        return found

    def stop(self) -> None:
        """`postfix stop`, then wait for the master to go (SIGKILL after 10 s)."""
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run("stop", timeout=30)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def _log_tail(self, chars: int = 1500) -> str:
        try:
            return self.maillog.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no maillog)"


def _uid(user: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError as exc:
        raise PostfixUnavailable(f"no {user} user: is postfix installed?") from exc
