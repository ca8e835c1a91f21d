"""DKIM services and dashboard pages: keys, their DNS records and publication check,
rotation, and signatures verified by dkimpy against keys served by a real DNS server."""

from __future__ import annotations

import re

import dkim
import pytest
import time_machine
from django.contrib.messages import get_messages

from apps.alerts.models import Alert
from apps.core.exceptions import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from apps.core.secrets import secret_decrypt
from apps.relay import services
from apps.relay.dns import txt_records
from apps.relay.models import DkimKey

pytestmark = pytest.mark.django_db

RSA = DkimKey.Algorithm.RSA
ED25519 = DkimKey.Algorithm.ED25519
HX = {"HTTP_HX_REQUEST": "true"}

MESSAGE = (
    b"From: Alice <alice@alpha.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <figures-1@alpha.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Received: from client by mx.alpha.test\r\n"
    b"\r\n"
    b"The figures are attached.\r\n"
    b"-- \r\n"
    b"Alice\r\n"
)


def dns_lookup(name: bytes, timeout: int = 5) -> bytes:
    """dkimpy's dnsfunc, answered through our resolver (A3_DNS_NAMESERVERS -> dns_zone)."""
    records = txt_records(name.decode().rstrip("."))
    return records[0].encode() if records else b""


def publish(dns_zone, key: DkimKey) -> None:
    name, value = services.dkim_dns_record(key)
    dns_zone.txt(name, value)


def signed(raw: bytes = MESSAGE, domain: str = "alpha.test") -> bytes:
    return services.dkim_sign(raw=raw, domain=domain) + raw


def signature_tags(message: bytes) -> dict[str, str]:
    header = message.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = re.sub(r"\r\n[ \t]+", " ", header)
    line = next(line for line in unfolded.split("\r\n") if line.startswith("DKIM-Signature:"))
    value = line.split(":", 1)[1]
    return {k.strip(): "".join(v.split()) for k, _, v in (part.partition("=") for part in value.split(";"))}


# --- Keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "k_tag"), [(RSA, "rsa"), (ED25519, "ed25519")])
def test_dkim_key_create_stores_encrypted_key_and_publishable_record(superadmin, domain_a, algorithm, k_tag):
    with time_machine.travel("2026-03-04 12:00:00+00:00", tick=False):
        key = services.dkim_key_create(actor=superadmin, domain=domain_a, algorithm=algorithm)

    stored = DkimKey.objects.values_list("private_key", flat=True).get(pk=key.pk)
    assert stored.startswith("enc:")
    assert "PRIVATE KEY" not in stored
    assert secret_decrypt(stored).startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert key.selector == "a3-20260304"
    assert key.is_active and key.retired_at is None
    assert services.dkim_dns_record(key) == (
        "a3-20260304._domainkey.alpha.test",
        f"v=DKIM1; k={k_tag}; p={key.public_key}",
    )
    if algorithm == ED25519:
        assert len(key.public_key) == 44  # 32 raw bytes, RFC 8463


def test_dkim_key_create_second_key_is_pending_with_suffixed_selector(superadmin, domain_a):
    with time_machine.travel("2026-03-04 12:00:00+00:00", tick=False):
        first = services.dkim_key_create(actor=superadmin, domain=domain_a)
        second = services.dkim_key_create(actor=superadmin, domain=domain_a, algorithm=ED25519)
        third = services.dkim_key_create(actor=superadmin, domain=domain_a, algorithm=ED25519)

    assert [first.selector, second.selector, third.selector] == [
        "a3-20260304",
        "a3-20260304-2",
        "a3-20260304-3",
    ]
    assert DkimKey.objects.get(pk=first.pk).is_active
    assert not second.is_active and second.retired_at is None
    assert services.dkim_key_state(second) == "pending"
    assert Alert.objects.filter(kind="relay.dkim_activated").count() == 1  # only the first activated


def test_dkim_key_create_takes_a_given_selector_lowercased(superadmin, domain_a):
    key = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="Mail2026.Eu")
    assert key.selector == "mail2026.eu"


