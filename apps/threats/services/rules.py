"""Allow and block lists, content rules and the per-domain verdict policy.

Who may change what: server-wide entries and rules belong to superadmins; a domain's
entries, rules and policy to its administrators (and superadmins); a mailbox's own list
to its owner, the administrators of its domain and superadmins. Every change is audited.
"""

from __future__ import annotations

import ipaddress
import math
import re
from itertools import pairwise
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from apps.core.addresses import normalize_domain, parse_address
from apps.core.audit import audit, audit_changes, audit_diff, snapshot
from apps.core.exceptions import ApplicationError, ConflictError, PermissionDeniedError
from apps.mailboxes.models import Domain, Mailbox
from apps.threats.models import (
    Action,
    ContentRule,
    DigestFrequency,
    DomainPolicy,
    ListEntry,
    ScannerFailureMode,
)
from apps.threats.policy import server_policy

if TYPE_CHECKING:
    from django.http import HttpRequest

    from apps.accounts.models import User

__all__ = [
    "POLICY_FIELDS",
    "content_rule_create",
    "content_rule_delete",
    "content_rule_update",
    "domain_policy_get",
    "domain_policy_update",
    "list_entry_create",
    "list_entry_delete",
    "may_manage_domain",
    "may_manage_mailbox",
]

MAX_RULE_SCORE = 1000.0  # one rule outweighing every threshold is enough; more is a typo
MAX_QUARANTINE_DAYS = 3650
THRESHOLDS = ("header_score", "junk_score", "quarantine_score", "reject_score")
POLICY_FIELDS = frozenset(
    {
        *THRESHOLDS,
        "unscannable_action",
        "scanner_failure",
        "quarantine_days",
        "digest_default",
        "bayes_enabled",
    }
)
_RULE_FIELDS = frozenset({"name", "target", "header_name", "pattern", "score", "domain", "is_active"})
# RFC 5322 field name: printable ASCII except the colon.
_HEADER_NAME = re.compile(r"[!-9;-~]{1,100}")


def _invalid(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, fields={field: [message]})


def _active(actor: User | None) -> bool:
    return bool(actor is not None and getattr(actor, "is_authenticated", False) and actor.is_active)


def may_manage_domain(actor: User | None, domain: Domain) -> bool:
    """Superadmins and the domain's administrators."""
    if not _active(actor):
        return False
    if actor.is_superadmin:
        return True
    return actor.is_domain_admin and domain.admins.filter(pk=actor.pk).exists()


def may_manage_mailbox(actor: User | None, mailbox: Mailbox) -> bool:
    """The mailbox's owner, its domain's administrators and superadmins."""
    if not _active(actor):
        return False
    return mailbox.owner_id == actor.pk or may_manage_domain(actor, mailbox.domain)


def _check_scope(actor: User | None, domain: Domain | None, mailbox: Mailbox | None, what: str) -> None:
    if mailbox is not None:
        if not may_manage_mailbox(actor, mailbox):
            raise PermissionDeniedError(f"You may not change the {what} of {mailbox.address}.")
    elif domain is not None:
        if not may_manage_domain(actor, domain):
            raise PermissionDeniedError(f"Only an administrator of {domain.name} may change its {what}.")
    elif not (_active(actor) and actor.is_superadmin):
        raise PermissionDeniedError(f"Only a superadmin may change the server-wide {what}.")


# --- Allow and block lists ------------------------------------------------------------------


def _list_value(match: str, value: str) -> str:
    text = (value or "").strip()
    if not text:
        raise _invalid("value", "A value is required.")
    if match == ListEntry.Match.SENDER:
        return parse_address(text, field="value").value
    if match == ListEntry.Match.DOMAIN:
        # "@example.com" and "*.example.com" are common ways of writing the same thing;
        # a domain entry covers the domain's sub-domains anyway.
        text = text.removeprefix("@").removeprefix("*.")
        return normalize_domain(text, field="value")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise _invalid("value", f"'{text}' is not an IP address or network (CIDR).") from None


