"""DKIM for outbound mail: per-domain signing keys, their DNS records and signing.

Rotation is two steps so that the new public key is in DNS before anything is signed with
it: `dkim_key_create` (or `dkim_key_rotate`) adds a pending key under a new selector, the
administrator publishes its TXT record and checks it with `dkim_check_published`, then
`dkim_key_activate` switches signing over. The previous key stays listed as retired: its
record should stay published for a few days, until mail signed with it has been delivered.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from apps.accounts.models import User
from apps.alerts.services import emit
from apps.core.addresses import AddressError, normalize_domain
from apps.core.audit import audit
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from apps.core.secrets import secret_decrypt, secret_encrypt
from apps.mailboxes.models import Domain
from apps.relay.dns import DnsTemporaryError, txt_records
from apps.relay.models import DkimKey

__all__ = [
    "DKIM_SIGNED_HEADERS",
    "DkimKeyUnusable",
    "PublishedState",
    "PublishedStatus",
    "dkim_check_published",
    "dkim_dns_record",
    "dkim_domain_get",
    "dkim_domain_get_by_name",
    "dkim_domain_list",
    "dkim_key_activate",
    "dkim_key_create",
    "dkim_key_delete",
    "dkim_key_get",
    "dkim_key_list",
    "dkim_key_rotate",
    "dkim_key_state",
    "dkim_sign",
]

logger = logging.getLogger(__name__)

RSA_KEY_BITS = 2048

# What a mail administrator expects a signature to cover (RFC 6376 §5.4.1). Only the
# fields present are signed; From is listed once more than it occurs ("oversigned") so a
# second From added in transit breaks the signature instead of riding on it.
DKIM_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
)

# RFC 6376 §3.1: a selector is one or more dot-separated labels; we take LDH labels only.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")

_K_TAG = {DkimKey.Algorithm.RSA: "rsa", DkimKey.Algorithm.ED25519: "ed25519"}


class DkimKeyUnusable(ApplicationError):
    """A stored private key cannot be decrypted (the Django secret key changed)."""

    code = "dkim_key_unusable"


# --- Reads -----------------------------------------------------------------------------


def dkim_domain_list(*, actor: User) -> QuerySet[Domain]:
    """Domains whose DKIM keys the actor manages (superadmins: all; domain admins: theirs;
    mailbox users: none), with their keys prefetched, newest first."""
    return (
        Domain.objects.manageable_by(actor)
        .prefetch_related(Prefetch("dkim_keys", queryset=DkimKey.objects.order_by("-created_at", "-id")))
        .order_by("name")
    )


def dkim_domain_get(*, actor: User, domain_id: int | str) -> Domain:
    """A domain the actor manages; anything else is NotFoundError, never a hint it exists."""
    try:
        return dkim_domain_list(actor=actor).get(pk=int(domain_id))
    except (Domain.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such domain.") from None


def dkim_domain_get_by_name(*, actor: User, name: str, field: str = "domain") -> Domain:
    """A managed domain by name (Unicode or A-label). Raises NotFoundError (code
    unknown_domain) for a name outside the actor's scope, AddressError for a malformed one."""
    ascii_name = normalize_domain(name, field=field)
    domain = dkim_domain_list(actor=actor).filter(name=ascii_name).first()
    if domain is None:
        message = f"{ascii_name} is not a domain hosted here."
        raise NotFoundError(message, code="unknown_domain", fields={field: [message]})
    return domain


def dkim_key_list(*, actor: User) -> QuerySet[DkimKey]:
    """Keys of the domains the actor manages."""
    return (
        DkimKey.objects.filter(domain__in=Domain.objects.manageable_by(actor))
        .select_related("domain")
        .order_by("domain__name", "-created_at", "-id")
    )


def dkim_key_get(*, actor: User, key_id: int | str) -> DkimKey:
    try:
        return dkim_key_list(actor=actor).get(pk=int(key_id))
    except (DkimKey.DoesNotExist, ValueError, TypeError):
        raise NotFoundError("No such DKIM key.") from None


def dkim_key_state(key: DkimKey) -> str:
    """ "active" (signs), "pending" (created, never active yet) or "retired"."""
    if key.is_active:
        return "active"
    return "retired" if key.retired_at else "pending"


def dkim_dns_record(key: DkimKey) -> tuple[str, str]:
    """The TXT record that publishes the key: (owner name, value)."""
    name = f"{key.selector}._domainkey.{key.domain.name}"
    return name, f"v=DKIM1; k={_K_TAG[key.algorithm]}; p={key.public_key}"


# --- Publication check -----------------------------------------------------------------


