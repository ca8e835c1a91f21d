import pytest
from django.core.cache import cache

from apps.threats.pipeline import ScanContext, pipeline_run
from apps.threats.stages.urls import link_host, registrable_domain, skeleton, urls_stage
from tests.threats import mailgen

pytestmark = pytest.mark.django_db

CYRILLIC_ALPHA = "\u0430lpha.test"  # the first letter is Cyrillic
CYRILLIC_ALPHA_ACE = "xn--lpha-43d.test"


@pytest.fixture(autouse=True)
def fresh_dns_cache():
    # DNS answers are cached in the Django cache; each test serves its own zone.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def uribl(dns_zone, settings):
    settings.A3_URIBL_ZONES = ["uribl.test"]
    return dns_zone


def scan(raw: bytes, **context):
    return pipeline_run(ScanContext(raw=raw, **context), stages=[urls_stage])


def link_page(*hrefs: str) -> bytes:
    anchors = "".join(f'<p><a href="{href}">click here</a></p>' for href in hrefs)
    return mailgen.html(f"<html><body>{anchors}</body></html>")


# --- URI block lists ----------------------------------------------------------------------


def test_a_link_to_a_listed_domain_scores(uribl):
    uribl.add("evil.example.uribl.test", "A", "127.0.0.2")

    result = scan(link_page("https://www.evil.example/login?x=1"))

    assert result.score == 4
    assert result.reasons == ["Link to evil.example, which is listed on the block list uribl.test"]
    assert result.stages[0]["data"]["listed"] == ["evil.example@uribl.test"]


def test_each_listing_zone_adds_its_score(uribl, settings):
    settings.A3_URIBL_ZONES = ["uribl.test", "dbl.test"]
    uribl.add("evil.example.uribl.test", "A", "127.0.0.2")
    uribl.add("evil.example.dbl.test", "A", "127.0.1.2")

    result = scan(mailgen.plain(body="Go to http://evil.example/now\n"))

    assert result.score == 8
    assert len(result.reasons) == 2


def test_the_registrable_domain_is_looked_up(uribl):
    uribl.add("evil.co.uk.uribl.test", "A", "127.0.0.2")

    result = scan(mailgen.plain(body="see https://a.b.evil.co.uk/path\n"))

    assert result.score == 4
    assert result.stages[0]["data"]["domains"] == ["evil.co.uk"]


def test_unlisted_domains_do_not_score(uribl):
    uribl.add("evil.example.uribl.test", "A", "127.0.0.2")

    result = scan(link_page("https://fine.example/", "https://other.example/a"))

    assert result.score == 0
    assert result.stages[0]["data"]["domains"] == ["fine.example", "other.example"]


def test_a_refused_query_is_not_a_listing(uribl):
    uribl.add("evil.example.uribl.test", "A", "127.0.0.1")

    result = scan(link_page("https://evil.example/"))

    assert result.score == 0


def test_a_dns_failure_adds_nothing_and_is_recorded(uribl):
    uribl.servfail.add("evil.example.uribl.test")

    result = scan(link_page("https://evil.example/"))

    assert result.score == 0
    assert result.reasons == []
    assert result.failed_stages == []
    assert "evil.example.uribl.test" in result.stages[0]["data"]["dns_errors"][0]


def test_the_host_after_userinfo_is_the_one_checked(uribl):
    uribl.add("evil.example.uribl.test", "A", "127.0.0.2")

    result = scan(link_page("http://alpha.test@evil.example/"))

    assert result.score == 4


def test_our_own_domains_are_not_looked_up(uribl, domain_a):
    uribl.add("alpha.test.uribl.test", "A", "127.0.0.2")

    result = scan(link_page("https://www.alpha.test/"))

    assert result.score == 0
    assert result.stages[0]["data"]["domains"] == []


def test_links_in_attachments_are_not_checked(uribl):
    uribl.add("evil.example.uribl.test", "A", "127.0.0.2")
    raw = mailgen.with_attachment("links.txt", b"http://evil.example/", "text/plain")

    result = scan(raw)

    assert result.score == 0


