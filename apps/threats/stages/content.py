"""Content stages: the GTUBE test pattern, and administrators' regex rules.

Rules are written by domain administrators, so a rule may be slow or even catastrophic
(nested quantifiers backtrack exponentially). They run under the `regex` module's
per-search timeout: a rule that runs out of time is skipped and logged, and the message
goes on with the other rules.
"""

from __future__ import annotations

import logging

import regex
from django.db import connection

from apps.threats.models import Category, ContentRule
from apps.threats.pipeline import ScanContext, StageOutcome, scan_stage

logger = logging.getLogger(__name__)

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
_GTUBE_BYTES = GTUBE.encode("ascii")
GTUBE_SCORE = 1000.0

MAX_PATTERN_LENGTH = ContentRule._meta.get_field("pattern").max_length
# Per rule and per searched text. Long enough for any sane pattern on a 512 KiB part,
# short enough that a few runaway rules stay well inside the stage's time limit.
RULE_TIMEOUT_SECONDS = 0.2
# Rules match case-insensitively (what administrators expect of "viagra"); a pattern
# can switch that off with (?-i).
RULE_FLAGS = regex.IGNORECASE | regex.MULTILINE

_RULE_FIELDS = frozenset({"id", "name", "target", "header_name", "pattern", "score"})

_compiled: dict[tuple[int, str], regex.Pattern] = {}
_COMPILED_MAX = 2000


@scan_stage("gtube")
def gtube_stage(context: ScanContext) -> StageOutcome:
    """The GTUBE string anywhere in the body (raw, or a decoded text part) marks the
    message as spam: the standard way to test that spam handling works end to end."""
    body_start = max(context.raw.find(b"\r\n\r\n"), 0)
    if context.raw.find(_GTUBE_BYTES, body_start) >= 0 or GTUBE in context.text:
        return StageOutcome(
            score=GTUBE_SCORE,
            category=Category.SPAM,
            reasons=["GTUBE test pattern: the standard test for spam filters"],
        )
    return StageOutcome()


def content_rule_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a rule pattern, in plain words, or None when it can be used.
    Rules match case-insensitively unless the pattern says (?-i)."""
    if not pattern:
        return "The pattern is empty."
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"The pattern is longer than {MAX_PATTERN_LENGTH} characters."
    try:
        compiled = regex.compile(pattern, RULE_FLAGS)
    except (regex.error, ValueError, OverflowError) as exc:
        return f"The pattern is not a valid regular expression: {exc}."
    try:
        matches_nothing = compiled.search("", timeout=RULE_TIMEOUT_SECONDS)
    except TimeoutError:
        return "The pattern takes too long to evaluate."
    if matches_nothing is not None:
        return "The pattern matches empty text, so it would match every message."
    return None


def _compile(rule: ContentRule) -> regex.Pattern | None:
    key = (rule.pk, rule.pattern)
    compiled = _compiled.get(key)
    if compiled is None:
        try:
            compiled = regex.compile(rule.pattern, RULE_FLAGS)
        except (regex.error, ValueError, OverflowError):
            # Saved before validation existed, or edited in the database by hand.
            logger.warning("content rule %s has an invalid pattern; skipped", rule.pk)
            return None
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()  # edited rules leave stale keys behind; start afresh
        _compiled[key] = compiled
    return compiled


def _rule_texts(context: ScanContext, rule: ContentRule) -> list[str]:
    if rule.target == ContentRule.Target.BODY:
        return [context.text]
    if rule.target == ContentRule.Target.SUBJECT:
        return context.header_values("Subject")
    if rule.target == ContentRule.Target.HEADER and rule.header_name:
        return context.header_values(rule.header_name)
    return []


def _column(field: str) -> str:
    return connection.ops.quote_name(ContentRule._meta.get_field(field).column)


def active_rules_for(domain_ids: list[int]) -> list[ContentRule]:
    """Active server-wide rules and those of the given domains, in ContentRule's order."""
    # Every scan asks this, and most often the answer is "none": plain SQL costs a small
    # fraction of building the equivalent ORM (or raw()) query each time. The rules come
    # back as ContentRule.only(_RULE_FIELDS) would give them.
    fields = [f.attname for f in ContentRule._meta.concrete_fields if f.attname in _RULE_FIELDS]
    scope = f"{_column('domain')} IS NULL"
    if domain_ids:
        scope += f" OR {_column('domain')} IN ({', '.join(['%s'] * len(domain_ids))})"
    sql = (
        f"SELECT {', '.join(map(_column, fields))} "  # noqa: S608
        f"FROM {connection.ops.quote_name(ContentRule._meta.db_table)} "
        f"WHERE {_column('is_active')} = %s AND ({scope}) "
        f"ORDER BY {', '.join(map(_column, ContentRule._meta.ordering))}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [True, *domain_ids])
        rows = cursor.fetchall()
    return [ContentRule.from_db(connection.alias, fields, row) for row in rows]


@scan_stage("rules")
def rules_stage(context: ScanContext) -> StageOutcome:
    """Each matching rule adds its score (which may be negative)."""
    rules = active_rules_for(context.recipient_domain_ids)
    if not rules:
        return StageOutcome()
    outcome = StageOutcome()
    matched: list[int] = []
    timed_out: list[int] = []
    for rule in rules:
        context.check_time()
        compiled = _compile(rule)
        if compiled is None:
            continue
        try:
            hit = any(
                compiled.search(text, timeout=RULE_TIMEOUT_SECONDS) for text in _rule_texts(context, rule)
            )
        except TimeoutError:
            logger.warning("content rule %s (%s) ran out of time and was skipped", rule.pk, rule.name)
            timed_out.append(rule.pk)
            continue
        if hit:
            matched.append(rule.pk)
            outcome.score += rule.score
            outcome.reasons.append(f"Rule {rule.name} matched")
    outcome.data = {"matched": matched, **({"timed_out": timed_out} if timed_out else {})}
    return outcome
