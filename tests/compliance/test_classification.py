"""Detectors of personal data (cards, IBANs, national IDs, bulk lists), with property
tests for the checksums, and classification of whole messages in the delivery pipeline."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.compliance.models import MessageClassification
from apps.compliance.services.classification import (
    IBAN_LENGTHS,
    classify_message,
    classify_text,
    iban_is_valid,
    luhn_is_valid,
)
from apps.mailboxes import services as mail_services
from apps.mailboxes.models import Message

PREFIXES = ["4", "51", "55", "2221", "34", "37", "6011", "65", "3530", "62"]
LENGTHS = {"34": 15, "37": 15}


def luhn_complete(partial: str) -> str:
    """`partial` plus the check digit that makes it Luhn-valid."""
    for digit in "0123456789":
        if luhn_is_valid(partial + digit):
            return partial + digit
    raise AssertionError("unreachable")


def iban_with_check(country: str, bban: str) -> str:
    numeric = int("".join(str(int(char, 36)) for char in bban + country + "00"))
    return f"{country}{98 - numeric % 97:02d}{bban}"


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(PREFIXES))
    length = LENGTHS.get(prefix, 16)
    body = draw(st.text("0123456789", min_size=length - len(prefix) - 1, max_size=length - len(prefix) - 1))
    return luhn_complete(prefix + body)


def spaced(number: str, separator: str) -> str:
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


@settings(max_examples=200, deadline=None)
@given(number=card_numbers(), separator=st.sampled_from(["", " ", "-"]))
def test_valid_card_numbers_are_found(number: str, separator: str) -> None:
    assert classify_text(f"Please charge {spaced(number, separator)} today.") == {"payment_card": 1}


@settings(max_examples=200, deadline=None)
@given(number=card_numbers(), delta=st.integers(min_value=1, max_value=9))
def test_card_numbers_with_a_bad_check_digit_are_not_found(number: str, delta: int) -> None:
    broken = number[:-1] + str((int(number[-1]) + delta) % 10)
    assert not luhn_is_valid(broken)
    assert "payment_card" not in classify_text(f"ref {broken} end")


@settings(max_examples=200, deadline=None)
@given(digits=st.text("0123456789", min_size=13, max_size=19))
def test_random_digits_are_cards_only_when_luhn_valid(digits: str) -> None:
    found = classify_text(f"x {digits} y").get("payment_card", 0)
    if not luhn_is_valid(digits):
        assert found == 0


@settings(max_examples=150, deadline=None)
@given(
    country=st.sampled_from(["DE", "FR", "GB", "NL", "ES", "IT", "BE", "CH"]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_generated_ibans_validate_and_are_found(country: str, seed: int) -> None:
    rng = random.Random(seed)
    length = IBAN_LENGTHS[country] - 4
    # Letters only where those countries put the bank code (GB, NL); digits otherwise.
    letters = {"GB": 4, "NL": 4}.get(country, 0)
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters)) + "".join(
        rng.choice("0123456789") for _ in range(length - letters)
    )
    iban = iban_with_check(country, bban)
    assert iban_is_valid(iban)
    grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    assert classify_text(f"Pay to {grouped} please") == {"iban": 1}
    broken = iban[:4] + ("1" if iban[4] != "1" else "2") + iban[5:]
    assert not iban_is_valid(broken)


def test_known_ibans() -> None:
    assert iban_is_valid("DE89 3704 0044 0532 0130 00")
    assert iban_is_valid("GB82WEST12345698765432")
    assert iban_is_valid("FR1420041010050500013M02606")
    assert not iban_is_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_is_valid("DE89 3704 0044 0532 0130")  # too short for Germany


def test_iban_followed_by_a_word_in_capitals_is_found() -> None:
    assert classify_text("IBAN DE89 3704 0044 0532 0130 00 AND THEN") == {"iban": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SSN 123-45-6789", 1),
        ("SSN 000-12-3456", 0),
        ("SSN 666-12-3456", 0),
        ("SSN 912-34-5678", 0),
        ("SSN 123-00-4567", 0),
        ("SSN 123-45-0000", 0),
        ("phone 0123-45-6789-11", 0),
    ],
)
def test_us_ssn(text: str, expected: int) -> None:
    assert classify_text(text).get("us_ssn", 0) == expected


def test_national_ids() -> None:
    text = (
        "NINO AB 12 34 56 C and QQ123456A (never issued prefix letters) "
        "Steuer-ID 86095742719, bad 86095742718; "
        "NIR 1 84 12 76 451 089 46 and 2 55 08 2A 168 025 xx, bad 1 84 12 76 451 089 47"
    )
    assert classify_text(text) == {"uk_nino": 1, "de_tax_id": 1, "fr_nir": 1}


def test_corsican_nir_is_valid() -> None:
    # 2A counts as 19 for the key: 97 - (1851019123456 % 97)
    key = 97 - 1851019123456 % 97
    assert classify_text(f"NIR 1 85 10 2A 123 456 {key:02d}") == {"fr_nir": 1}


def test_bulk_lists_count_only_from_the_threshold() -> None:
    emails = "\n".join(f"user{i}@example.test" for i in range(49))
    phones = "\n".join(f"+44 20 7946 {i:04d}" for i in range(60))
    assert classify_text(emails) == {}
    assert classify_text(emails + "\nlast@example.test") == {"email_list": 50}
    assert classify_text(phones) == {"phone_list": 60}
    assert classify_text(emails, bulk_list_min=10) == {"email_list": 49}


def test_repeated_values_count_once() -> None:
    assert classify_text("4111111111111111 and again 4111 1111 1111 1111") == {"payment_card": 1}


def test_several_cards_in_one_run_of_digit_groups() -> None:
    assert classify_text("4111 1111 1111 1111 5500 0000 0000 0004") == {"payment_card": 2}


def test_plain_text_has_no_findings() -> None:
    assert classify_text("Meeting on 2024-05-01 at 10:30, room 12, order 1234567.") == {}


CSV_MAIL = (
    b"From: <a@alpha.test>\r\nTo: <b@remote.test>\r\nSubject: list\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b'--b1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n'
    b"--b2\r\nContent-Type: text/plain\r\n\r\nCard 4111 1111 1111 1111 on file.\r\n"
    b"--b2\r\nContent-Type: text/html\r\n\r\n<p>Card <b>4111 1111 1111 1111</b> on file.</p>\r\n"
    b"--b2--\r\n"
    b'--b1\r\nContent-Type: application/vnd.ms-excel\r\nContent-Disposition: attachment; filename="cards.csv"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + __import__("base64").encodebytes(b"card\r\n5500000000000004\r\n378282246310005\r\n")
    + b'--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="x.bin"\r\n\r\n'
    b"6011111111111117\r\n--b1--\r\n"
)


def test_classify_message_reads_bodies_and_csv_attachments_but_not_binaries() -> None:
    # The card in both text and HTML counts once; two in the CSV; none from the binary.
    assert classify_message(raw=CSV_MAIL) == {"payment_card": 3}


def test_classify_message_survives_garbage() -> None:
    assert classify_message(raw=b"\xff\xfe\x00garbage 4111111111111111") == {"payment_card": 1}
    assert classify_message(raw=b"") == {}


@pytest.mark.django_db
def test_delivery_stage_stores_a_classification(mailbox_a, django_capture_on_commit_callbacks):
    raw = CSV_MAIL.replace(b"b@remote.test", b"alice@alpha.test")
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from="a@alpha.test",
        recipients=("alice@alpha.test",),
        raw=raw,
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])

    assert mail_services.message_deliver(message_id=message.pk)

    message.refresh_from_db()
    assert message.state == Message.State.DELIVERED
    assert MessageClassification.objects.get(message=message).categories == {"payment_card": 3}


@pytest.mark.django_db
def test_delivery_stage_stores_nothing_for_clean_mail(mailbox_a):
    raw = b"From: <a@alpha.test>\r\nTo: <alice@alpha.test>\r\nSubject: hi\r\n\r\nJust hello.\r\n"
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from="a@alpha.test",
        recipients=("alice@alpha.test",),
        raw=raw,
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])

    assert mail_services.message_deliver(message_id=message.pk)

    assert not MessageClassification.objects.exists()


@pytest.mark.django_db
def test_delivery_stage_never_fails_delivery(mailbox_a, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("detector bug")

    monkeypatch.setattr("apps.compliance.services.classification.classify_message", broken)
    raw = b"From: <a@alpha.test>\r\nTo: <alice@alpha.test>\r\nSubject: hi\r\n\r\n4111111111111111\r\n"
    incoming = mail_services.IncomingMessage(
        queue_id=mail_services.new_queue_id(),
        mail_from="a@alpha.test",
        recipients=("alice@alpha.test",),
        raw=raw,
    )
    (message,) = mail_services.messages_accept(incoming=[incoming])

    assert mail_services.message_deliver(message_id=message.pk)
    assert not MessageClassification.objects.exists()


def test_a_card_number_is_not_counted_again_as_a_national_id() -> None:
    # Luhn-valid Amex number whose digits also pass the French NIR key.
    assert classify_text("Please charge 376739183713055 today.") == {"payment_card": 1}