class PublishedState(StrEnum):
    PUBLISHED = "published"
    MISSING = "missing"
    MISMATCH = "mismatch"
    DNS_ERROR = "dns_error"


@dataclass(frozen=True)
class PublishedStatus:
    state: PublishedState
    detail: str
    name: str
    expected: str
    found: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.state is PublishedState.PUBLISHED


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())  # RFC 6376 §3.2: FWS is ignored
    return tags


def _matches(record: str, key: DkimKey) -> bool:
    tags = _tags(record)
    return (
        tags.get("v", "DKIM1") == "DKIM1"
        and tags.get("k", "rsa").lower() == _K_TAG[key.algorithm]
        and tags.get("p") == key.public_key
    )


def dkim_check_published(key: DkimKey) -> PublishedStatus:
    """Look the key's record up through the configured resolvers and say whether what is
    published there is this key. Never raises for DNS trouble: that is state dns_error."""
    name, expected = dkim_dns_record(key)
    try:
        records = txt_records(name)
    except DnsTemporaryError as exc:
        return PublishedStatus(PublishedState.DNS_ERROR, str(exc), name, expected)
    found = tuple(records)
    dkim_records = [record for record in records if "p" in _tags(record)]
    if not dkim_records:
        detail = (
            f"No DKIM record at {name}." if not records else f"The TXT records at {name} are not DKIM keys."
        )
        state = PublishedState.MISSING if not records else PublishedState.MISMATCH
        return PublishedStatus(state, detail, name, expected, found)
    matching = [record for record in dkim_records if _matches(record, key)]
    if matching and len(matching) == len(dkim_records):
        return PublishedStatus(PublishedState.PUBLISHED, f"{name} publishes this key.", name, expected, found)
    if matching:
        # RFC 6376 §3.6.2.2: with several records a verifier may pick any of them.
        detail = f"{name} has {len(dkim_records)} DKIM records; remove all but this key's."
    elif any(_tags(record).get("p") == "" for record in dkim_records):
        detail = f"{name} publishes a revoked key (empty p=)."
    else:
        detail = f"{name} publishes a different key."
    return PublishedStatus(PublishedState.MISMATCH, detail, name, expected, found)


# --- Writes ----------------------------------------------------------------------------


def _require_manage(actor: User, domain: Domain) -> None:
    """Raise unless the actor may manage the domain's keys; out-of-scope domains answer like
    missing ones."""
    if Domain.objects.manageable_by(actor).filter(pk=domain.pk).exists():
        return
    if Domain.objects.visible_to(actor).filter(pk=domain.pk).exists():
        raise PermissionDeniedError("Only the domain's administrators manage its DKIM keys.")
    raise NotFoundError("No such domain.")


def _generate(algorithm: str) -> tuple[str, str]:
    """A new key pair: (PKCS#8 PEM of the private key, base64 public key for p=)."""
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == DkimKey.Algorithm.RSA:
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        # p= for RSA is the DER SubjectPublicKeyInfo (RFC 6376 §3.6.1).
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        # p= for Ed25519 is the bare 32-byte public key (RFC 8463 §4.2).
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, base64.b64encode(public).decode()


def _check_selector(selector: str, domain: Domain) -> str:
    selector = selector.strip().lower()
    if not _SELECTOR_RE.match(selector) or len(selector) > 63:
        message = "A selector is DNS labels of letters, digits and hyphens, at most 63 characters."
        raise ApplicationError(message, code="invalid_selector", fields={"selector": [message]})
    if len(f"{selector}._domainkey.{domain.name}") > 253:
        message = "The selector makes the DNS name longer than 253 characters."
        raise ApplicationError(message, code="invalid_selector", fields={"selector": [message]})
    if domain.dkim_keys.filter(selector=selector).exists():
        message = f"{domain.name_unicode} already has a key with selector {selector}."
        raise ConflictError(message, code="selector_taken", fields={"selector": [message]})
    return selector


def _default_selector(domain: Domain) -> str:
    base = f"a3-{timezone.now():%Y%m%d}"
    taken = set(domain.dkim_keys.filter(selector__startswith=base).values_list("selector", flat=True))
    if base not in taken:
        return base
    suffix = 2
    while f"{base}-{suffix}" in taken:
        suffix += 1
    return f"{base}-{suffix}"


def _announce_activation(actor: User, key: DkimKey, previous: DkimKey | None) -> None:
    message = f"DKIM key {key.selector} now signs mail from {key.domain.name_unicode} (set by {actor.email})."
    emit(
        "relay.dkim_activated",
        "info",
        message,
        domain_id=key.domain_id,
        domain=key.domain.name,
        selector=key.selector,
        algorithm=key.algorithm,
        previous_selector=previous.selector if previous else None,
        actor=actor.email,
    )


