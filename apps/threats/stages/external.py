"""Optional external engines as scan stages: ClamAV (clamd), Rspamd and SpamAssassin
(spamd). Each is off until its address is set (A3_CLAMD_ADDRESS, A3_RSPAMD_URL,
A3_SPAMD_ADDRESS) and then reports "skipped" no more. An engine that cannot be reached,
times out or answers with an error gives status "error": the pipeline counts that as a
scanner failure, the domain policy's fail-open/fail-closed setting decides, and the scan
service raises an alert. Every socket uses A3_SCAN_STAGE_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from apps.threats.models import Category
from apps.threats.pipeline import ScanContext, StageOutcome, scan_stage

logger = logging.getLogger(__name__)

__all__ = [
    "ClamdClient",
    "ClamdError",
    "ClamdResult",
    "EngineError",
    "RspamdClient",
    "SpamdClient",
    "SpamdResult",
    "clamav_stage",
    "rspamd_headers",
    "rspamd_stage",
    "spamd_stage",
]

MAX_REASONS = 5


class EngineError(Exception):
    """The engine could not give a verdict: unreachable, timed out, or an error reply."""


def _socket_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """("/path/to/socket") or ("host:port", "[::1]:port") → (family, address)."""
    if address.startswith("/"):
        return socket.AF_UNIX, address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EngineError(f"not a socket path or host:port: {address!r}")
    return socket.AF_INET6 if host.startswith("[") else socket.AF_INET, (host.strip("[]"), int(port))


def _connect(address: str, timeout: float) -> socket.socket:
    family, target = _socket_address(address)
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(target)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(target, timeout=timeout)  # type: ignore[arg-type]
    except OSError as exc:
        raise EngineError(f"cannot connect to {address}: {exc.strerror or type(exc).__name__}") from exc


def _read_all(sock: socket.socket, limit: int = 1024 * 1024) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if chunks:  # the reply came, then the peer closed on data we had sent
                break
            raise
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# --- ClamAV ----------------------------------------------------------------------------
# A client of our own: the protocol is four commands, and the PyPI `clamd` package has
# not been maintained since 2014.


class ClamdError(EngineError):
    pass


@dataclass(frozen=True)
class ClamdResult:
    infected: bool
    signature: str = ""


class ClamdClient:
    """clamd over a Unix socket ("/run/clamav/clamd.ctl") or TCP ("host:port"), with the
    null-terminated ("z") command forms. One connection per command: clamd closes it
    after INSTREAM anyway."""

    CHUNK = 64 * 1024

    def __init__(self, address: str, *, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    def ping(self) -> bool:
        try:
            return self._command(b"zPING\0") == "PONG"
        except EngineError:
            return False

    def version(self) -> str:
        return self._command(b"zVERSION\0")

    def _command(self, command: bytes) -> str:
        with _connect(self.address, self.timeout) as sock:
            try:
                sock.sendall(command)
                return _read_all(sock, 65536).rstrip(b"\0\n").decode("utf-8", errors="replace")
            except OSError as exc:
                raise ClamdError(f"clamd at {self.address}: {type(exc).__name__}") from exc

    def instream(self, data: bytes) -> ClamdResult:
        """Scan `data` (clamd decodes MIME, archives and documents itself). Raises
        ClamdError when clamd gives no verdict, e.g. past its StreamMaxLength."""
        with _connect(self.address, self.timeout) as sock:
            try:
                sock.sendall(b"zINSTREAM\0")
                view = memoryview(data)
                for start in range(0, len(view), self.CHUNK):
                    chunk = view[start : start + self.CHUNK]
                    sock.sendall(struct.pack(">I", len(chunk)) + chunk)
                    if select.select([sock], [], [], 0)[0]:
                        break  # an early answer: the stream passed clamd's StreamMaxLength
                else:
                    sock.sendall(struct.pack(">I", 0))
            except (BrokenPipeError, ConnectionResetError):
                pass  # clamd stopped reading (StreamMaxLength) and closed: its reply says why
            except OSError as exc:
                raise ClamdError(f"clamd at {self.address}: {type(exc).__name__}") from exc
            try:
                reply = _read_all(sock, 65536)
            except OSError as exc:
                raise ClamdError(f"clamd at {self.address}: {type(exc).__name__}") from exc
        text = reply.rstrip(b"\0\n").decode("utf-8", errors="replace").strip()
        # "stream: OK", "stream: Eicar-Signature FOUND", "INSTREAM size limit exceeded. ERROR"
        if text.endswith(" FOUND"):
            signature = text.removesuffix(" FOUND").partition(": ")[2] or text.removesuffix(" FOUND")
            return ClamdResult(True, signature.strip())
        if text.endswith(": OK") or text == "OK":
            return ClamdResult(False)
        raise ClamdError(f"clamd at {self.address}: {text or 'connection closed without a reply'}")


@scan_stage("clamav", for_submissions=True)
def clamav_stage(context: ScanContext) -> StageOutcome:
    """The raw message through clamd (INSTREAM); a signature found is malware."""
    address = settings.A3_CLAMD_ADDRESS
    if not address:
        return StageOutcome(status="skipped")
    client = ClamdClient(address, timeout=settings.A3_SCAN_STAGE_TIMEOUT_SECONDS)
    try:
        result = client.instream(context.raw)
    except EngineError as exc:
        logger.warning("clamav stage: %s", exc)
        return StageOutcome(reasons=[f"ClamAV gave no verdict ({exc})"], status="error")
    if not result.infected:
        return StageOutcome()
    return StageOutcome(
        reasons=[f"Malware: {result.signature} (ClamAV)"],
        category=Category.MALWARE,
        data={"signature": result.signature},
    )


# --- Rspamd ----------------------------------------------------------------------------


class RspamdClient:
    """POST /checkv2 to Rspamd's normal worker over a kept-alive HTTP connection (one per
    thread: http.client connections are not thread-safe)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def check(self, raw: bytes, headers: dict[str, str | list[str]]) -> dict:
        """Rspamd's verdict as its JSON object; raises EngineError."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.putrequest("POST", self.path, skip_accept_encoding=True)
                for name, value in headers.items():
                    for item in value if isinstance(value, list) else [value]:
                        conn.putheader(name, item.encode("utf-8"))  # SMTPUTF8 addresses
                conn.putheader("Content-Length", str(len(raw)))
                conn.endheaders(raw)
                response = conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the kept-alive connection was closed by the server meanwhile
                raise EngineError(f"Rspamd at {self.url}: {type(exc).__name__}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise EngineError(f"Rspamd at {self.url}: {exc or type(exc).__name__}") from exc
            if response.will_close:
                self.close()
            if response.status != 200:
                raise EngineError(f"Rspamd at {self.url}: HTTP {response.status}")
            try:
                verdict = json.loads(body)
            except ValueError as exc:
                raise EngineError(f"Rspamd at {self.url}: the reply is not JSON") from exc
            if not isinstance(verdict, dict):
                raise EngineError(f"Rspamd at {self.url}: the reply is not a JSON object")
            if "score" not in verdict:
                raise EngineError(f"Rspamd at {self.url}: {str(verdict.get('error', 'no score'))[:200]}")
            return verdict
        raise EngineError(f"Rspamd at {self.url}: no answer")  # pragma: no cover - loop returns


_rspamd_clients: dict[tuple[str, float], RspamdClient] = {}
_rspamd_lock = threading.Lock()


def _rspamd_client(url: str, timeout: float) -> RspamdClient:
    with _rspamd_lock:
        client = _rspamd_clients.get((url, timeout))
        if client is None:
            client = _rspamd_clients[(url, timeout)] = RspamdClient(url, timeout=timeout)
        return client


def _envelope_recipients(context: ScanContext) -> list[str]:
    if context.message is None or context.message.pk is None:
        return []
    from apps.mailboxes.models import MessageRecipient

    return list(
        MessageRecipient.objects.filter(message_id=context.message.pk, folder="")
        .order_by("id")
        .values_list("address", flat=True)[:100]
    )


def _header_safe(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")[:998]


def rspamd_headers(context: ScanContext) -> dict[str, str | list[str]]:
    """The envelope as Rspamd's request headers (it scores the connection too)."""
    headers: dict[str, str | list[str]] = {}
    if context.peer_ip:
        headers["IP"] = context.peer_ip
    if context.mail_from:
        headers["From"] = _header_safe(context.mail_from)
    if context.helo:
        headers["Helo"] = _header_safe(context.helo)
    recipients = _envelope_recipients(context)
    if recipients:
        headers["Rcpt"] = [_header_safe(address) for address in recipients]
    if context.message is not None and context.message.queue_id:
        headers["Queue-Id"] = _header_safe(context.message.queue_id)
    return headers


