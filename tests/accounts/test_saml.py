"""SAML 2.0 sign-in against a test identity provider: responses are built here and signed
with the IdP's key by python3-saml/xmlsec, then posted to our assertion consumer service."""

from __future__ import annotations

import datetime as dt
import uuid
from base64 import b64encode
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.contrib.auth import SESSION_KEY
from django.test import Client
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from social_django.models import UserSocialAuth

from apps.accounts.models import AuthEvent, User, UserSession
from apps.accounts.sso import services
from tests.accounts.test_sso import continue_url
from tests.factories import UserFactory

IDP_ENTITY_ID = "https://idp.example.test/saml/metadata"
IDP_SSO_URL = "https://idp.example.test/saml/sso"
# python3-saml accepts only URLs whose host has a dot or is localhost, so not "testserver".
HOST = "localhost"
ACS_URL = f"http://{HOST}/accounts/sso/saml/acs/"
SP_ENTITY_ID = f"http://{HOST}/accounts/sso/saml/metadata/"
MFA_CONTEXT = "https://refeds.org/profile/mfa"
PASSWORD_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


@pytest.fixture(scope="module")
def idp_keys() -> tuple[str, str]:
    """The test IdP's signing key and self-signed certificate (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def provider(db, superadmin, idp_keys):
    return services.sso_provider_create(
        actor=superadmin,
        values={
            "slug": "corp-saml",
            "name": "Corp SAML",
            "kind": "saml",
            "idp_entity_id": IDP_ENTITY_ID,
            "idp_sso_url": IDP_SSO_URL,
            "idp_x509_cert": idp_keys[1],
            "groups_claim": "groups",
            "role_mapping": {"mail-admins": "domain_admin"},
            "trust_idp_mfa": True,
        },
    )


@pytest.fixture
def alice(db):
    return UserFactory(email="alice@example.test")


def _saml_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _start(client: Client, provider) -> tuple[str, str]:
    """Press the provider's button; returns (AuthnRequest ID, RelayState) from the redirect."""
    response = client.post(f"/accounts/sso/login/{provider.slug}/", {"next": "/"})
    location = urlsplit(continue_url(response))
    assert f"{location.scheme}://{location.netloc}{location.path}" == IDP_SSO_URL
    query = parse_qs(location.query)
    request_xml = OneLogin_Saml2_Utils.decode_base64_and_inflate(query["SAMLRequest"][0])
    authn_request = etree.fromstring(request_xml)
    assert authn_request.get("AssertionConsumerServiceURL") == ACS_URL
    return authn_request.get("ID"), query["RelayState"][0]


def _signed_response(
    keys: tuple[str, str],
    *,
    in_response_to: str,
    email: str = "alice@example.test",
    name_id: str = "alice-0001",
    assertion_id: str | None = None,
    valid_for: dt.timedelta = dt.timedelta(minutes=5),
    groups: tuple[str, ...] = (),
    context: str = PASSWORD_CONTEXT,
) -> str:
    """A samlp:Response whose assertion is signed with the IdP's key (RSA-SHA256)."""
    now = dt.datetime.now(dt.UTC)
    not_on_or_after = _saml_time(now + valid_for)
    assertion_id = assertion_id or f"_a{uuid.uuid4().hex}"
    group_values = "".join(
        f'<saml:AttributeValue xsi:type="xs:string">{g}</saml:AttributeValue>' for g in groups
    )
    assertion = f"""<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion"
 xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 ID="{assertion_id}" Version="2.0" IssueInstant="{_saml_time(now)}">
<saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>
<saml:Subject>
<saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">{name_id}</saml:NameID>
<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">
<saml:SubjectConfirmationData NotOnOrAfter="{not_on_or_after}" Recipient="{ACS_URL}" InResponseTo="{in_response_to}"/>
</saml:SubjectConfirmation>
</saml:Subject>
<saml:Conditions NotBefore="{_saml_time(now + valid_for - dt.timedelta(minutes=10))}" NotOnOrAfter="{not_on_or_after}">
<saml:AudienceRestriction><saml:Audience>{SP_ENTITY_ID}</saml:Audience></saml:AudienceRestriction>
</saml:Conditions>
<saml:AuthnStatement AuthnInstant="{_saml_time(now)}" SessionIndex="_session1">
<saml:AuthnContext><saml:AuthnContextClassRef>{context}</saml:AuthnContextClassRef></saml:AuthnContext>
</saml:AuthnStatement>
<saml:AttributeStatement>
<saml:Attribute Name="email"><saml:AttributeValue xsi:type="xs:string">{email}</saml:AttributeValue></saml:Attribute>
<saml:Attribute Name="displayName"><saml:AttributeValue xsi:type="xs:string">Alice Example</saml:AttributeValue></saml:Attribute>
{f'<saml:Attribute Name="groups">{group_values}</saml:Attribute>' if groups else ""}
</saml:AttributeStatement>
</saml:Assertion>"""
    signed = OneLogin_Saml2_Utils.add_sign(
        assertion,
        keys[0],
        keys[1],
        sign_algorithm=OneLogin_Saml2_Constants.RSA_SHA256,
        digest_algorithm=OneLogin_Saml2_Constants.SHA256,
    )
    signed_assertion = etree.tostring(etree.fromstring(signed)).decode()
    return f"""<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"
 xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r{uuid.uuid4().hex}" Version="2.0"
 IssueInstant="{_saml_time(now)}" Destination="{ACS_URL}" InResponseTo="{in_response_to}">
<saml:Issuer>{IDP_ENTITY_ID}</saml:Issuer>
<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>
{signed_assertion}
</samlp:Response>"""