@transaction.atomic
def dkim_key_create(
    *, actor: User, domain: Domain, algorithm: str = DkimKey.Algorithm.RSA, selector: str | None = None
) -> DkimKey:
    """Generate a key for the domain (RSA-2048 or Ed25519), its private half encrypted at rest.

    It becomes the active signer only when the domain has none (raising the
    relay.dkim_activated alert); otherwise it waits as "pending" so its DNS record can be
    published before `dkim_key_activate`. The selector defaults to a3-YYYYMMDD (with -2,
    -3 … when taken). Raises ApplicationError for a bad algorithm or selector and
    ConflictError (selector_taken) for a selector the domain already uses.
    """
    _require_manage(actor, domain)
    if algorithm not in DkimKey.Algorithm.values:
        message = f"Choose one of: {', '.join(DkimKey.Algorithm.values)}."
        raise ApplicationError(message, code="invalid_algorithm", fields={"algorithm": [message]})
    domain = Domain.objects.select_for_update().get(pk=domain.pk)  # one selector/active decision at a time
    selector = _default_selector(domain) if selector is None else _check_selector(selector, domain)
    private_pem, public = _generate(algorithm)
    activate = not domain.dkim_keys.filter(is_active=True).exists()
    key = DkimKey(
        domain=domain,
        selector=selector,
        algorithm=algorithm,
        private_key=secret_encrypt(private_pem),
        public_key=public,
        is_active=activate,
    )
    try:
        with transaction.atomic():
            key.save()
    except IntegrityError:
        # Another request took the selector (or activated a key) between our check and insert.
        raise ConflictError(
            f"{domain.name_unicode} changed meanwhile; try again.", code="dkim_conflict"
        ) from None
    if activate:
        _announce_activation(actor, key, None)
    audit(
        "dkim_key.create",
        actor=actor,
        target=key,
        domain_id=domain.pk,
        selector=key.selector,
        active=activate,
    )
    return key


@transaction.atomic
def dkim_key_activate(*, actor: User, key: DkimKey) -> DkimKey:
    """Make the key its domain's signer. The previous active key is retired (kept, with
    retired_at set). Activating the active key changes nothing and raises no alert;
    otherwise the relay.dkim_activated alert goes out."""
    _require_manage(actor, key.domain)
    Domain.objects.select_for_update().get(pk=key.domain_id)  # serialize switches per domain
    key = DkimKey.objects.select_related("domain").get(pk=key.pk)
    if key.is_active:
        return key
    now = timezone.now()
    previous = DkimKey.objects.filter(domain_id=key.domain_id, is_active=True).first()
    if previous is not None:
        # Before activating the new key: at most one active key per domain is a constraint
        # checked per statement.
        previous.is_active = False
        previous.retired_at = now
        previous.save(update_fields=["is_active", "retired_at", "updated_at"])
    key.is_active = True
    key.retired_at = None
    key.save(update_fields=["is_active", "retired_at", "updated_at"])
    _announce_activation(actor, key, previous)
    audit(
        "dkim_key.activate",
        actor=actor,
        target=key,
        domain_id=key.domain_id,
        retired_id=previous and previous.pk,
    )
    return key


@transaction.atomic
def dkim_key_rotate(
    *, actor: User, domain: Domain, algorithm: str | None = None, activate: bool = False
) -> DkimKey:
    """Add a key under a new selector, with the algorithm of the current signer unless
    given. Without `activate` it stays pending until its record is published and it is
    activated (the safe two-step rotation); with `activate` it signs at once, for when the
    record is already published or the old key is compromised."""
    _require_manage(actor, domain)
    if algorithm is None:
        current = domain.dkim_keys.filter(is_active=True).first()
        algorithm = current.algorithm if current else DkimKey.Algorithm.RSA
    key = dkim_key_create(actor=actor, domain=domain, algorithm=algorithm)
    if activate and not key.is_active:
        key = dkim_key_activate(actor=actor, key=key)
    audit("dkim_key.rotate", actor=actor, target=key, domain_id=domain.pk, activated=key.is_active)
    return key


@transaction.atomic
def dkim_key_delete(*, actor: User, key: DkimKey) -> None:
    """Delete a pending or retired key. The active key may be deleted only when it is the
    domain's last key, which turns signing off for the domain; with other keys around,
    activate one of them first (else ConflictError, code dkim_key_active)."""
    _require_manage(actor, key.domain)
    Domain.objects.select_for_update().get(pk=key.domain_id)
    key = DkimKey.objects.select_related("domain").get(pk=key.pk)
    if key.is_active and DkimKey.objects.filter(domain_id=key.domain_id).exclude(pk=key.pk).exists():
        raise ConflictError(
            f"{key.selector} signs mail from {key.domain.name_unicode}; activate another key before deleting it.",
            code="dkim_key_active",
        )
    logger.info(
        "dkim key deleted",
        extra={
            "dkim_key_id": key.pk,
            "domain": key.domain.name,
            "selector": key.selector,
            "actor": actor.email,
        },
    )
    audit("dkim_key.delete", actor=actor, target=key, domain_id=key.domain_id, selector=key.selector)
    key.delete()