def _rspamd_reasons(verdict: dict) -> list[str]:
    """The strongest scored symbols. When only unscored symbols fired but an action was
    forced (GTUBE: score 0, action reject), those symbols with Rspamd's message."""
    symbols = [s for s in (verdict.get("symbols") or {}).values() if isinstance(s, dict)]
    messages = verdict.get("messages") if isinstance(verdict.get("messages"), dict) else {}
    forced = str(messages.get("smtp_message", ""))[:120]
    scored = sorted(
        (s for s in symbols if float(s.get("score") or 0)),
        key=lambda s: abs(float(s.get("score") or 0)),
        reverse=True,
    )
    reasons = []
    for symbol in scored[:MAX_REASONS]:
        points = f"{float(symbol['score']):+.1f}"
        detail = str(symbol.get("description") or "")[:120]
        reasons.append(f"Rspamd: {symbol.get('name', '?')} ({f'{detail}, {points}' if detail else points})")
    if not reasons and forced:
        names = sorted(str(s.get("name", "?")) for s in symbols)[:MAX_REASONS]
        reasons = [f"Rspamd: {name} ({forced})" for name in names] or [f"Rspamd: {forced}"]
    return reasons


@scan_stage("rspamd")
def rspamd_stage(context: ScanContext) -> StageOutcome:
    """Rspamd's score (times A3_RSPAMD_WEIGHT) and top symbols; its "reject" action is spam."""
    url = settings.A3_RSPAMD_URL
    if not url:
        return StageOutcome(status="skipped")
    try:
        client = _rspamd_client(url, settings.A3_SCAN_STAGE_TIMEOUT_SECONDS)
        verdict = client.check(context.raw, rspamd_headers(context))
        score = float(verdict.get("score") or 0)
    except (EngineError, TypeError, ValueError) as exc:
        logger.warning("rspamd stage: %s", exc)
        return StageOutcome(reasons=[f"Rspamd gave no verdict ({exc})"], status="error")
    action = str(verdict.get("action", ""))
    reasons = _rspamd_reasons(verdict)
    if action == "reject" and not reasons:
        reasons = [f"Rspamd: rejected (score {score:.1f})"]
    return StageOutcome(
        score=score * settings.A3_RSPAMD_WEIGHT,
        reasons=reasons,
        category=Category.SPAM if action == "reject" else "",
        data={"score": score, "action": action, "required": verdict.get("required_score")},
    )