@pytest.mark.parametrize("selector", ["", "-bad", "bad-", "has space", "under_score", "x" * 64, "a..b"])
def test_dkim_key_create_refuses_selector_that_is_not_a_dns_label(superadmin, domain_a, selector):
    with pytest.raises(ApplicationError) as caught:
        services.dkim_key_create(actor=superadmin, domain=domain_a, selector=selector)
    assert caught.value.code == "invalid_selector" and "selector" in caught.value.fields
    assert not DkimKey.objects.exists()


def test_dkim_key_create_refuses_taken_selector_and_unknown_algorithm(superadmin, domain_a):
    services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s1")
    with pytest.raises(ConflictError) as caught:
        services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s1")
    assert caught.value.code == "selector_taken"
    with pytest.raises(ApplicationError) as caught:
        services.dkim_key_create(actor=superadmin, domain=domain_a, algorithm="rsa-sha1")
    assert caught.value.code == "invalid_algorithm"
    assert DkimKey.objects.count() == 1


def test_dkim_key_services_refuse_other_domains_and_mailbox_users(domain_a, admin_a, admin_b, user_a):
    key = services.dkim_key_create(actor=admin_a, domain=domain_a)
    with pytest.raises(NotFoundError):
        services.dkim_key_create(actor=admin_b, domain=domain_a)
    with pytest.raises(NotFoundError):
        services.dkim_key_activate(actor=admin_b, key=key)
    with pytest.raises(NotFoundError):
        services.dkim_key_delete(actor=admin_b, key=key)
    with pytest.raises(PermissionDeniedError):  # sees the domain through a mailbox, may not manage it
        services.dkim_key_create(actor=user_a, domain=domain_a)
    with pytest.raises(NotFoundError):
        services.dkim_key_get(actor=admin_b, key_id=key.pk)
    assert list(services.dkim_key_list(actor=admin_b)) == []
    assert list(services.dkim_key_list(actor=user_a)) == []
    assert list(services.dkim_key_list(actor=admin_a)) == [key]
    assert DkimKey.objects.count() == 1


def test_dkim_key_activate_retires_previous_and_raises_alert(superadmin, domain_a):
    old = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="old")
    new = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="new")

    services.dkim_key_activate(actor=superadmin, key=new)

    old.refresh_from_db()
    new.refresh_from_db()
    assert new.is_active and new.retired_at is None
    assert not old.is_active and old.retired_at is not None
    assert services.dkim_key_state(old) == "retired"
    alert = Alert.objects.filter(kind="relay.dkim_activated").latest("id")
    assert alert.level == "info" and alert.domain_id == domain_a.pk
    assert alert.data["selector"] == "new" and alert.data["previous_selector"] == "old"
    # Activating the signer again is a no-op.
    services.dkim_key_activate(actor=superadmin, key=new)
    assert Alert.objects.filter(kind="relay.dkim_activated").count() == 2


def test_dkim_key_delete_refuses_active_key_while_others_exist(superadmin, domain_a):
    active = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="one")
    pending = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="two")

    with pytest.raises(ConflictError) as caught:
        services.dkim_key_delete(actor=superadmin, key=active)
    assert caught.value.code == "dkim_key_active"

    services.dkim_key_delete(actor=superadmin, key=pending)
    services.dkim_key_delete(actor=superadmin, key=active)  # the last key: signing stops
    assert not DkimKey.objects.exists()
    assert services.dkim_sign(raw=MESSAGE, domain="alpha.test") == b""


# --- Publication check ------------------------------------------------------------------


def test_dkim_check_published_reports_missing_published_and_mismatch(superadmin, domain_a, dns_zone):
    key = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s1")
    other = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s2", algorithm=ED25519)
    name, value = services.dkim_dns_record(key)

    missing = services.dkim_check_published(key)
    assert missing.state == services.PublishedState.MISSING and not missing.ok
    assert missing.name == name and missing.expected == value and missing.found == ()

    dns_zone.txt(name, value)
    published = services.dkim_check_published(key)
    assert published.state == services.PublishedState.PUBLISHED and published.ok
    assert published.found == (value,)

    dns_zone.set(
        other.selector + "._domainkey.alpha.test", "TXT", f'"v=DKIM1; k=ed25519; p={key.public_key[:40]}"'
    )
    mismatch = services.dkim_check_published(other)
    assert mismatch.state == services.PublishedState.MISMATCH
    assert "different key" in mismatch.detail