def _post(client: Client, xml: str, relay_state: str):
    """Post to the ACS as the browser does after our same-origin re-post (see the first test)."""
    return client.post(
        "/accounts/sso/saml/acs/",
        {
            "SAMLResponse": b64encode(xml.encode()).decode(),
            "RelayState": relay_state,
            "psa_saml_browser_return": "1",
        },
    )


def _signed_in(client: Client) -> str | None:
    return client.session.get(SESSION_KEY)


def _error_on_login_page(client: Client, response) -> str:
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    page = client.get("/accounts/login/")
    return page.content.decode()


@pytest.mark.django_db
def test_saml_signed_assertion_signs_in_the_account_with_that_email(provider, alice, idp_keys):
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)
    xml = _signed_response(idp_keys, in_response_to=request_id, groups=("staff",), context=MFA_CONTEXT)

    # The IdP's cross-site POST arrives without our SameSite=Lax session cookie in real
    # browsers: the ACS first answers with a page that re-posts it from our own origin.
    first = client.post(
        "/accounts/sso/saml/acs/",
        {"SAMLResponse": b64encode(xml.encode()).decode(), "RelayState": relay_state},
    )
    assert first.status_code == 200 and b"samlReturnForm" in first.content
    assert _signed_in(client) is None

    response = _post(client, xml, relay_state)

    assert response.status_code == 302 and response["Location"] == "/"
    assert _signed_in(client) == str(alice.pk)
    link = UserSocialAuth.objects.get(user=alice)
    assert link.provider == f"sso-{provider.pk}" and link.uid == f"{provider.pk}:alice-0001"
    kinds = set(AuthEvent.objects.filter(user=alice).values_list("kind", flat=True))
    assert {AuthEvent.Kind.SSO_LINKED, AuthEvent.Kind.SSO_LOGIN, AuthEvent.Kind.LOGIN_OK} <= kinds
    session = UserSession.objects.get(user=alice)
    # The provider is trusted for MFA and asserted the REFEDS MFA context.
    assert session.method == "sso" and session.mfa_verified is True


@pytest.mark.django_db
def test_saml_password_context_is_not_a_second_factor(provider, alice, idp_keys):
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)

    _post(client, _signed_response(idp_keys, in_response_to=request_id), relay_state)

    assert UserSession.objects.get(user=alice).mfa_verified is False


@pytest.mark.django_db
def test_saml_group_mapping_sets_the_role(provider, alice, idp_keys):
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)

    _post(client, _signed_response(idp_keys, in_response_to=request_id, groups=("mail-admins",)), relay_state)

    alice.refresh_from_db()
    assert _signed_in(client) == str(alice.pk) and alice.role == User.Role.DOMAIN_ADMIN


