"""Where outbound mail goes: transport rules, the smarthost, or the recipient domain's MX
hosts; and the Sender Rewriting Scheme that lets forwarded mail pass SPF."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

import srslib
from django.conf import settings
from django.db.models import Q

from apps.accounts.models import User
from apps.core.addresses import AddressError, normalize_domain, parse_address
from apps.core.audit import audit, audit_changes, snapshot
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError
from apps.core.secrets import secret_decrypt, secret_encrypt
from apps.relay.models import TransportRule

__all__ = [
    "Route",
    "SrsError",
    "route_for_domain",
    "srs_forward",
    "srs_is_address",
    "srs_reverse",
    "transport_rule_create",
    "transport_rule_delete",
    "transport_rule_update",
]


@dataclass(frozen=True)
class Route:
    """A fixed next hop. Without one (route_for_domain returns None) mail goes to MX hosts."""

    host: str
    port: int
    tls: str  # a TransportRule.Tls value
    verify_certificate: bool = False
    username: str = ""
    password: str = ""
    source: str = ""  # what chose it, for the attempt log: "transport rule …" or "smarthost"


def _smarthost() -> Route | None:
    if not settings.A3_SMARTHOST:
        return None
    host, _, port = settings.A3_SMARTHOST.rpartition(":")
    if not host:
        host, port = settings.A3_SMARTHOST, "25"
    return Route(
        host=host.strip("[]"),
        port=int(port or 25),
        tls=settings.A3_SMARTHOST_TLS,
        username=settings.A3_SMARTHOST_USERNAME,
        password=settings.A3_SMARTHOST_PASSWORD,
        verify_certificate=settings.A3_SMARTHOST_TLS in {"required", "implicit"},
        source="smarthost",
    )


def route_for_domain(domain: str) -> Route | None:
    """The configured next hop for mail to `domain`: its own transport rule, else a "*"
    rule, else the A3_SMARTHOST setting; None means: look up its MX hosts."""
    rules = {
        rule.domain: rule
        for rule in TransportRule.objects.filter(Q(domain=domain) | Q(domain="*"), is_active=True)
    }
    rule = rules.get(domain) or rules.get("*")
    if rule is not None:
        return Route(
            host=rule.host,
            port=rule.port,
            tls=rule.tls,
            verify_certificate=rule.verify_certificate,
            username=rule.username,
            password=secret_decrypt(rule.password),
            source=f"transport rule {rule.domain}",
        )
    return _smarthost()


# --- Transport rules (admin) -------------------------------------------------------------

_RULE_FIELDS = {"host", "port", "tls", "verify_certificate", "username", "description", "is_active"}


def _rule_domain(value: str) -> str:
    if value.strip() == "*":
        return "*"
    try:
        return normalize_domain(value)
    except AddressError as exc:
        raise ApplicationError(str(exc), code="invalid_domain", fields={"domain": [str(exc)]}) from exc


def _rule_validate(host: str, port: int, tls: str) -> None:
    if not host or any(ch.isspace() for ch in host):
        raise ApplicationError("A host name is required.", code="invalid", fields={"host": ["Invalid host."]})
    if not 1 <= int(port) <= 65535:
        raise ApplicationError(
            "Port out of range.", code="invalid", fields={"port": ["Must be between 1 and 65535."]}
        )
    if tls not in TransportRule.Tls.values:
        raise ApplicationError("Unknown TLS mode.", code="invalid", fields={"tls": ["Unknown TLS mode."]})


def transport_rule_create(
    *, domain: str, host: str, port: int = 25, password: str = "", actor: User | None = None, **fields: object
) -> TransportRule:
    """Route mail for `domain` ("*" for all) to host:port. Superadmins only (callers check)."""
    name = _rule_domain(domain)
    tls = str(fields.get("tls", TransportRule.Tls.OPPORTUNISTIC))
    _rule_validate(host, port, tls)
    if TransportRule.objects.filter(domain=name).exists():
        raise ConflictError(f"A transport rule for {name} exists already.", fields={"domain": ["Exists."]})
    unknown = set(fields) - _RULE_FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    rule = TransportRule.objects.create(
        domain=name, host=host.strip(), port=port, password=secret_encrypt(password), **fields
    )
    audit("transport_rule.create", actor=actor, target=rule, changes=audit_changes({}, rule))
    return rule


def transport_rule_update(
    *, rule: TransportRule, password: str | None = None, actor: User | None = None, **fields: object
) -> TransportRule:
    unknown = set(fields) - _RULE_FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    before = snapshot(rule)
    for name, value in fields.items():
        setattr(rule, name, value)
    _rule_validate(rule.host, rule.port, rule.tls)
    if password is not None:
        rule.password = secret_encrypt(password)
    rule.save()
    audit("transport_rule.update", actor=actor, target=rule, changes=audit_changes(before, rule))
    return rule


def transport_rule_delete(*, rule: TransportRule, actor: User | None = None) -> None:
    if rule.pk is None:
        raise NotFoundError("No such transport rule.")
    audit("transport_rule.delete", actor=actor, target=rule)
    rule.delete()


# --- SRS ---------------------------------------------------------------------------------


class SrsError(Exception):
    """Not a valid SRS address of ours (forged, expired or mangled)."""


@lru_cache(maxsize=2)
def _srs(secret: str) -> srslib.SRS:
    return srslib.SRS(secret)


def _srs_secret() -> str:
    if settings.A3_SRS_SECRET:
        return settings.A3_SRS_SECRET
    return hmac.new(settings.SECRET_KEY.encode(), b"a3mailer-srs", hashlib.sha256).hexdigest()


def srs_forward(address: str) -> str:
    """The SRS0/SRS1 rewrite of a sender for mail we forward: bounces come back to our
    A3_SRS_DOMAIN, and SPF at the destination checks our servers, not the original
    sender's. An empty (null) sender stays empty. Inbound mail claiming one of our own
    domains is rewritten too: the claim is unproven, and forwarding it unchanged would
    make SPF vouch for it."""
    if not address:
        return ""
    try:
        parse_address(address)
    except AddressError:
        return address
    return _srs(_srs_secret()).forward(address, settings.A3_SRS_DOMAIN)


def srs_is_address(address: str) -> bool:
    domain = address.rpartition("@")[2]
    return domain.lower() == settings.A3_SRS_DOMAIN and srslib.SRS.is_srs_address(address, strict=False)


def srs_reverse(address: str) -> str:
    """The original sender behind one of our SRS addresses. Raises SrsError when the
    hash or the timestamp does not check out (a forged bounce target)."""
    try:
        return _srs(_srs_secret()).reverse(address)
    except (srslib.Error, ValueError) as exc:
        raise SrsError(str(exc)) from exc
