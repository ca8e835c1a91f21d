"""Data classification: which kinds of personal data a message holds, and how many.

Detectors are plain regular expressions with checksums (Luhn, mod 97, ISO 7064): no model,
no network, deterministic. Each counts *distinct* values, so a card number quoted twice,
or a body sent both as text and HTML, counts once; that is also the number DLP policies
compare against their thresholds.

Categories (the keys of every result, also what DLP policies name):

- ``payment_card``: 13-19 digits, spaces or dashes allowed, Luhn-valid, known IIN prefix
- ``iban``: country code, length per country, mod-97 check
- ``us_ssn``: AAA-GG-SSSS without the never-issued ranges (000, 666, 9xx; 00; 0000)
- ``uk_nino``: UK National Insurance number (prefix rules of HMRC)
- ``de_tax_id``: German Steuer-ID, 11 digits, digit-repetition rule and ISO 7064 check
- ``fr_nir``: French INSEE number (NIR), 15 digits (Corsica 2A/2B), key = 97 - n mod 97
- ``email_list`` / ``phone_list``: bulk lists, counted only from `BULK_LIST_MIN` distinct
  addresses or E.164 numbers (a signature or a few Cc's are not a leak)
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TYPE_CHECKING

from django.db import transaction

if TYPE_CHECKING:
    from apps.mailboxes.services.messages import DeliveryContext

logger = logging.getLogger(__name__)

__all__ = [
    "BULK_LIST_MIN",
    "CATEGORIES",
    "classify_message",
    "classify_stage",
    "classify_text",
    "iban_is_valid",
    "luhn_is_valid",
]

BULK_LIST_MIN = 50
# Bounds: classification runs on the delivery path and inside the submission transaction.
MAX_RAW_BYTES = 10 * 1024 * 1024  # of the message parsed for text parts
MAX_TEXT_CHARS = 4 * 1024 * 1024  # of text scanned, body and attachments together
MAX_PARTS = 500
_MAX_RUN_GROUPS = 64  # digit groups in one run of "1234 5678 ..." tried as card windows

CATEGORIES: dict[str, str] = {
    "payment_card": "Payment card numbers",
    "iban": "IBANs",
    "us_ssn": "US social security numbers",
    "uk_nino": "UK National Insurance numbers",
    "de_tax_id": "German tax IDs (Steuer-ID)",
    "fr_nir": "French social security numbers (NIR)",
    "email_list": "Bulk e-mail address lists",
    "phone_list": "Bulk phone number lists",
}


# --- Payment cards ---------------------------------------------------------------------


def luhn_is_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _known_iin(number: str) -> bool:
    """Issuer prefixes of the networks in use; a Luhn-valid number with another prefix is
    far more likely an order or tracking number than a card."""
    two, four = int(number[:2]), int(number[:4])
    length = len(number)
    if number[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if two in (36, 38) or 300 <= int(number[:3]) <= 305:  # Diners Club
        return 14 <= length <= 19
    if 3528 <= four <= 3589:  # JCB
        return 16 <= length <= 19
    if four == 6011 or two == 65 or 644 <= int(number[:3]) <= 649:  # Discover
        return 16 <= length <= 19
    if two == 62:  # UnionPay
        return 16 <= length <= 19
    if two == 50 or 56 <= two <= 69:  # Maestro
        return 12 <= length <= 19
    return False


# A run of digit groups joined by single spaces or dashes, not glued to other digits.
_DIGIT_RUN = re.compile(r"(?<![\w-])\d+(?:[ -]\d+)*(?!\w)")
_SEPARATOR = re.compile(r"[ -]")


def _cards(text: str) -> tuple[set[str], list[tuple[int, int]]]:
    """The card numbers in `text`, and the digit runs they were found in."""
    found: set[str] = set()
    spans: list[tuple[int, int]] = []
    for match in _DIGIT_RUN.finditer(text):
        run = match.group()
        if len(run) < 13:
            continue
        groups = _SEPARATOR.split(run)[:_MAX_RUN_GROUPS]
        matched = False
        # Several cards can sit in one run ("4111 1111 1111 1111 5500 ..."): try each
        # window of whole groups, left to right, without overlap.
        start = 0
        while start < len(groups):
            taken = 0
            digits = ""
            for end in range(start, len(groups)):
                digits += groups[end]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_is_valid(digits) and _known_iin(digits):
                    found.add(digits)
                    matched = True
                    taken = end - start + 1
            start += taken or 1
        if matched:
            spans.append(match.span())
    return found, spans


# --- IBAN ------------------------------------------------------------------------------

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

# Country, check digits, then the BBAN in groups of (usually) four, spaces optional.
_IBAN = re.compile(r"\b([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})\b")


def iban_is_valid(value: str) -> bool:
    """Length for the country and the ISO 13616 mod-97 check; spaces ignored."""
    compact = value.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _ibans(text: str) -> tuple[set[str], list[tuple[int, int]]]:
    """The valid IBANs in `text`, and where they are (to keep their digit groups from
    being read as card numbers or IDs)."""
    found: set[str] = set()
    spans: list[tuple[int, int]] = []
    for match in _IBAN.finditer(text):
        country = match.group(1)
        length = IBAN_LENGTHS.get(country)
        if length is None:
            continue
        # The pattern may run on into the next word ("... 00 AND"): cut at the length
        # the country prescribes.
        compact = (match.group(1) + match.group(2) + match.group(3).replace(" ", ""))[:length]
        if len(compact) == length and iban_is_valid(compact):
            found.add(compact)
            spans.append(match.span())
    return found, spans


# --- National identifiers --------------------------------------------------------------

_US_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)(\d{3})-(?!00)(\d{2})-(?!0000)(\d{4})(?![\d-])")

# HMRC: first letter not D F I Q U V, second not D F I O Q U V, some pairs never issued.
_UK_NINO = re.compile(
    r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b"
)

_DE_TAX_ID = re.compile(r"(?<![\d])([1-9]\d) ?(\d{3}) ?(\d{3}) ?(\d{3})(?![\d])")

_FR_NIR = re.compile(
    r"(?<![\dA-Z])([1-478]) ?(\d{2}) ?(0[1-9]|1[0-2]|[2-9]\d) ?(\d{2}|2[AB]) ?(\d{3}) ?(\d{3}) ?(\d{2})(?!\d)"
)


def _us_ssns(text: str) -> set[str]:
    return {"".join(match.groups()) for match in _US_SSN.finditer(text)}


def _uk_ninos(text: str) -> set[str]:
    return {"".join(match.groups()) for match in _UK_NINO.finditer(text)}


def de_tax_id_is_valid(digits: str) -> bool:
    """Steuer-ID: in the first ten digits exactly one digit repeats (twice or three times),
    and the eleventh is the ISO 7064 MOD 11,10 check digit."""
    if len(digits) != 11 or not digits.isdigit() or digits[0] == "0":
        return False
    counts = sorted(Counter(digits[:10]).values(), reverse=True)
    if counts[0] not in (2, 3) or (len(counts) > 1 and counts[1] != 1):
        return False
    product = 10
    for char in digits[:10]:
        total = (int(char) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    return (0 if check == 10 else check) == int(digits[10])


def _de_tax_ids(text: str) -> set[str]:
    return {
        digits for match in _DE_TAX_ID.finditer(text) if de_tax_id_is_valid(digits := "".join(match.groups()))
    }


def fr_nir_is_valid(value: str) -> bool:
    """NIR: the key is 97 minus the first 13 characters mod 97, Corsica's departments
    2A and 2B counted as 19 and 18."""
    if len(value) != 15:
        return False
    department = {"2A": "19", "2B": "18"}.get(value[5:7], value[5:7])
    body = value[:5] + department + value[7:13]
    if not body.isdigit() or not value[13:].isdigit():
        return False
    return 97 - int(body) % 97 == int(value[13:])


def _fr_nirs(text: str) -> set[str]:
    return {value for match in _FR_NIR.finditer(text) if fr_nir_is_valid(value := "".join(match.groups()))}


# --- Bulk lists ------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
# E.164: "+" (or the international "00"), country code, up to 15 digits in all;
# single spaces, dots or dashes between digits are common in lists.
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)([1-9](?:[ .-]?\d){6,14})(?![\d])")


def _emails(text: str) -> set[str]:
    return {address.lower() for address in _EMAIL.findall(text)}


def _phones(text: str) -> set[str]:
    return {re.sub(r"\D", "", digits) for digits in _PHONE.findall(text)}


# --- Classifying -----------------------------------------------------------------------

_DETECTORS: dict[str, Callable[[str], set[str]]] = {
    "us_ssn": _us_ssns,
    "uk_nino": _uk_ninos,
    "de_tax_id": _de_tax_ids,
    "fr_nir": _fr_nirs,
}


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    pieces, last = [], 0
    for start, end in spans:
        pieces += [text[last:start], " " * (end - start)]
        last = end
    return "".join([*pieces, text[last:]])


def classify_text(text: str, *, bulk_list_min: int = BULK_LIST_MIN) -> dict[str, int]:
    """Distinct values found per category; categories with none are left out."""
    text = text[:MAX_TEXT_CHARS]
    result: dict[str, int] = {}
    # IBANs, then cards, claim their text first: their digit groups must not be counted
    # again as a card, a NIR or a tax ID (a 15-digit Amex number can pass the NIR key).
    for name, detect in (("iban", _ibans), ("payment_card", _cards)):
        values, spans = detect(text)
        if values:
            result[name] = len(values)
            text = _blank(text, spans)
    result.update({name: len(values) for name, detect in _DETECTORS.items() if (values := detect(text))})
    for name, detect in (("email_list", _emails), ("phone_list", _phones)):
        count = len(detect(text))
        if count >= bulk_list_min:
            result[name] = count
    return result


_parser = BytesParser(policy=policy.default)
# Attachments scanned as text: everything text/*, and spreadsheets exported as CSV, which
# clients label in many ways.
_CSV_TYPES = {"application/csv", "application/vnd.ms-excel", "application/x-csv", "text/x-csv"}
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")


def _part_text(part: EmailMessage) -> str | None:
    content_type = part.get_content_type()
    filename = (part.get_filename() or "").lower()
    if not (
        part.get_content_maintype() == "text"
        or content_type in _CSV_TYPES
        or filename.endswith(_TEXT_SUFFIXES)
    ):
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload[:MAX_TEXT_CHARS].decode(charset, errors="replace")
    except LookupError:  # an unknown charset name
        text = payload[:MAX_TEXT_CHARS].decode("utf-8", errors="replace")
    if content_type == "text/html":
        import nh3

        text = nh3.clean(text, tags=set())
    return text


def _texts(raw: bytes) -> Iterator[str]:
    try:
        message = _parser.parsebytes(raw[:MAX_RAW_BYTES])
    except Exception:  # noqa: BLE001 - unparseable mail is scanned as it is
        yield raw[:MAX_TEXT_CHARS].decode("utf-8", errors="replace")
        return
    for index, part in enumerate(message.walk()):
        if index >= MAX_PARTS:
            break
        if part.is_multipart():
            continue
        try:
            text = _part_text(part)
        except Exception:  # noqa: BLE001 - one broken part must not hide the others
            logger.debug("unreadable MIME part %d", index)
            continue
        if text:
            yield text


def classify_message(*, raw: bytes, bulk_list_min: int = BULK_LIST_MIN) -> dict[str, int]:
    """Classify a raw RFC 5322 message: its text and HTML bodies and its text attachments
    (text/*, CSV), bounded to the first MAX_TEXT_CHARS characters in all. Never raises on
    malformed mail."""
    pieces: list[str] = []
    budget = MAX_TEXT_CHARS
    for text in _texts(raw):
        pieces.append(text[:budget])
        budget -= len(pieces[-1])
        if budget <= 0:
            break
    return classify_text("\n".join(pieces), bulk_list_min=bulk_list_min)


def message_classification_store(*, message_id: int, categories: dict[str, int]) -> None:
    """Record what a message holds (replacing an earlier result); nothing found leaves
    no row, which keeps the table as small as the mail that matters."""
    from apps.compliance.models import MessageClassification

    if not categories:
        MessageClassification.objects.filter(message_id=message_id).delete()
        return
    MessageClassification.objects.update_or_create(message_id=message_id, defaults={"categories": categories})


def classify_stage(context: DeliveryContext) -> None:
    """Delivery stage: classify the message and store the result when it is filed.

    Never raises: classification is information, not a reason to delay mail. Held
    (quarantined) messages run no filing hooks, so they are classified if released and
    redelivered, not before."""
    try:
        categories = classify_message(raw=context.raw)
    except Exception:  # a detector bug must not stop delivery
        logger.exception("classifying message %s failed", context.message.queue_id)
        return
    if not categories:
        return

    def store(ctx: DeliveryContext) -> None:
        try:
            # A savepoint: a failed write must not break the filing transaction around it.
            with transaction.atomic():
                message_classification_store(message_id=ctx.message.pk, categories=categories)
        except Exception:  # likewise for storing the result
            logger.exception("storing the classification of message %s failed", ctx.message.queue_id)

    context.on_commit.append(store)