@transaction.atomic
def list_entry_create(
    *,
    actor: User,
    kind: str,
    match: str,
    value: str,
    domain: Domain | None = None,
    mailbox: Mailbox | None = None,
    comment: str = "",
    request: HttpRequest | None = None,
) -> ListEntry:
    """Add an allow or block entry: server-wide (no domain, no mailbox), for a domain, or
    for one mailbox. The value is normalised (lower-case address, IDNA domain, CIDR)."""
    if kind not in ListEntry.Kind.values:
        raise _invalid("kind", f"Choose one of {', '.join(ListEntry.Kind.values)}.")
    if match not in ListEntry.Match.values:
        raise _invalid("match", f"Choose one of {', '.join(ListEntry.Match.values)}.")
    if domain is not None and mailbox is not None:
        raise ApplicationError(
            "An entry is for a domain or for a mailbox, not both.",
            fields={"mailbox": ["Give a domain or a mailbox, not both."]},
        )
    comment = (comment or "").strip()
    if len(comment) > 200:
        raise _invalid("comment", "At most 200 characters.")
    normalised = _list_value(match, value)
    _check_scope(actor, domain, mailbox, "allow and block lists")
    # The unique constraint treats empty scopes as distinct (NULLs), so check explicitly.
    duplicate = ListEntry.objects.filter(
        kind=kind, match=match, value=normalised, domain=domain, mailbox=mailbox
    )
    if duplicate.exists():
        raise ConflictError(f"{normalised} is on this list already.", fields={"value": ["Already listed."]})
    try:
        with transaction.atomic():
            entry = ListEntry.objects.create(
                kind=kind,
                match=match,
                value=normalised,
                domain=domain,
                mailbox=mailbox,
                comment=comment,
                created_by=actor,
            )
    except IntegrityError:  # a concurrent request added the same entry
        raise ConflictError(
            f"{normalised} is on this list already.", fields={"value": ["Already listed."]}
        ) from None
    audit(
        "threats.list_add",
        actor=actor,
        request=request,
        target=entry,
        changes=audit_changes({}, entry),
        domain_id=_domain_id(domain, mailbox),
    )
    return entry


@transaction.atomic
def list_entry_delete(*, actor: User, entry: ListEntry, request: HttpRequest | None = None) -> None:
    _check_scope(actor, entry.domain, entry.mailbox, "allow and block lists")
    audit(
        "threats.list_remove",
        actor=actor,
        request=request,
        target=entry,
        changes=audit_diff(snapshot(entry), {}),
        domain_id=_domain_id(entry.domain, entry.mailbox),
    )
    entry.delete()


def _domain_id(domain: Domain | None, mailbox: Mailbox | None) -> int | None:
    if mailbox is not None:
        return mailbox.domain_id
    return domain.pk if domain is not None else None


# --- Content rules --------------------------------------------------------------------------


def _rule_validate(rule: ContentRule) -> None:
    """Checks the whole rule (after create or update) and normalises its text fields."""
    from apps.threats.stages.content import content_rule_pattern_problem

    errors: dict[str, list[str]] = {}
    rule.name = (rule.name or "").strip()
    if not rule.name:
        errors["name"] = ["A name is required."]
    elif len(rule.name) > 100:
        errors["name"] = ["At most 100 characters."]
    if rule.target not in ContentRule.Target.values:
        errors["target"] = [f"Choose one of {', '.join(ContentRule.Target.values)}."]
    rule.header_name = (rule.header_name or "").strip().rstrip(":").strip()
    if rule.target == ContentRule.Target.HEADER:
        if not rule.header_name:
            errors["header_name"] = ["A header rule needs the header's name."]
        elif not _HEADER_NAME.fullmatch(rule.header_name):
            errors["header_name"] = ["Not a header name (printable ASCII without a colon, at most 100)."]
    else:
        rule.header_name = ""  # meaningless for the other targets
    if not rule.pattern:
        errors["pattern"] = ["A pattern is required."]
    elif len(rule.pattern) > 1000:
        errors["pattern"] = ["At most 1000 characters."]
    else:
        problem = content_rule_pattern_problem(rule.pattern)
        if problem:
            errors["pattern"] = [problem]
    try:
        rule.score = float(rule.score)
    except (TypeError, ValueError):
        errors["score"] = ["A number is required."]
    else:
        if not math.isfinite(rule.score) or abs(rule.score) > MAX_RULE_SCORE:
            errors["score"] = [f"Between -{MAX_RULE_SCORE:g} and {MAX_RULE_SCORE:g}."]
    if errors:
        first = next(iter(errors.values()))[0]
        raise ApplicationError(f"The rule is not valid: {first}", fields=errors)


@transaction.atomic
def content_rule_create(
    *,
    actor: User,
    name: str,
    target: str,
    pattern: str,
    score: float,
    header_name: str = "",
    domain: Domain | None = None,
    is_active: bool = True,
    request: HttpRequest | None = None,
) -> ContentRule:
    """A regex rule whose match adds `score` (negative: less spammy). Without a domain it
    applies to every domain (superadmins only)."""
    rule = ContentRule(
        name=name,
        target=target,
        header_name=header_name,
        pattern=pattern,
        score=score,
        domain=domain,
        is_active=bool(is_active),
    )
    _rule_validate(rule)
    _check_scope(actor, domain, None, "content rules")
    rule.save()
    audit(
        "threats.rule_create",
        actor=actor,
        request=request,
        target=rule,
        changes=audit_changes({}, rule),
        domain_id=rule.domain_id,
    )
    return rule