def test_dkim_check_published_tolerates_whitespace_and_flags_revoked_or_extra_records(
    superadmin, domain_a, dns_zone
):
    key = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s1")
    name, _ = services.dkim_dns_record(key)
    spaced = f"v=DKIM1 ; k=rsa ; p={key.public_key[:100]} {key.public_key[100:]}"
    dns_zone.txt(name, spaced)
    assert services.dkim_check_published(key).state == services.PublishedState.PUBLISHED

    dns_zone.txt(name, "v=DKIM1; k=rsa; p=")
    extra = services.dkim_check_published(key)
    assert extra.state == services.PublishedState.MISMATCH and "2 DKIM records" in extra.detail

    dns_zone.set(name, "TXT", '"v=DKIM1; k=rsa; p="')
    revoked = services.dkim_check_published(key)
    assert revoked.state == services.PublishedState.MISMATCH and "revoked" in revoked.detail


def test_dkim_check_published_reports_dns_error(superadmin, domain_a, dns_zone):
    key = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s1")
    dns_zone.servfail.add("s1._domainkey.alpha.test")
    status = services.dkim_check_published(key)
    assert status.state == services.PublishedState.DNS_ERROR and "s1._domainkey.alpha.test" in status.detail


# --- Signing ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [RSA, ED25519])
def test_dkim_sign_verifies_against_published_key(superadmin, domain_a, dns_zone, algorithm):
    key = services.dkim_key_create(actor=superadmin, domain=domain_a, algorithm=algorithm)
    publish(dns_zone, key)

    header = services.dkim_sign(raw=MESSAGE, domain="alpha.test")
    message = header + MESSAGE

    assert header.startswith(b"DKIM-Signature: ") and header.endswith(b"\r\n")
    assert b"\n" not in header.replace(b"\r\n", b"")  # folded with CRLF only
    assert dkim.verify(message, dnsfunc=dns_lookup)
    tags = signature_tags(message)
    assert tags["a"] == algorithm and tags["d"] == "alpha.test" and tags["s"] == key.selector
    assert tags["c"] == "relaxed/relaxed"
    assert tags["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "from",  # oversigned
    ]


@pytest.mark.parametrize("algorithm", [RSA, ED25519])
def test_dkim_sign_tampering_breaks_verification(superadmin, domain_a, dns_zone, algorithm):
    publish(dns_zone, services.dkim_key_create(actor=superadmin, domain=domain_a, algorithm=algorithm))
    message = signed()
    assert dkim.verify(message, dnsfunc=dns_lookup)

    assert not dkim.verify(message.replace(b"attached.", b"attacked."), dnsfunc=dns_lookup)
    assert not dkim.verify(message.replace(b"Quarterly", b"Annual"), dnsfunc=dns_lookup)
    # A second From added in transit: the oversigned From refuses it.
    head, body = message.split(b"\r\n\r\n", 1)
    assert not dkim.verify(head + b"\r\nFrom: mallory@evil.test\r\n\r\n" + body, dnsfunc=dns_lookup)


def test_dkim_sign_relaxed_canonicalisation_survives_header_rewrapping(superadmin, domain_a, dns_zone):
    publish(dns_zone, services.dkim_key_create(actor=superadmin, domain=domain_a))
    message = signed()
    rewrapped = message.replace(b"Subject: Quarterly figures", b"Subject:   Quarterly\r\n  figures")
    assert dkim.verify(rewrapped, dnsfunc=dns_lookup)


