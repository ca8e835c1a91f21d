"""Second-factor rules at the edges: API calls with a non-bearer Authorization header, a
reset of someone's factors, and who may reset whose factors."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.accounts import mfa
from apps.accounts.models import UserSession
from tests.factories import TEST_PASSWORD, MailboxFactory, SuperadminFactory


@pytest.fixture
def policy_on(settings):
    settings.A3_MFA_REQUIRED_ROLES = ["superadmin", "domain_admin"]


def test_any_other_authorization_header_does_not_skip_enrolment(db, policy_on):
    root = SuperadminFactory(email="root@admin.test")
    client = Client()
    assert (
        client.post("/accounts/login/", {"email": root.email, "password": TEST_PASSWORD}).status_code == 302
    )
    response = client.get("/api/v1/users/", HTTP_AUTHORIZATION="x")
    assert response.status_code == 403
    assert response.json()["code"] == "mfa_enrolment_required"


def test_reset_leaves_no_session_counted_as_verified(db, superadmin, admin_a):
    UserSession.objects.create(user=admin_a, session_key="k" * 32, mfa_verified=True)
    import pyotp

    enrolment = mfa.totp_begin(user=admin_a)
    mfa.totp_confirm(user=admin_a, otp=pyotp.TOTP(enrolment.secret).now())
    mfa.mfa_reset(actor=superadmin, user=admin_a)
    assert not UserSession.objects.filter(user=admin_a, mfa_verified=True).exists()


def test_domain_admin_cannot_reset_a_user_who_also_has_mail_elsewhere(db, admin_a, domain_a, domain_b):
    box = MailboxFactory(domain=domain_a, local_part="dual", address="dual@alpha.test")
    assert mfa.mfa_reset_allowed(actor=admin_a, user=box.owner)
    MailboxFactory(domain=domain_b, local_part="dual", address="dual@beta.test", owner=box.owner)
    assert not mfa.mfa_reset_allowed(actor=admin_a, user=box.owner)
