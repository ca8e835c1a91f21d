"""The scanning pipeline: ordered stages (A3_SCAN_STAGES), each adding a score, reasons
in plain words and its own time to a message's verdict.

A stage is a function `stage(context: ScanContext) -> StageOutcome`, marked with
`@scan_stage(name)`. Stages never raise for bad mail: input that cannot be scanned is an
outcome (category "unscannable"). Time limits: network stages use socket timeouts of
A3_SCAN_STAGE_TIMEOUT_SECONDS; CPU stages are bounded by the scan limits (parts, depth,
archive sizes, header bytes) and call `context.check_time()` in their loops, which stops
a stage that overruns its limit. A stage that fails or times out is a scanner failure:
the domain's policy decides between failing open and closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy as email_policy
from email.errors import (
    InvalidBase64CharactersDefect,
    InvalidBase64LengthDefect,
    InvalidBase64PaddingDefect,
)
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from django.db import connection
from django.utils.module_loading import import_string

from apps.threats.models import Category

if TYPE_CHECKING:
    from apps.mailboxes.models import Message

logger = logging.getLogger(__name__)


class _SharedHeaderRegistry(HeaderRegistry):
    """email.policy.default's header factory without its two costs that dominate a scan:
    the stdlib builds a new header class on every header read, and parses a header again
    each time it is read (the parser alone reads a part's Content-Type several times, and
    three stages read From). Header objects are immutable, so equal (name, value) pairs
    can share one parsed object."""

    _MAX_CLASSES = 512  # header names are the sender's choice: bound the class cache

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = super().__getitem__(key)
            if len(self._classes) < self._MAX_CLASSES:
                self._classes[key] = cls
        return cls

    def __call__(self, name: str, value: str) -> BaseHeader:
        if len(value) > _SHARED_HEADER_CHARS:
            return super().__call__(name, value)
        return _shared_header(name, value)


# Values up to this long are shared (Content-Type, From, Subject: almost every header);
# longer ones are parsed on each read, so the cache never holds much text.
_SHARED_HEADER_CHARS = 1024


@lru_cache(maxsize=4096)
def _shared_header(name: str, value: str) -> BaseHeader:
    return _header_registry[name](name, value)


_header_registry = _SharedHeaderRegistry()
_parser = BytesParser(policy=email_policy.default.clone(header_factory=_header_registry))
_BASE64_DEFECTS = (InvalidBase64CharactersDefect, InvalidBase64PaddingDefect, InvalidBase64LengthDefect)


class Unscannable(Exception):
    """The message (or a part of it) exceeds what can be scanned safely."""


class StageTimeout(Exception):
    """A stage ran past its time limit."""


@dataclass
class StageOutcome:
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    # Set when the stage found something that holds the message whatever its score.
    category: str = ""
    # Authentication-Results method results, e.g. "dkim=pass header.d=example.com".
    auth_results: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | skipped | error | timeout
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScanPart:
    """One leaf MIME part (or a file inside an archive), decoded."""

    content_type: str
    filename: str
    payload: bytes
    depth: int
    container: str = ""  # the archive it came from, if any


class ScanStage(Protocol):
    stage_name: str
    for_submissions: bool

    def __call__(self, context: ScanContext) -> StageOutcome: ...


def scan_stage(name: str, *, for_submissions: bool = False) -> Callable[[Callable], ScanStage]:
    """Mark a function as a scan stage. `for_submissions`: also run on mail our own users
    submitted (malware and attachment checks), where spam scoring makes no sense."""

    def decorate(func: Callable) -> ScanStage:
        func.stage_name = name  # type: ignore[attr-defined]
        func.for_submissions = for_submissions  # type: ignore[attr-defined]
        return func  # type: ignore[return-value]

    return decorate


@dataclass
class ScanContext:
    """What stages read. Built once per message; parsing is lazy and bounded."""

    raw: bytes
    mail_from: str = ""
    peer_ip: str | None = None
    helo: str = ""
    smtp_checks: dict = field(default_factory=dict)
    recipient_domain_ids: list[int] = field(default_factory=list)
    submitted: bool = False  # authenticated submission by one of our mailboxes
    message: Message | None = None
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    deadline: float = 0.0  # monotonic time the running stage must finish by
    _parts: list[ScanPart] | Unscannable | None = field(default=None, repr=False)
    # Results one stage computes for others (the archive walk), keyed by the producer.
    shared: dict = field(default_factory=dict, repr=False)

    @property
    def primary_domain_id(self) -> int | None:
        return self.recipient_domain_ids[0] if self.recipient_domain_ids else None

    def check_time(self) -> None:
        if self.deadline and time.monotonic() > self.deadline:
            raise StageTimeout

    @cached_property
    def local_domains(self) -> list[str]:
        """The names of our domains, in order, at most 5000 (lookalike checks)."""
        from apps.mailboxes.models import Domain

        # Asked for every message: plain SQL costs a fraction of building the ORM query.
        quote = connection.ops.quote_name
        name = quote(Domain._meta.get_field("name").column)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {name} FROM {quote(Domain._meta.db_table)} ORDER BY {name} LIMIT 5000"  # noqa: S608
            )
            return [row[0] for row in cursor.fetchall()]

    @cached_property
    def email(self) -> EmailMessage:
        header_end = self.raw.find(b"\r\n\r\n")
        if (header_end if header_end >= 0 else len(self.raw)) > settings.A3_SCAN_MAX_HEADER_BYTES:
            raise Unscannable(f"header section larger than {settings.A3_SCAN_MAX_HEADER_BYTES} bytes")
        # Every MIME part starts with a boundary line: far more of them than the part limit
        # allows means the parse itself (seconds for 10,000 parts) is not worth doing.
        if self.raw.count(b"\r\n--") > 2 * settings.A3_SCAN_MAX_PARTS + 10:
            raise Unscannable(f"more than {settings.A3_SCAN_MAX_PARTS} MIME parts")
        try:
            return _parser.parsebytes(self.raw)
        except Exception as exc:
            raise Unscannable(f"message cannot be parsed ({type(exc).__name__})") from exc

    @property
    def parts(self) -> list[ScanPart]:
        """Every leaf part, decoded; raises Unscannable past the part and depth limits,
        or for base64 that cannot be decoded faithfully. The outcome, either way, is
        computed once for all stages."""
        if self._parts is None:
            try:
                self._parts = list(self._walk(self.email, 0))
            except Unscannable as exc:
                self._parts = exc
        if isinstance(self._parts, Unscannable):
            raise self._parts
        return self._parts

    def _walk(self, message: EmailMessage, depth: int) -> Iterator[ScanPart]:
        count = 0
        stack: list[tuple[EmailMessage, int]] = [(message, depth)]
        while stack:
            part, level = stack.pop()
            count += 1
            if count > settings.A3_SCAN_MAX_PARTS:
                raise Unscannable(f"more than {settings.A3_SCAN_MAX_PARTS} MIME parts")
            if level > settings.A3_SCAN_MAX_DEPTH:
                raise Unscannable(f"MIME nesting deeper than {settings.A3_SCAN_MAX_DEPTH} levels")
            self.check_time()
            if part.is_multipart():
                children = part.get_payload()
                if isinstance(children, list):
                    stack.extend((child, level + 1) for child in reversed(children))
                continue
            try:
                payload = part.get_payload(decode=True) or b""
            except Exception as exc:
                raise Unscannable(f"a part cannot be decoded ({type(exc).__name__})") from exc
            if any(isinstance(defect, _BASE64_DEFECTS) for defect in part.defects):
                raise Unscannable("a part has broken base64 encoding")
            try:
                filename = part.get_filename() or ""
            except Exception:  # noqa: BLE001 - malformed parameters
                filename = ""
            yield ScanPart(
                content_type=part.get_content_type(), filename=filename, payload=payload, depth=level
            )

    @cached_property
    def text(self) -> str:
        """Text of the text parts (HTML included, as source), for rules and tokens."""
        chunks: list[str] = []
        for part in self.parts:
            if part.content_type.startswith("text/") and not part.filename:
                chunks.append(part.payload[: 512 * 1024].decode("utf-8", errors="replace"))
        return "\n".join(chunks)

    def header_values(self, name: str) -> list[str]:
        try:
            return [str(value) for value in self.email.get_all(name, [])]
        except Exception:  # noqa: BLE001 - malformed header: its raw form
            return [str(v) for k, v in self.email.raw_items() if k.lower() == name.lower()]


@dataclass
class PipelineResult:
    score: float
    category: str
    stages: list[dict]
    auth_results: list[str]
    duration_ms: float
    failed_stages: list[str]

    @property
    def reasons(self) -> list[str]:
        return [reason for stage in self.stages for reason in stage["reasons"]]


def configured_stages() -> list[ScanStage]:
    return [import_string(path) for path in settings.A3_SCAN_STAGES]


_CATEGORY_RANK = {"": 0, Category.SPAM: 1, Category.UNSCANNABLE: 2, Category.POLICY: 3, Category.MALWARE: 4}


def pipeline_run(context: ScanContext, *, stages: list[ScanStage] | None = None) -> PipelineResult:
    """Run the stages in order and total their findings."""
    from apps.threats.metrics import SCAN_STAGE_SECONDS

    started = time.monotonic()
    score = 0.0
    category = ""
    records: list[dict] = []
    auth_results: list[str] = []
    failed: list[str] = []
    limit = settings.A3_SCAN_STAGE_TIMEOUT_SECONDS
    for stage in configured_stages() if stages is None else stages:
        name = getattr(stage, "stage_name", getattr(stage, "__name__", "stage"))
        if context.submitted and not getattr(stage, "for_submissions", False):
            continue
        stage_started = time.monotonic()
        context.deadline = stage_started + limit
        try:
            outcome = stage(context)
        except Unscannable as exc:
            outcome = StageOutcome(reasons=[f"Unscannable: {exc}"], category=Category.UNSCANNABLE)
        except StageTimeout:
            outcome = StageOutcome(reasons=[f"The {name} check ran out of time"], status="timeout")
        except Exception as exc:
            logger.exception("scan stage %s failed", name)
            outcome = StageOutcome(
                reasons=[f"The {name} check failed ({type(exc).__name__})"], status="error"
            )
        elapsed = time.monotonic() - stage_started
        if outcome.status == "ok" and elapsed > limit:
            outcome.status = "timeout"
            outcome.reasons.append(f"The {name} check ran out of time ({elapsed:.1f} s)")
        context.deadline = 0.0
        context.outcomes[name] = outcome
        SCAN_STAGE_SECONDS.labels(stage=name).observe(elapsed)
        if outcome.status in ("error", "timeout"):
            failed.append(name)
        score += outcome.score
        if _CATEGORY_RANK.get(outcome.category, 0) > _CATEGORY_RANK.get(category, 0):
            category = outcome.category
        auth_results.extend(outcome.auth_results)
        records.append(
            {
                "stage": name,
                "score": round(outcome.score, 3),
                "reasons": outcome.reasons,
                "ms": round(elapsed * 1000, 3),
                "status": outcome.status,
                "category": outcome.category,
                **({"data": outcome.data} if outcome.data else {}),
            }
        )
    return PipelineResult(
        score=round(score, 3),
        category=category,
        stages=records,
        auth_results=auth_results,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
        failed_stages=failed,
    )
