"""Security properties of the quarantine: who may release or delete for which recipient,
what an item outside the viewer's scope reveals, forged verdict headers (our
Authentication-Results and X-Spam-* never survive from the sender), the safety of the
HTML preview, and that concurrent scans, releases and deletes lose no mail.

Messages arrive the real way (accepted, scanned by the real pipeline, delivered by the
real delivery stages) with a test stage that reads its verdict from an X-Test-Verdict
header. Where two requests or workers interleave, the test runs the "other" call at the
exact point where it would land (the comment says where)."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from django.conf import settings
from django.urls import reverse

from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, MailItem, Message
from apps.mailboxes.services import IncomingMessage, message_deliver, messages_accept, new_queue_id
from apps.threats import services
from apps.threats.models import DomainPolicy, QuarantineItem, QuarantineRecipient
from apps.threats.pipeline import StageOutcome, scan_stage
from apps.threats.services import quarantine as quarantine_services
from apps.threats.services.scan import message_scan, stamp_headers
from apps.threats.views.preview import preview_of
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

OWN_ID = settings.A3_HOSTNAME


@scan_stage("test-verdict")
def verdict_stage(context) -> StageOutcome:
    values = context.header_values("X-Test-Verdict")
    if not values:
        return StageOutcome(reasons=["nothing suspicious"])
    category, _, score = values[0].strip().partition(" ")
    return StageOutcome(
        score=float(score or 0),
        reasons=[f"the test verdict says {category}"],
        category="" if category == "spam" else category,
    )


@pytest.fixture(autouse=True)
def _test_stages(settings):
    settings.A3_SCAN_STAGES = ["tests.threats.test_quarantine_security.verdict_stage"]


def _raw(recipients, *, verdict="", sender="mallory@evil.test", extra_headers=(), html=None) -> bytes:
    mail = EmailMessage()
    mail["From"] = f"Mallory <{sender}>"
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = "Hello"
    if verdict:
        mail["X-Test-Verdict"] = verdict
    mail.set_content("Body text.")
    if html is not None:
        mail.add_alternative(html, subtype="html")
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in extra_headers)
    return head + mail.as_bytes().replace(b"\n", b"\r\n")


def accept(*recipients, verdict="", submitted_by=None, peer_ip="192.0.2.7", extra_headers=(), html=None):
    incoming = IncomingMessage(
        queue_id=new_queue_id(),
        mail_from="mallory@evil.test" if submitted_by is None else submitted_by.address,
        recipients=tuple(recipients),
        raw=_raw(recipients, verdict=verdict, extra_headers=extra_headers, html=html),
        peer_ip=peer_ip,
        submitted_by_id=submitted_by.pk if submitted_by is not None else None,
    )
    (message,) = messages_accept(incoming=[incoming])
    return message


def held(*recipients, verdict="spam 20", html=None) -> QuarantineItem:
    message = accept(*recipients, verdict=verdict, html=html)
    message_deliver(message_id=message.pk)
    return QuarantineItem.objects.get(message=message)


def has_copy(mailbox, message_id, use=None) -> bool:
    rows = MailItem.objects.filter(mailbox=mailbox, message_id=message_id)
    if use is not None:
        rows = rows.filter(folder__special_use=use)
    return rows.exists()


def row_state(item, mailbox) -> str:
    return QuarantineRecipient.objects.get(item=item, mailbox=mailbox).state


def stored(message: Message) -> bytes:
    message.refresh_from_db()
    return blob_store().read(message.blob_sha256)


# --- Authorization -----------------------------------------------------------------------------


def test_domain_admin_cannot_release_malware_held_for_their_own_mailbox_in_another_domain(
    admin_a, mailbox_a, domain_b
):
    # Permission is decided per recipient: being admin for the item (one recipient in
    # their domain) does not extend to a chosen mailbox outside their domains, even one
    # they own. Malware held for their own mailbox at beta is for beta's administrators
    # to release, not for alpha's domain admin.
    carol = MailboxFactory(domain=domain_b, local_part="carol", owner=admin_a)
    item = held(mailbox_a.address, carol.address, verdict="malware")
    with pytest.raises(quarantine_services.PermissionDeniedError):
        services.quarantine_release(actor=admin_a, item=item, mailbox_ids=[carol.pk])
    assert row_state(item, carol) == QuarantineRecipient.State.HELD
    assert not has_copy(carol, item.message_id)


def test_same_domain_admin_user_without_the_alpha_recipient_may_not_release_malware(admin_a, domain_b):
    # With no recipient in their own domains, the admin is a plain user here.
    carol = MailboxFactory(domain=domain_b, local_part="carol", owner=admin_a)
    item = held(carol.address, verdict="malware")
    with pytest.raises(quarantine_services.PermissionDeniedError):
        services.quarantine_release(actor=admin_a, item=item, mailbox_ids=[carol.pk])


def test_api_release_with_another_domains_mailbox_id_changes_nothing(
    api_client_for, admin_a, mailbox_a, mailbox_b
):
    # Mailbox ids in the body are intersected with the actor's scope.
    item = held(mailbox_a.address, mailbox_b.address)
    response = api_client_for(admin_a).post(
        f"/api/v1/quarantine/{item.pk}/release/", {"mailboxes": [mailbox_b.pk]}, format="json"
    )
    assert response.status_code in (400, 403, 404, 409)
    assert row_state(item, mailbox_b) == QuarantineRecipient.State.HELD
    assert not has_copy(mailbox_b, item.message_id)
    response = api_client_for(admin_a).post(
        f"/api/v1/quarantine/{item.pk}/delete/", {"mailboxes": [mailbox_b.pk]}, format="json"
    )
    assert response.status_code in (400, 403, 404, 409)
    assert row_state(item, mailbox_b) == QuarantineRecipient.State.HELD


def test_user_cannot_reach_another_users_item_page_preview_or_raw(client, api_client_for, user_a, mailbox_b):
    # Everything about an item outside the viewer's scope is "not found".
    item = held(mailbox_b.address)
    client.force_login(user_a)
    assert client.get(reverse("threats:quarantine-detail", args=[item.pk])).status_code == 404
    assert client.get(reverse("threats:quarantine-preview", args=[item.pk])).status_code == 404
    api = api_client_for(user_a)
    assert api.get(f"/api/v1/quarantine/{item.pk}/raw/").status_code == 404
    assert (
        api.post(f"/api/v1/quarantine/{item.pk}/report/", {"is_spam": False}, format="json").status_code
        == 404
    )
    client.post(reverse("threats:quarantine-bulk"), {"action": "release", "items": [str(item.pk)]})
    assert row_state(item, mailbox_b) == QuarantineRecipient.State.HELD


# --- Preview -----------------------------------------------------------------------------------


def test_preview_neutralises_base_meta_refresh_svg_and_data_links():
    # Nothing that navigates, runs or re-bases survives the sanitiser + rewrite.
    html = (
        '<base href="https://evil.test/">'
        '<meta http-equiv="refresh" content="0;url=https://evil.test/">'
        '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>'
        '<a href="data:text/html,<script>alert(1)</script>">data</a>'
        '<a href="  JaVaScRiPt:alert(1)">js</a>'
        '<object data="https://evil.test/x"></object><embed src="https://evil.test/y">'
        '<link rel="stylesheet" href="https://evil.test/c.css">'
        "<style>@import url(https://evil.test/i.css);</style>"
    )
    raw = _raw(["a@alpha.test"], html=html)
    preview = preview_of(raw)
    lowered = preview.html.lower()
    for needle in (
        "<base",
        "<meta",
        "<script",
        "javascript:",
        "<a ",
        "href=",
        "<object",
        "<embed",
        "<link",
        "@import",
    ):
        assert needle not in lowered, needle


def test_preview_response_is_sandboxed_without_scripts(client, user_a, mailbox_a):
    # The frame's document is under a CSP with sandbox and no sources.
    item = held(mailbox_a.address, html="<p>hi</p>")
    client.force_login(user_a)
    response = client.get(reverse("threats:quarantine-preview", args=[item.pk]))
    policy = response["Content-Security-Policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy and "script-src" not in policy


# --- Header stamping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(f"Authentication-Results: {OWN_ID}; dkim=pass header.d=bank.test", id="plain"),
        pytest.param(f"AUTHENTICATION-RESULTS :  {OWN_ID.upper()} ; dkim=pass", id="case-space"),
        pytest.param("X-Spam-Flag: NO", id="x-spam-flag"),
        pytest.param("x-spam-status\t: No, score=-5", id="x-spam-status-tab"),
    ],
)
def test_stamp_headers_drops_forged_copies(forged):
    # Forged copies go whatever the case of the field name or authserv-id and the
    # whitespace around them.
    raw = f"{forged}\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    out = stamp_headers(raw, [("Authentication-Results", f"{OWN_ID}; spf=fail")])
    assert out.count(b"dkim=pass") == 0 and b"X-Spam-Flag: NO" not in out and b"score=-5" not in out
    assert out.endswith(b"Subject: hi\r\n\r\nbody\r\n")


def test_stamp_headers_drops_forged_authentication_results_with_folded_value():
    # A forgery is recognised beyond the field's first line: one that folds right after
    # the colon does not keep an A-R under our name.
    raw = f"Authentication-Results:\r\n {OWN_ID};\r\n dkim=pass header.d=bank.test\r\nSubject: hi\r\n\r\nbody\r\n"
    out = stamp_headers(raw.encode(), [("Authentication-Results", f"{OWN_ID}; dkim=none")])
    assert b"dkim=pass" not in out


def test_stamp_headers_drops_forged_authentication_results_with_version_or_comment():
    # RFC 8601 allows "authserv-id [version]" and comments (CFWS) around the id before the
    # ";": "<id> 1;", "<id> (x);" and "(c) <id>;" are all forgeries under our name and are
    # dropped, so clients trusting our authserv-id never see the sender's pass.
    for value in (f"{OWN_ID} 1; dkim=pass", f"{OWN_ID} (ours); dkim=pass", f"(c) {OWN_ID}; dkim=pass"):
        raw = f"Authentication-Results: {value}\r\nSubject: hi\r\n\r\nbody\r\n".encode()
        out = stamp_headers(raw, [("Authentication-Results", f"{OWN_ID}; dkim=none")])
        assert b"dkim=pass" not in out, value


def test_submitted_mail_to_a_local_user_keeps_no_forged_verdict_headers(mailbox_a, mailbox_b):
    # Submissions are cleaned too, although the auth stage does not run on them and
    # there is nothing of ours to stamp: a local user cannot send a colleague
    # "Authentication-Results: <our id>; dkim=pass header.d=bank.test" or
    # "X-Spam-Flag: NO" that reach the INBOX as if we had written them.
    message = accept(
        mailbox_b.address,
        submitted_by=mailbox_a,
        peer_ip="198.51.100.9",
        extra_headers=[
            ("Authentication-Results", f"{OWN_ID}; dkim=pass header.d=bank.test; dmarc=pass"),
            ("X-Spam-Flag", "NO"),
        ],
    )
    message_deliver(message_id=message.pk)
    assert has_copy(mailbox_b, message.pk)
    raw = stored(message)
    assert b"dkim=pass header.d=bank.test" not in raw
    assert b"X-Spam-Flag: NO" not in raw


def test_inbound_mail_loses_forged_verdict_headers(mailbox_a):
    # MX mail (CRLF, plain spelling) loses them as well.
    message = accept(
        mailbox_a.address,
        extra_headers=[("Authentication-Results", f"{OWN_ID}; dkim=pass"), ("X-Spam-Score", "-100")],
    )
    message_deliver(message_id=message.pk)
    raw = stored(message)
    assert b"dkim=pass" not in raw and b"-100" not in raw


# --- Races and data loss -----------------------------------------------------------------------


def _scan_other_message_first(context) -> None:
    """Test delivery stage standing in for the scan queue's worker: while this delivery
    pass prepares its first leased message, the scan worker finishes scanning the next
    one (the pass leased it, with its old blob hash, while it waited for its scan)."""
    other = Message.objects.filter(pk__gt=context.message.pk, state=Message.State.DELIVERING).first()
    if other is not None and not hasattr(other, "verdict"):
        message_scan(message=Message.objects.get(pk=other.pk))


def test_concurrent_scan_does_not_fail_a_message_leased_by_a_delivery_batch(settings, mailbox_a):
    # A message leased by a delivery pass and scanned before the pass reaches it is still
    # delivered. message_deliver leases up to A3_DELIVERY_BATCH waiting messages (state
    # received, i.e. also those still in the scan queue) with their blob hash as it was;
    # the scan worker then finishes one of them first and swaps in the stamped blob. The
    # pass must not find the content missing and mark the message FAILED (which is final,
    # neither delivered nor quarantined).
    settings.A3_DELIVERY_STAGES = [
        "tests.threats.test_quarantine_security._scan_other_message_first",
        *settings.A3_DELIVERY_STAGES,
    ]
    first = accept(mailbox_a.address)
    second = accept(mailbox_a.address)
    message_deliver(message_id=first.pk)
    second.refresh_from_db()
    assert second.state == Message.State.DELIVERED, second.last_error
    assert has_copy(mailbox_a, second.pk)


def test_release_racing_a_delete_of_the_last_other_recipient_still_delivers(
    monkeypatch, superadmin, admin_b, mailbox_a, mailbox_b
):
    # A delete of the item's last other open recipient that commits between the
    # release's commit and its delivery must not mark the message done: the release
    # sets it back to received under the item's lock first.
    item = held(mailbox_a.address, mailbox_b.address)
    real_deliver = quarantine_services.message_deliver

    def concurrent_delete_then_deliver(*, message_id, alone=False):
        services.quarantine_delete(actor=admin_b, item=QuarantineItem.objects.get(pk=item.pk))
        return real_deliver(message_id=message_id, alone=alone)

    monkeypatch.setattr(quarantine_services, "message_deliver", concurrent_delete_then_deliver)
    services.quarantine_release(actor=superadmin, item=item, mailbox_ids=[mailbox_a.pk])
    assert row_state(item, mailbox_a) == QuarantineRecipient.State.RELEASED
    assert has_copy(mailbox_a, item.message_id, Folder.SpecialUse.INBOX)


def test_release_for_one_recipient_does_not_refile_for_recipients_who_were_not_held(
    superadmin, domain_b, mailbox_a, mailbox_b
):
    # A release pass files only for the released recipients, not again for targets that
    # were never held: alice, who got this spam in Junk and deleted it, does not find it
    # back (in her INBOX or anywhere) when bob's administrator releases bob's copy.
    DomainPolicy.objects.create(
        domain=domain_b, header_score=1.0, junk_score=2.0, quarantine_score=3.0, reject_score=50.0
    )
    item = held(mailbox_a.address, mailbox_b.address, verdict="spam 7")  # alice: Junk, bob: held
    assert has_copy(mailbox_a, item.message_id, Folder.SpecialUse.JUNK)
    MailItem.objects.filter(mailbox=mailbox_a, message_id=item.message_id).delete()  # alice expunges it
    services.quarantine_release(actor=superadmin, item=item, mailbox_ids=[mailbox_b.pk])
    assert has_copy(mailbox_b, item.message_id, Folder.SpecialUse.INBOX)
    assert not has_copy(mailbox_a, item.message_id)


def test_partly_held_message_release_delivers_to_released_recipient_only(superadmin, mailbox_a, mailbox_b):
    # A release files only for the released recipient; the other stays held.
    item = held(mailbox_a.address, mailbox_b.address)
    services.quarantine_release(actor=superadmin, item=item, mailbox_ids=[mailbox_a.pk])
    assert has_copy(mailbox_a, item.message_id, Folder.SpecialUse.INBOX)
    assert not has_copy(mailbox_b, item.message_id)
    assert row_state(item, mailbox_b) == QuarantineRecipient.State.HELD
    services.quarantine_release(actor=superadmin, item=item, mailbox_ids=[mailbox_b.pk])
    assert has_copy(mailbox_b, item.message_id, Folder.SpecialUse.INBOX)