# --- Signing ---------------------------------------------------------------------------

# Decrypted keys, ready for dkimpy, by (key id, updated_at): decrypting and parsing PEM for
# every message would dominate signing time. A changed row gets a new entry. The stored
# ciphertext is part of the key too, so a reused id (SQLite may reuse the highest id after
# a delete) can never pick up another key's material.
_KEY_CACHE: dict[tuple[int, datetime, str], bytes] = {}
_KEY_CACHE_LOCK = threading.Lock()
_KEY_CACHE_SIZE = 256


def _signing_key(key_id: int, updated_at: datetime, algorithm: str, stored: str) -> bytes:
    cache_key = (key_id, updated_at, stored)
    with _KEY_CACHE_LOCK:
        cached = _KEY_CACHE.get(cache_key)
    if cached is not None:
        return cached
    try:
        pem = secret_decrypt(stored).encode()
    except ValueError as exc:
        raise DkimKeyUnusable(f"DKIM key {key_id} cannot be decrypted: {exc}.") from exc
    if algorithm == DkimKey.Algorithm.ED25519:
        # dkimpy takes an Ed25519 key as the base64 32-byte seed, not PEM.
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise DkimKeyUnusable(f"DKIM key {key_id} is not an Ed25519 key.")
        material = base64.b64encode(
            private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        )
    else:
        material = pem  # dkimpy parses PKCS#8 PEM itself
    with _KEY_CACHE_LOCK:
        for stale in [entry for entry in _KEY_CACHE if entry[0] == key_id]:
            del _KEY_CACHE[stale]
        while len(_KEY_CACHE) >= _KEY_CACHE_SIZE:
            del _KEY_CACHE[next(iter(_KEY_CACHE))]
        _KEY_CACHE[cache_key] = material
    return material


_SIGNED = frozenset(name.encode() for name in DKIM_SIGNED_HEADERS)
_reported_unusable: set[tuple[int, datetime]] = set()  # key versions this process alerted on


def dkim_sign(*, raw: bytes, domain: str) -> bytes:
    """The DKIM-Signature header field (CRLF-terminated, folded with CRLF) to put in front of
    `raw`, signed with the domain's active key as d=`domain`; b"" when the domain has no
    active key or the message has no From field.

    `raw` must be the bytes exactly as they will be sent (CRLF line endings): signing is
    relaxed/relaxed, but any change to the body text breaks the signature. A key that cannot
    be decrypted (the secret key changed) is logged and alerted once per process, and the
    message goes out unsigned rather than not at all.
    """
    try:
        ascii_domain = normalize_domain(domain)
    except AddressError:
        return b""
    row = (
        DkimKey.objects.filter(domain__name=ascii_domain, is_active=True)
        .values("id", "domain_id", "selector", "algorithm", "private_key", "updated_at")
        .first()
    )
    if row is None:
        return b""
    try:
        private = _signing_key(row["id"], row["updated_at"], row["algorithm"], row["private_key"])
    except DkimKeyUnusable as exc:
        logger.error("dkim key unusable", extra={"dkim_key_id": row["id"], "domain": ascii_domain})
        if (row["id"], row["updated_at"]) not in _reported_unusable:
            _reported_unusable.add((row["id"], row["updated_at"]))
            emit(
                "relay.dkim_key_unusable",
                "error",
                exc.message,
                domain_id=row["domain_id"],
                selector=row["selector"],
            )
        return b""
    try:
        signer = dkim.DKIM(raw, signature_algorithm=row["algorithm"].encode(), linesep=b"\r\n")
        present = [name.lower() for name, _ in signer.headers if name.lower() in _SIGNED]
        if b"from" not in present:
            return b""  # RFC 6376 §5.4: From must be signed, so there is nothing to vouch for
        return signer.sign(
            row["selector"].encode(),
            ascii_domain.encode(),
            private,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[*present, b"from"],
        )
    except dkim.DKIMException as exc:
        # A header section dkimpy cannot parse: the message still goes, unsigned.
        logger.warning(
            "dkim signing failed: %s", exc, extra={"dkim_key_id": row["id"], "domain": ascii_domain}
        )
        return b""