@pytest.mark.django_db
def test_saml_tampered_assertion_is_rejected(provider, alice, idp_keys):
    mallory = UserFactory(email="mallory@example.test")
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)
    xml = _signed_response(idp_keys, in_response_to=request_id)
    tampered = xml.replace("alice@example.test", "mallory@example.test")
    assert tampered != xml

    response = _post(client, tampered, relay_state)

    assert "Sign-in with Corp SAML failed" in _error_on_login_page(client, response)
    assert _signed_in(client) is None
    assert not UserSocialAuth.objects.exists()
    assert not AuthEvent.objects.filter(user=mallory, kind=AuthEvent.Kind.SSO_LOGIN).exists()
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED, detail__provider="corp-saml").exists()


@pytest.mark.django_db
def test_saml_assertion_signed_by_another_key_is_rejected(provider, alice):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(other.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(other, hashes.SHA256())
    )
    impostor = (
        other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        cert.public_bytes(serialization.Encoding.PEM).decode(),
    )
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)

    response = _post(client, _signed_response(impostor, in_response_to=request_id), relay_state)

    assert "failed" in _error_on_login_page(client, response)
    assert _signed_in(client) is None


@pytest.mark.django_db
def test_saml_expired_assertion_is_rejected(provider, alice, idp_keys):
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)
    expired = _signed_response(idp_keys, in_response_to=request_id, valid_for=-dt.timedelta(hours=1))

    response = _post(client, expired, relay_state)

    assert "Sign-in with Corp SAML failed" in _error_on_login_page(client, response)
    assert _signed_in(client) is None
    assert not UserSession.objects.filter(user=alice).exists()


@pytest.mark.django_db
def test_saml_replayed_assertion_is_rejected(provider, alice, idp_keys):
    first_browser = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(first_browser, provider)
    xml = _signed_response(idp_keys, in_response_to=request_id, assertion_id="_assertion-once")
    assert _signed_in(_post_and_return(first_browser, xml, relay_state)) == str(alice.pk)

    # The same response again in the same browser: its AuthnRequest was answered already.
    first_browser.logout()
    again = _post(first_browser, xml, relay_state)
    assert _signed_in(first_browser) is None
    assert "failed" in _error_on_login_page(first_browser, again)

    # The same assertion ID in a response to a fresh request of another browser: it was
    # used once and is remembered until it expires.
    second_browser = Client(SERVER_NAME=HOST)
    second_request_id, second_relay = _start(second_browser, provider)
    replay = _signed_response(idp_keys, in_response_to=second_request_id, assertion_id="_assertion-once")
    response = _post(second_browser, replay, second_relay)

    assert "This sign-in response was already used." in _error_on_login_page(second_browser, response)
    assert _signed_in(second_browser) is None
    assert AuthEvent.objects.filter(kind=AuthEvent.Kind.LOGIN_FAILED, detail__reason="saml_replayed").exists()


def _post_and_return(client: Client, xml: str, relay_state: str) -> Client:
    _post(client, xml, relay_state)
    return client


@pytest.mark.django_db
def test_saml_response_without_our_request_is_rejected(provider, alice, idp_keys):
    """IdP-initiated (unsolicited) responses are refused: each must answer our request."""
    client = Client(SERVER_NAME=HOST)
    _, relay_state = _start(client, provider)
    unsolicited = _signed_response(idp_keys, in_response_to="_not-our-request")

    response = _post(client, unsolicited, relay_state)

    assert "failed" in _error_on_login_page(client, response)
    assert _signed_in(client) is None


@pytest.mark.django_db
def test_saml_unknown_email_is_refused_without_saying_more(provider, idp_keys):
    client = Client(SERVER_NAME=HOST)
    request_id, relay_state = _start(client, provider)

    response = _post(
        client,
        _signed_response(idp_keys, in_response_to=request_id, email="nobody@example.test"),
        relay_state,
    )

    assert "No account for this identity." in _error_on_login_page(client, response)
    assert not User.objects.filter(email="nobody@example.test").exists()


@pytest.mark.django_db
def test_saml_metadata_names_our_entity_and_acs(provider):
    response = Client(SERVER_NAME=HOST).get("/accounts/sso/saml/metadata/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/samlmetadata+xml"
    root = etree.fromstring(response.content)
    ns = {"md": "urn:oasis:names:tc:SAML:2.0:metadata"}
    assert root.get("entityID") == SP_ENTITY_ID
    acs = root.find("md:SPSSODescriptor/md:AssertionConsumerService", ns)
    assert acs.get("Location") == ACS_URL
    assert acs.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    assert root.find("md:SPSSODescriptor", ns).get("WantAssertionsSigned") == "true"
