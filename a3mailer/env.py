"""Strict, typed readers for deploy-time configuration taken from the environment.

Every reader takes the variable's name and a default. Parsing is strict on purpose: a
typo in production ("ture", "yes") raises ImproperlyConfigured instead of silently
meaning False.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "1", "on"}
_FALSE = {"false", "0", "off"}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true/false, 1/0 or on/off")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str, default: str = "") -> str:
    """Read a secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from None
    return os.environ.get(name, default)


def parse_listen(name: str, default: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT) from the environment."""
    raw = env_str(name, default).strip()
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ImproperlyConfigured(f"{name}={raw!r} must be HOST:PORT")
    host = host.strip("[]")
    try:
        port_number = int(port)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} has a non-numeric port") from None
    if not 0 <= port_number <= 65535:
        raise ImproperlyConfigured(f"{name}={raw!r} has a port out of range")
    return host, port_number


def persistent_secret_key(data_dir: Path) -> str:
    """Return the secret key stored in the data dir, generating it once on first use.

    The file is created with O_EXCL so that two processes starting together agree on one key.
    """
    key_file = data_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(64)
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key