def test_dkim_sign_returns_nothing_without_active_key_or_from(superadmin, domain_a, domain_b):
    assert services.dkim_sign(raw=MESSAGE, domain="alpha.test") == b""
    services.dkim_key_create(actor=superadmin, domain=domain_a)
    assert services.dkim_sign(raw=MESSAGE, domain="beta.test") == b""
    assert services.dkim_sign(raw=MESSAGE, domain="nowhere.test") == b""
    assert services.dkim_sign(raw=MESSAGE, domain="not a domain") == b""
    without_from = MESSAGE.replace(b"From: Alice <alice@alpha.test>\r\n", b"")
    assert services.dkim_sign(raw=without_from, domain="alpha.test") == b""
    assert services.dkim_sign(raw=MESSAGE, domain="ALPHA.test.").startswith(b"DKIM-Signature:")


def test_dkim_rotation_keeps_old_key_listed_and_signs_with_new_selector(superadmin, domain_a, dns_zone):
    old = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="old")
    publish(dns_zone, old)

    new = services.dkim_key_rotate(actor=superadmin, domain=domain_a, algorithm=ED25519)
    assert not new.is_active and new.algorithm == ED25519
    assert signature_tags(signed())["s"] == "old"  # pending keys do not sign

    publish(dns_zone, new)
    assert services.dkim_check_published(new).ok
    services.dkim_key_activate(actor=superadmin, key=new)

    message = signed()
    assert signature_tags(message)["s"] == new.selector
    assert dkim.verify(message, dnsfunc=dns_lookup)
    keys = {key.selector: services.dkim_key_state(key) for key in services.dkim_key_list(actor=superadmin)}
    assert keys == {"old": "retired", new.selector: "active"}


def test_dkim_key_rotate_with_activate_switches_at_once_keeping_algorithm(superadmin, domain_a):
    old = services.dkim_key_create(actor=superadmin, domain=domain_a, selector="old", algorithm=ED25519)
    new = services.dkim_key_rotate(actor=superadmin, domain=domain_a, activate=True)
    old.refresh_from_db()
    assert new.is_active and new.algorithm == ED25519 and new.selector != "old"
    assert not old.is_active and old.retired_at is not None
    assert signature_tags(signed())["s"] == new.selector


def test_dkim_sign_caches_key_and_reports_undecryptable_key_once(superadmin, domain_a, settings):
    key = services.dkim_key_create(actor=superadmin, domain=domain_a)
    assert services.dkim_sign(raw=MESSAGE, domain="alpha.test")

    settings.SECRET_KEY = "a-different-secret-key-" + "x" * 40
    # Still signs: the decrypted key is cached for this row version.
    assert services.dkim_sign(raw=MESSAGE, domain="alpha.test")

    key.save()  # a new updated_at: the cached entry no longer applies
    assert services.dkim_sign(raw=MESSAGE, domain="alpha.test") == b""
    assert services.dkim_sign(raw=MESSAGE, domain="alpha.test") == b""
    alerts = Alert.objects.filter(kind="relay.dkim_key_unusable")
    assert alerts.count() == 1 and alerts.get().domain_id == domain_a.pk