# --- SpamAssassin (spamd) --------------------------------------------------------------


@dataclass
class SpamdResult:
    is_spam: bool
    score: float
    threshold: float
    rules: list[tuple[str, float, str]] = field(default_factory=list)  # name, points, description


# "Spam: True ; 7.5 / 5.0"
_SPAM_LINE = re.compile(r"^Spam:\s*(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)", re.I | re.M)
# A REPORT table row: " 1000 GTUBE                  BODY: Generic Test for ..."
_REPORT_ROW = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")


class SpamdClient:
    """The SPAMC/1.5 protocol over TCP ("host:port") or a Unix socket: REPORT, so that the
    rules' points come back too. spamd closes the connection after each reply."""

    def __init__(self, address: str, *, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    def _request(self, command: str, raw: bytes = b"", *, with_body: bool = True) -> bytes:
        head = f"{command} SPAMC/1.5\r\n"
        if with_body:
            head += f"Content-length: {len(raw)}\r\n"
        with _connect(self.address, self.timeout) as sock:
            try:
                sock.sendall(head.encode() + b"\r\n" + raw)
                sock.shutdown(socket.SHUT_WR)
                return _read_all(sock, 4 * 1024 * 1024)
            except OSError as exc:
                raise EngineError(f"spamd at {self.address}: {type(exc).__name__}") from exc

    def ping(self) -> bool:
        try:
            return b"PONG" in self._request("PING", with_body=False).split(b"\r\n", 1)[0]
        except EngineError:
            return False

    def report(self, raw: bytes) -> SpamdResult:
        reply = self._request("REPORT", raw)
        head, _, body = reply.partition(b"\r\n\r\n")
        text = head.decode("utf-8", errors="replace")
        status = text.split("\r\n", 1)[0].split(None, 2)
        if len(status) < 2 or not status[0].startswith("SPAMD/") or status[1] != "0":
            raise EngineError(f"spamd at {self.address}: {(text.splitlines() or ['no reply'])[0][:200]}")
        found = _SPAM_LINE.search(text)
        if found is None:
            raise EngineError(f"spamd at {self.address}: no Spam header in the reply")
        return SpamdResult(
            is_spam=found.group(1).lower() in ("true", "yes"),
            score=float(found.group(2)),
            threshold=float(found.group(3)),
            rules=_report_rules(body.decode("utf-8", errors="replace")),
        )


def _report_rules(report: str) -> list[tuple[str, float, str]]:
    """The rules of a REPORT body's table (after the "---- ----" line)."""
    rules: list[tuple[str, float, str]] = []
    in_table = False
    for line in report.splitlines():
        if line.startswith("----"):
            in_table = True
            continue
        if not in_table:
            continue
        row = _REPORT_ROW.match(line)
        if row:
            rules.append((row.group(2), float(row.group(1)), row.group(3).strip()))
        elif rules and line.startswith(" ") and line.strip():
            name, points, description = rules[-1]  # a description wrapped onto the next line
            rules[-1] = (name, points, f"{description} {line.strip()}")
    return rules


@scan_stage("spamd")
def spamd_stage(context: ScanContext) -> StageOutcome:
    """SpamAssassin's score (times A3_SPAMD_WEIGHT) and its strongest rules."""
    address = settings.A3_SPAMD_ADDRESS
    if not address:
        return StageOutcome(status="skipped")
    try:
        result = SpamdClient(address, timeout=settings.A3_SCAN_STAGE_TIMEOUT_SECONDS).report(context.raw)
    except EngineError as exc:
        logger.warning("spamd stage: %s", exc)
        return StageOutcome(reasons=[f"SpamAssassin gave no verdict ({exc})"], status="error")
    ranked = sorted((r for r in result.rules if r[1]), key=lambda r: abs(r[1]), reverse=True)
    reasons = [
        f"SpamAssassin: {name} ({description[:120]}, {points:+g})"
        if description
        else f"SpamAssassin: {name} ({points:+g})"
        for name, points, description in ranked[:MAX_REASONS]
    ]
    return StageOutcome(
        score=result.score * settings.A3_SPAMD_WEIGHT,
        reasons=reasons,
        data={"score": result.score, "required": result.threshold, "spam": result.is_spam},
    )