# --- IP address links ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://192.0.2.1/login", "http://3221225985/login", "http://[2001:db8::1]/x"]
)
def test_a_link_to_an_ip_address_scores(url):
    result = scan(link_page(url))

    assert result.score == 1.5
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith("Link to a bare IP address (")


def test_a_decimal_ip_link_is_shown_as_an_address():
    result = scan(mailgen.plain(body="http://3221225985/\n"))

    assert result.reasons == ["Link to a bare IP address (192.0.2.1) instead of a domain name"]


# --- Look-alikes of our domains -----------------------------------------------------------


def test_a_punycode_homograph_of_our_domain_scores(domain_a):
    result = scan(link_page(f"https://{CYRILLIC_ALPHA_ACE}/signin"))

    assert result.score == 5
    assert result.reasons == [f"Link to {CYRILLIC_ALPHA_ACE} (looks like alpha.test)"]


def test_a_unicode_homograph_in_html_scores(domain_a):
    result = scan(link_page(f"https://login.{CYRILLIC_ALPHA}/"))

    assert result.score == 5
    assert result.reasons == [f"Link to login.{CYRILLIC_ALPHA_ACE} (looks like alpha.test)"]


@pytest.mark.parametrize("host", ["a1pha.test", "alpba.test", "xn--alph-83d.test"])
def test_near_copies_of_our_domain_score(domain_a, host):
    result = scan(mailgen.plain(body=f"Sign in at https://{host}/\n"))

    assert result.reasons == [f"Link to {host} (looks like alpha.test)"]


@pytest.mark.parametrize("host", ["alpha.test", "mail.alpha.test", "beta.example", "alphabet.test"])
def test_our_domains_and_unrelated_ones_do_not_score(domain_a, host):
    result = scan(mailgen.plain(body=f"https://{host}/\n"))

    assert result.score == 0


def test_a_sender_domain_that_imitates_ours_scores(domain_a):
    result = scan(mailgen.plain(sender=f"ceo@{CYRILLIC_ALPHA_ACE}"))

    assert result.score == 5
    assert result.reasons == [f"Sender domain {CYRILLIC_ALPHA_ACE} (looks like alpha.test)"]


def test_lookalike_scores_are_capped(domain_a):
    hosts = ["a1pha.test", "alpba.test", CYRILLIC_ALPHA_ACE]

    result = scan(link_page(*(f"https://{host}/" for host in hosts)))

    assert len(result.reasons) == 3
    assert result.score == 10


# --- Extraction ---------------------------------------------------------------------------


def test_links_are_taken_from_attributes_text_and_meta_refresh():
    html = (
        '<html><head><meta http-equiv="refresh" content="0;url=https://refresh.example/"></head>'
        '<body><img src="https://img.example/a.png"><form action="https://form.example/post"></form>'
        "Visit www.text.example today. <a href='https://href.example/?a=1&amp;b=2'>x</a>"
        '<a href="mailto:x@mail.example">mail</a><a href="/relative">rel</a></body></html>'
    )

    result = scan(mailgen.html(html, text_body="See http://plain.example/ too\n"))

    assert sorted(result.stages[0]["data"]["domains"]) == [
        "form.example",
        "href.example",
        "img.example",
        "plain.example",
        "refresh.example",
        "text.example",
    ]


def test_a_flood_of_links_is_bounded():
    body = "".join(f"http://host{i}.example/ " for i in range(10_000))

    result = scan(mailgen.plain(body=body))

    assert result.failed_stages == []
    assert result.stages[0]["data"]["links"] == 500


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://User:pw@Example.COM:8080/x", "example.com"),
        ("http://evil.example\\@alpha.test/", "evil.example"),
        ("www.example.org/path", "www.example.org"),
        ("mailto:someone@example.org", None),
        ("javascript:alert(1)", None),
        ("http://[bad", None),
    ],
)
def test_link_host(url, host):
    assert link_host(url) == host


def test_registrable_domain_and_skeleton():
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("www.alpha.test") == "alpha.test"
    assert skeleton("\u0440\u0430y\u0440\u0430l.com") == skeleton("paypal.com")
    assert skeleton("rnicrosoft.com") == skeleton("microsoft.com")
    assert skeleton("example.com") != skeleton("exarnple.org")