# --- Dashboard pages --------------------------------------------------------------------


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def flashes(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_dkim_list_view_shows_only_managed_domains(login, superadmin, admin_a, domain_a, domain_b):
    services.dkim_key_create(actor=superadmin, domain=domain_a, selector="s1")
    body = login(admin_a).get("/relay/dkim/").content.decode()
    assert "<html" in body and 'id="dkim-domain-table"' in body
    assert "alpha.test" in body and "s1" in body and "beta.test" not in body

    body = login(superadmin).get("/relay/dkim/", **HX).content.decode()
    assert "<html" not in body and "alpha.test" in body and "beta.test" in body


def test_dkim_domain_view_renders_keys_and_dns_record(login, admin_a, domain_a):
    key = services.dkim_key_create(actor=admin_a, domain=domain_a, selector="s1")
    response = login(admin_a).get(f"/relay/dkim/{domain_a.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    name, value = services.dkim_dns_record(key)
    assert f"<code>{name}</code>" in body and value in body
    assert "Generate RSA key" in body and "Generate Ed25519 key" in body
    assert f"/relay/dkim/keys/{key.pk}/check/" in body
    assert "<script" not in body.split("</head>", 1)[1] and "style=" not in body  # strict CSP


def test_dkim_generate_view_creates_key_and_redirects(login, admin_a, domain_a):
    client = login(admin_a)
    response = client.post(f"/relay/dkim/{domain_a.pk}/generate/", {"algorithm": ED25519, "selector": ""})
    assert response.status_code == 302 and response["Location"] == f"/relay/dkim/{domain_a.pk}/"
    key = DkimKey.objects.get(domain=domain_a)
    assert key.algorithm == ED25519 and key.is_active
    assert any("signs mail from now on" in text for text in flashes(response))

    response = client.post(f"/relay/dkim/{domain_a.pk}/generate/", {"algorithm": RSA, "selector": "next"})
    assert response.status_code == 302
    assert not DkimKey.objects.get(selector="next").is_active
    assert any("Publish its DNS record" in text for text in flashes(response))


def test_dkim_generate_view_shows_form_error_for_bad_selector(login, admin_a, domain_a):
    response = login(admin_a).post(
        f"/relay/dkim/{domain_a.pk}/generate/", {"algorithm": RSA, "selector": "no_way"}
    )
    assert response.status_code == 200
    assert 'class="field field-error"' in response.content.decode()
    assert not DkimKey.objects.exists()


def test_dkim_pages_of_other_domain_are_404(login, admin_a, admin_b, domain_a, user_a):
    key = services.dkim_key_create(actor=admin_a, domain=domain_a)
    client = login(admin_b)
    assert client.get(f"/relay/dkim/{domain_a.pk}/").status_code == 404
    assert client.post(f"/relay/dkim/{domain_a.pk}/generate/", {"algorithm": RSA}).status_code == 404
    assert client.post(f"/relay/dkim/keys/{key.pk}/activate/").status_code == 404
    assert client.post(f"/relay/dkim/keys/{key.pk}/check/").status_code == 404
    assert client.post(f"/relay/dkim/keys/{key.pk}/delete/").status_code == 404
    assert DkimKey.objects.filter(domain=domain_a).count() == 1
    assert login(user_a).get("/relay/dkim/").status_code == 404  # mailbox users: not their page


def test_dkim_pages_redirect_anonymous_to_login(client, domain_a):
    response = client.get(f"/relay/dkim/{domain_a.pk}/")
    assert response.status_code == 302 and "/accounts/login" in response["Location"]


def test_dkim_check_view_flashes_status_or_returns_partial(login, admin_a, domain_a, dns_zone):
    key = services.dkim_key_create(actor=admin_a, domain=domain_a, selector="s1")
    client = login(admin_a)

    response = client.post(f"/relay/dkim/keys/{key.pk}/check/")
    assert response.status_code == 302
    assert any("No DKIM record" in text for text in flashes(response))

    publish(dns_zone, key)
    response = client.post(f"/relay/dkim/keys/{key.pk}/check/", **HX)
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    assert "published" in body and "publishes this key" in body


def test_dkim_activate_and_delete_views(login, admin_a, domain_a):
    old = services.dkim_key_create(actor=admin_a, domain=domain_a, selector="old")
    new = services.dkim_key_create(actor=admin_a, domain=domain_a, selector="new")
    client = login(admin_a)

    response = client.post(f"/relay/dkim/keys/{new.pk}/activate/")
    assert response.status_code == 302
    assert DkimKey.objects.get(is_active=True).pk == new.pk
    assert Alert.objects.filter(kind="relay.dkim_activated", domain_id=domain_a.pk).count() == 2

    confirm = client.get(f"/relay/dkim/keys/{new.pk}/delete/")
    assert confirm.status_code == 200 and "activate one of them first" in confirm.content.decode()
    refused = client.post(f"/relay/dkim/keys/{new.pk}/delete/")
    assert refused.status_code == 302 and any("activate another key" in t for t in flashes(refused))
    assert DkimKey.objects.filter(pk=new.pk).exists()

    deleted = client.post(f"/relay/dkim/keys/{old.pk}/delete/")
    assert deleted.status_code == 302 and not DkimKey.objects.filter(pk=old.pk).exists()
