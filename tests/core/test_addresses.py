"""Address and domain syntax: the one normalisation every app relies on."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.core.addresses import (
    MAX_ADDRESS_LENGTH,
    MAX_LOCAL_PART_LENGTH,
    Address,
    AddressError,
    domain_to_unicode,
    normalize_domain,
    parse_address,
)
from apps.core.exceptions import ApplicationError

# --- normalize_domain ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("  example.com.  ", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),  # non-transitional: ß stays ß
        ("localhost", "localhost"),
        ("123.example", "123.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_normalize_domain_returns_lowercase_a_label(raw, expected):
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "required"),
        ("   ", "required"),
        (None, "required"),
        (".", "required"),
        ("-bad.com", "not a valid domain name"),
        ("bad-.com", "not a valid domain name"),
        ("a..b", "not a valid domain name"),
        ("under_score.com", "not a valid domain name"),
        ("exa mple.com", "not a valid domain name"),
        ("a" * 64 + ".com", "not a valid domain name"),
        ("xn--zz.com", "not a valid domain name"),
        ("1.2.3.4", "IP address"),
        ("10.0.0.1.", "IP address"),
        ("[127.0.0.1]", "not a valid domain name"),
        (".".join(["a" * 60] * 5), "too long"),
    ],
)
def test_normalize_domain_rejects_invalid_names_with_reason(raw, reason):
    with pytest.raises(AddressError) as excinfo:
        normalize_domain(raw)
    error = excinfo.value
    assert error.code == "invalid_address"
    assert reason in error.message
    assert error.fields["domain"]


def test_normalize_domain_reports_under_the_given_field():
    with pytest.raises(AddressError) as excinfo:
        normalize_domain("-bad.com", field="name")
    assert list(excinfo.value.fields) == ["name"]


def test_address_error_is_an_application_error():
    assert issubclass(AddressError, ApplicationError)
    assert AddressError("x").status_code == 400


@pytest.mark.parametrize(
    ("ascii_name", "expected"),
    [("xn--bcher-kva.example", "bücher.example"), ("plain.test", "plain.test"), ("xn--zz.bad", "xn--zz.bad")],
)
def test_domain_to_unicode_falls_back_to_input(ascii_name, expected):
    assert domain_to_unicode(ascii_name) == expected


# --- parse_address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "local_part", "domain"),
    [
        ("alice@alpha.test", "alice", "alpha.test"),
        ("  Alice@Alpha.TEST ", "alice", "alpha.test"),
        ("first.last+tag@alpha.test", "first.last+tag", "alpha.test"),
        ("ÜNÏ@alpha.test", "ünï", "alpha.test"),
        ("u\u0308ser@alpha.test", "üser", "alpha.test"),  # NFC
        ("anna@Bücher.example", "anna", "xn--bcher-kva.example"),
        ("weird@name@alpha.test", None, None),
    ],
)
def test_parse_address_normalises(raw, local_part, domain):
    if local_part is None:
        with pytest.raises(AddressError):
            parse_address(raw)
        return
    address = parse_address(raw)
    assert (address.local_part, address.domain) == (local_part, domain)
    assert address.value == f"{local_part}@{domain}"
    assert str(address) == address.value


def test_parse_address_display_uses_u_label():
    address = parse_address("anna@xn--bcher-kva.example")
    assert address.display == "anna@bücher.example"
    assert address.is_catch_all is False


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "no @-sign"),
        ("alice", "no @-sign"),
        ("alice@", "required"),
        ("@alpha.test", "needs a local part"),
        ("two words@alpha.test", "not a valid address"),
        (".dot@alpha.test", "not a valid address"),
        ("dot.@alpha.test", "not a valid address"),
        ("a..b@alpha.test", "not a valid address"),
        ('"quoted"@alpha.test', "not a valid address"),
        ("alice@-bad.test", "not a valid domain name"),
        ("alice@1.2.3.4", "IP address"),
        ("a" * 65 + "@alpha.test", "longer than 64 bytes"),
        ("ü" * 33 + "@alpha.test", "longer than 64 bytes"),  # 66 octets in UTF-8
    ],
)
def test_parse_address_rejects_invalid_with_reason(raw, reason):
    with pytest.raises(AddressError) as excinfo:
        parse_address(raw)
    assert reason in excinfo.value.message
    assert excinfo.value.fields["address"]


def test_parse_address_rejects_addresses_longer_than_254_bytes():
    local = "a" * 60
    domain = ".".join(["b" * 61] * 4) + ".test"  # 252 characters: a valid domain
    raw = f"{local}@{domain}"
    assert len(raw.encode()) > MAX_ADDRESS_LENGTH
    with pytest.raises(AddressError) as excinfo:
        parse_address(raw)
    assert f"{MAX_ADDRESS_LENGTH} bytes" in excinfo.value.message


def test_parse_address_accepts_local_part_of_exactly_64_bytes():
    assert parse_address("a" * MAX_LOCAL_PART_LENGTH + "@alpha.test").local_part == "a" * 64


def test_parse_address_composed_and_decomposed_forms_are_one_address():
    assert parse_address("u\u0308ser@alpha.test") == parse_address("\u00fcser@alpha.test")


def test_parse_address_catch_all_only_when_allowed():
    with pytest.raises(AddressError):
        parse_address("@Alpha.test")
    address = parse_address("@Alpha.test", allow_catch_all=True)
    assert address == Address(local_part="", domain="alpha.test")
    assert address.is_catch_all and address.value == "@alpha.test"


def test_parse_address_reports_under_the_given_field():
    with pytest.raises(AddressError) as excinfo:
        parse_address("nope", field="destinations")
    assert list(excinfo.value.fields) == ["destinations"]


# --- Properties ------------------------------------------------------------------------

_local = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "M"]), min_size=1, max_size=20
)
_label = st.text(alphabet=st.characters(categories=["L", "N"]) | st.just("-"), min_size=1, max_size=12)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)
address_like = st.one_of(
    st.text(),
    st.emails(),
    st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain),
    st.lists(
        st.sampled_from(
            ["a", "Z", "0", "-", ".", "@", "xn--", "ü", "\u200d", '"', " ", "\x00", "[", "\ud800"]
        )
    ).map("".join),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=address_like, allow_catch_all=st.booleans())
def test_parse_address_never_raises_anything_but_address_error(raw, allow_catch_all):
    try:
        address = parse_address(raw, allow_catch_all=allow_catch_all)
    except AddressError as exc:
        assert exc.fields and exc.message
        return
    # Whatever it accepts is normalised: ASCII domain, idempotent, within the length limit.
    assert address.domain.isascii() and address.domain == address.domain.lower()
    assert len(address.value.encode()) <= MAX_ADDRESS_LENGTH or address.is_catch_all
    assert len(address.local_part.encode()) <= MAX_LOCAL_PART_LENGTH
    assert parse_address(address.value, allow_catch_all=allow_catch_all) == address
    assert parse_address(address.display, allow_catch_all=allow_catch_all) == address


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.text(), _domain))
def test_normalize_domain_never_raises_anything_but_address_error(raw):
    try:
        name = normalize_domain(raw)
    except AddressError:
        return
    assert name.isascii() and name == name.lower()
    assert normalize_domain(name) == name
