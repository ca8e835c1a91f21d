"""Mail address and domain syntax: one normalisation used by every app.

Domains are stored as IDNA A-labels (ASCII, lower case) and shown as U-labels. Local parts
follow RFC 5321/6531 through email-validator (UTF-8 allowed for SMTPUTF8), normalised to
NFC and lower case: like every major mail server we treat local parts case-insensitively.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import idna
from email_validator import EmailSyntaxError
from email_validator.syntax import validate_email_local_part

from apps.core.exceptions import ApplicationError

MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64  # octets, RFC 5321 §4.5.3.1.1


class AddressError(ApplicationError):
    code = "invalid_address"


def normalize_domain(name: str, *, field: str = "domain") -> str:
    """Return the A-label form of a domain name, or raise AddressError with a reason."""
    raw = (name or "").strip().rstrip(".")
    if not raw:
        raise AddressError("A domain name is required.", fields={field: ["This field is required."]})
    try:
        ascii_name = idna.encode(raw, uts46=True, std3_rules=True, transitional=False).decode()
    except idna.IDNAError as exc:
        message = f"'{raw}' is not a valid domain name: {exc}."
        raise AddressError(message, fields={field: [message]}) from None
    ascii_name = ascii_name.lower()  # idna already refuses names over 253 octets
    if ascii_name.replace(".", "").isdigit():
        message = f"'{raw}' is an IP address, not a domain name."
        raise AddressError(message, fields={field: [message]})
    return ascii_name


def domain_to_unicode(ascii_name: str) -> str:
    try:
        return idna.decode(ascii_name)
    except idna.IDNAError:
        return ascii_name


@dataclass(frozen=True)
class Address:
    local_part: str
    domain: str  # A-label

    @property
    def value(self) -> str:
        return f"{self.local_part}@{self.domain}"

    @property
    def display(self) -> str:
        return f"{self.local_part}@{domain_to_unicode(self.domain)}"

    @property
    def is_catch_all(self) -> bool:
        return self.local_part == ""

    def __str__(self) -> str:
        return self.value


def parse_address(raw: str, *, field: str = "address", allow_catch_all: bool = False) -> Address:
    """Parse and normalise `local@domain`; `@domain` is a catch-all when allowed."""
    text = (raw or "").strip()
    local, sep, domain = text.rpartition("@")
    if not sep:
        message = f"'{text}' is not an email address: it has no @-sign."
        raise AddressError(message, fields={field: [message]})
    domain_ascii = normalize_domain(domain, field=field)
    if local == "":
        if allow_catch_all:
            return Address(local_part="", domain=domain_ascii)
        message = "An address needs a local part before the @-sign."
        raise AddressError(message, fields={field: [message]})
    try:
        result = validate_email_local_part(
            local, allow_smtputf8=True, allow_empty_local=False, quoted_local_part=False
        )
    except EmailSyntaxError as exc:
        message = f"'{text}' is not a valid address: {exc}"
        raise AddressError(message, fields={field: [message]}) from None
    local_part = unicodedata.normalize("NFC", result["local_part"].lower())
    if len(local_part.encode()) > MAX_LOCAL_PART_LENGTH:
        message = f"'{text}' has a local part longer than {MAX_LOCAL_PART_LENGTH} bytes."
        raise AddressError(message, fields={field: [message]})
    address = Address(local_part=local_part, domain=domain_ascii)
    if len(address.value.encode()) > MAX_ADDRESS_LENGTH:
        message = f"'{text}' is longer than {MAX_ADDRESS_LENGTH} bytes."
        raise AddressError(message, fields={field: [message]})
    return address