@transaction.atomic
def content_rule_update(
    *, actor: User, rule: ContentRule, request: HttpRequest | None = None, **fields: object
) -> ContentRule:
    """Change any of name, target, header_name, pattern, score, is_active and domain
    (the actor must manage both the old and the new scope)."""
    unknown = sorted(set(fields) - _RULE_FIELDS)
    if unknown:
        raise ApplicationError("Unknown fields.", fields={name: ["Unknown field."] for name in unknown})
    _check_scope(actor, rule.domain, None, "content rules")
    rule = ContentRule.objects.select_for_update(of=("self",)).select_related("domain").get(pk=rule.pk)
    before = snapshot(rule)
    for name, value in fields.items():
        setattr(rule, name, value)
    _rule_validate(rule)
    if "domain" in fields:
        _check_scope(actor, rule.domain, None, "content rules")
    rule.save()
    audit(
        "threats.rule_update",
        actor=actor,
        request=request,
        target=rule,
        changes=audit_changes(before, rule),
        domain_id=rule.domain_id,
    )
    return rule


@transaction.atomic
def content_rule_delete(*, actor: User, rule: ContentRule, request: HttpRequest | None = None) -> None:
    _check_scope(actor, rule.domain, None, "content rules")
    audit(
        "threats.rule_delete",
        actor=actor,
        request=request,
        target=rule,
        changes=audit_diff(snapshot(rule), {}),
        domain_id=rule.domain_id,
    )
    rule.delete()


# --- Domain policy --------------------------------------------------------------------------


def _server_defaults() -> dict[str, object]:
    defaults = server_policy()
    return {name: getattr(defaults, name) for name in POLICY_FIELDS}


def domain_policy_get(*, domain: Domain) -> DomainPolicy:
    """The domain's policy row, or an unsaved one holding the server defaults (what a
    domain without a row gets); `pk is None` tells them apart."""
    try:
        return domain.threat_policy  # no query when the caller select_related it
    except DomainPolicy.DoesNotExist:
        return DomainPolicy(domain=domain, **_server_defaults())


def _policy_validate(policy: DomainPolicy) -> None:
    errors: dict[str, list[str]] = {}
    for name in THRESHOLDS:
        value = getattr(policy, name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            errors[name] = ["A number is required."]
            continue
        if not math.isfinite(value):
            errors[name] = ["A finite number is required."]
            continue
        setattr(policy, name, value)
    if not errors:
        labels = {
            "header_score": "header",
            "junk_score": "junk",
            "quarantine_score": "quarantine",
            "reject_score": "reject",
        }
        for lower, higher in pairwise(THRESHOLDS):
            if getattr(policy, higher) < getattr(policy, lower):
                errors.setdefault(higher, []).append(
                    f"Must be at least the {labels[lower]} threshold ({getattr(policy, lower):g}): "
                    "the thresholds go header ≤ junk ≤ quarantine ≤ reject."
                )
        if not errors and policy.reject_score <= 0:
            errors["reject_score"] = ["Must be above 0: refusing at SMTP time needs a finding."]
    choices = {
        "unscannable_action": Action.values,
        "scanner_failure": ScannerFailureMode.values,
        "digest_default": DigestFrequency.values,
    }
    for name, allowed in choices.items():
        if getattr(policy, name) not in allowed:
            errors[name] = [f"Choose one of {', '.join(allowed)}."]
    days = policy.quarantine_days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_QUARANTINE_DAYS:
        errors["quarantine_days"] = [f"A whole number of days from 1 to {MAX_QUARANTINE_DAYS}."]
    if not isinstance(policy.bayes_enabled, bool):
        errors["bayes_enabled"] = ["true or false."]
    if errors:
        first = next(iter(errors.values()))[0]
        raise ApplicationError(f"The policy is not valid: {first}", fields=errors)


@transaction.atomic
def domain_policy_update(
    *, actor: User, domain: Domain, request: HttpRequest | None = None, **fields: object
) -> DomainPolicy:
    """Change the domain's verdict policy; the first change creates its row from the
    server defaults. Fields not given keep their value."""
    unknown = sorted(set(fields) - POLICY_FIELDS)
    if unknown:
        raise ApplicationError("Unknown fields.", fields={name: ["Unknown field."] for name in unknown})
    _check_scope(actor, domain, None, "threat policy")
    policy = DomainPolicy.objects.select_for_update().filter(domain=domain).first()
    before = snapshot(policy) if policy is not None else {}
    if policy is None:
        policy = DomainPolicy(domain=domain, **_server_defaults())
    for name, value in fields.items():
        setattr(policy, name, value)
    _policy_validate(policy)
    try:
        with transaction.atomic():
            policy.save()
    except IntegrityError:  # another request created the row first
        raise ConflictError("The policy changed meanwhile; try again.") from None
    audit(
        "threats.policy_update",
        actor=actor,
        request=request,
        target=policy,
        changes=audit_changes(before, policy),
        domain_id=domain.pk,
    )
    return policy
