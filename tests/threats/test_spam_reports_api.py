"""'Report spam / not spam': the spam_report service and POST /api/v1/spam-reports/.

Reported mail teaches the Bayes store of its mailbox's domain and moves to Junk (or back
to the INBOX); only mail the caller may see can be reported."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from apps.compliance.models.audit import AuditEvent
from apps.core.exceptions import NotFoundError
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message
from apps.mailboxes.services import new_queue_id
from apps.threats.models import BayesCorpus, BayesToken, BayesTraining
from apps.threats.services.learning import bayes_train_message, spam_report
from tests.factories import MailboxFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.threats.urls_reports")]

ERROR_KEYS = {"code", "detail", "fields"}


@pytest.fixture(autouse=True)
def blob_dir(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    return settings.A3_BLOB_DIR


def raw_message(subject: str) -> bytes:
    return (
        f"From: Deals <deals@shop.example>\r\nTo: someone@alpha.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@shop.example>\r\n\r\nCheap watches, {subject}.\r\n"
    ).encode()


def file_message(
    mailbox: Mailbox, raw: bytes, *, folder: str = Folder.SpecialUse.INBOX, message=None
) -> MailItem:
    """A message filed in `mailbox` as delivery leaves it (blob, Message, MailItem)."""
    if message is None:
        message = Message.objects.create(
            queue_id=new_queue_id(),
            blob_sha256=blob_store().put(raw),
            size=len(raw),
            state=Message.State.DELIVERED,
        )
    target = Folder.objects.get(mailbox=mailbox, special_use=folder)
    uid = target.uidnext
    Folder.objects.filter(pk=target.pk).update(uidnext=uid + 1)
    return MailItem.objects.create(
        mailbox=mailbox, folder=target, message=message, uid=uid, size=message.size
    )


def folder_of(item: MailItem) -> str:
    return MailItem.objects.select_related("folder").get(pk=item.pk).folder.special_use


def learnt(domain) -> tuple[int, int]:
    row = BayesCorpus.objects.filter(domain=domain).values_list("spam_count", "ham_count").first()
    return row or (0, 0)


def post(client, body: dict):
    return client.post(reverse("api:spam-report"), body, format="json")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == ERROR_KEYS and body["code"] == code, body
    return body


# --- The service ---------------------------------------------------------------------------------


def test_spam_report_trains_the_mailbox_domains_store_and_moves_to_junk(
    user_a, mailbox_a, domain_a, domain_b
):
    first = file_message(mailbox_a, raw_message("offer one"))
    second = file_message(mailbox_a, raw_message("offer two"))

    outcome = spam_report(actor=user_a, mail_item_ids=[first.pk, second.pk, first.pk], is_spam=True)

    assert (outcome.trained, outcome.moved) == (2, 2)
    assert folder_of(first) == folder_of(second) == Folder.SpecialUse.JUNK
    assert learnt(domain_a) == (2, 0)
    assert learnt(domain_b) == (0, 0)
    assert set(BayesTraining.objects.values_list("domain_id", "message_id", "is_spam")) == {
        (domain_a.pk, first.message_id, True),
        (domain_a.pk, second.message_id, True),
    }
    event = AuditEvent.objects.get(action="threats.spam_report")
    assert event.changes["as"] == "spam"
    assert event.changes["mail_items"] == [first.pk, second.pk]
    assert event.changes["context"]["domain_id"] == domain_a.pk


def test_spam_report_not_spam_moves_back_and_unlearns_the_spam(user_a, mailbox_a, domain_a):
    item = file_message(mailbox_a, raw_message("newsletter"), folder=Folder.SpecialUse.JUNK)
    bayes_train_message(domain_id=domain_a.pk, message=item.message, is_spam=True)

    outcome = spam_report(actor=user_a, mail_item_ids=[item.pk], is_spam=False)

    assert (outcome.trained, outcome.moved) == (1, 1)
    item.refresh_from_db()
    assert item.folder.special_use == Folder.SpecialUse.INBOX
    assert learnt(domain_a) == (0, 1)
    assert not BayesToken.objects.filter(domain=domain_a, spam__gt=0).exists()
    assert BayesTraining.objects.get(message=item.message).is_spam is False


def test_spam_report_repeated_changes_nothing(user_a, mailbox_a, domain_a):
    item = file_message(mailbox_a, raw_message("again"))
    spam_report(actor=user_a, mail_item_ids=[item.pk], is_spam=True)
    tokens = sorted(BayesToken.objects.values_list("token", "spam", "ham"))

    outcome = spam_report(actor=user_a, mail_item_ids=[item.pk], is_spam=True)

    assert (outcome.trained, outcome.moved) == (0, 0)
    assert sorted(BayesToken.objects.values_list("token", "spam", "ham")) == tokens
    assert learnt(domain_a) == (1, 0)


def test_spam_report_of_anothers_message_is_not_found_and_changes_nothing(user_a, mailbox_a, mailbox_b):
    mine = file_message(mailbox_a, raw_message("mine"))
    theirs = file_message(mailbox_b, raw_message("theirs"))

    with pytest.raises(NotFoundError) as caught:
        spam_report(actor=user_a, mail_item_ids=[mine.pk, theirs.pk], is_spam=True)

    assert caught.value.fields == {"messages": [f"No such message: {theirs.pk}."]}
    assert folder_of(mine) == folder_of(theirs) == Folder.SpecialUse.INBOX
    assert not BayesTraining.objects.exists() and not BayesToken.objects.exists()
    assert not AuditEvent.objects.filter(action="threats.spam_report").exists()


def test_spam_report_by_domain_admins_reaches_their_domains_only(admin_a, mailbox_a, mailbox_b, domain_a):
    theirs = file_message(mailbox_a, raw_message("for admin"))
    elsewhere = file_message(mailbox_b, raw_message("not for admin"))

    assert spam_report(actor=admin_a, mail_item_ids=[theirs.pk], is_spam=True).moved == 1
    with pytest.raises(NotFoundError):
        spam_report(actor=admin_a, mail_item_ids=[elsewhere.pk], is_spam=True)

    assert folder_of(theirs) == Folder.SpecialUse.JUNK
    assert folder_of(elsewhere) == Folder.SpecialUse.INBOX
    assert learnt(domain_a) == (1, 0)


def test_spam_report_teaches_each_mailboxs_own_domain(superadmin, mailbox_a, mailbox_b, domain_a, domain_b):
    # One message delivered to two domains: each copy teaches its own domain's store.
    at_a = file_message(mailbox_a, raw_message("to both"))
    at_b = file_message(mailbox_b, b"", message=at_a.message)
    colleague = MailboxFactory(domain=domain_a, local_part="carol", address="carol@alpha.test")
    at_a_too = file_message(colleague, b"", message=at_a.message)

    outcome = spam_report(actor=superadmin, mail_item_ids=[at_a.pk, at_b.pk, at_a_too.pk], is_spam=True)

    # domain_a learns the message once, however many of its mailboxes got it.
    assert (outcome.trained, outcome.moved) == (2, 3)
    assert learnt(domain_a) == learnt(domain_b) == (1, 0)
    assert AuditEvent.objects.filter(action="threats.spam_report").count() == 3  # one per mailbox


def test_spam_report_moves_mail_whose_content_is_gone_without_learning(user_a, mailbox_a, domain_a):
    item = file_message(mailbox_a, raw_message("vanished"))
    blob_store().delete(item.message.blob_sha256)

    outcome = spam_report(actor=user_a, mail_item_ids=[item.pk], is_spam=True)

    assert (outcome.trained, outcome.moved) == (0, 1)
    assert folder_of(item) == Folder.SpecialUse.JUNK
    assert learnt(domain_a) == (0, 0)


def test_spam_report_keeps_mail_in_place_when_the_mailbox_has_no_junk_folder(user_a, mailbox_a, domain_a):
    item = file_message(mailbox_a, raw_message("no junk"))
    Folder.objects.filter(mailbox=mailbox_a, special_use=Folder.SpecialUse.JUNK).delete()

    outcome = spam_report(actor=user_a, mail_item_ids=[item.pk], is_spam=True)

    assert (outcome.trained, outcome.moved) == (1, 0)
    assert folder_of(item) == Folder.SpecialUse.INBOX
    assert learnt(domain_a) == (1, 0)


# --- The API ------------------------------------------------------------------------------------


def test_api_spam_report(api_client_for, user_a, mailbox_a, domain_a):
    items = [file_message(mailbox_a, raw_message(f"api {n}")) for n in range(2)]

    response = post(api_client_for(user_a), {"messages": [item.pk for item in items], "is_spam": True})

    assert response.status_code == 200, response.content
    assert response.json() == {"trained": 2, "moved": 2}
    assert [folder_of(item) for item in items] == [Folder.SpecialUse.JUNK] * 2
    assert learnt(domain_a) == (2, 0)


def test_api_not_spam_report(api_client_for, user_a, mailbox_a, domain_a):
    item = file_message(mailbox_a, raw_message("api ham"), folder=Folder.SpecialUse.JUNK)

    response = post(api_client_for(user_a), {"messages": [item.pk], "is_spam": False})

    assert response.json() == {"trained": 1, "moved": 1}
    assert folder_of(item) == Folder.SpecialUse.INBOX
    assert learnt(domain_a) == (0, 1)


def test_api_spam_report_of_another_tenants_message_is_404(api_client_for, user_a, mailbox_b, domain_b):
    theirs = file_message(mailbox_b, raw_message("tenant b"))

    body = assert_error(
        post(api_client_for(user_a), {"messages": [theirs.pk], "is_spam": True}), 404, "not_found"
    )

    assert body["fields"] == {"messages": [f"No such message: {theirs.pk}."]}
    assert folder_of(theirs) == Folder.SpecialUse.INBOX
    assert learnt(domain_b) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [], "is_spam": True}, "messages"),
        ({"messages": ["x"], "is_spam": True}, "messages"),
        ({"messages": [1]}, "is_spam"),
        ({"messages": list(range(1, 502)), "is_spam": True}, "messages"),
        ({"messages": [1], "is_spam": True, "folder": "Junk"}, "folder"),
    ],
)
def test_api_spam_report_validation(api_client_for, user_a, body, field):
    response = post(api_client_for(user_a), body)

    assert field in assert_error(response, 400, "invalid")["fields"]


def test_api_spam_report_needs_authentication(api_client_for, mailbox_a):
    item = file_message(mailbox_a, raw_message("anonymous"))

    response = post(api_client_for(), {"messages": [item.pk], "is_spam": True})

    assert_error(response, 401, "not_authenticated")
    assert folder_of(item) == Folder.SpecialUse.INBOX


def test_api_spam_report_query_count_is_capped(
    api_client_for, user_a, mailbox_a, django_assert_max_num_queries
):
    items = [file_message(mailbox_a, raw_message(f"bulk {n}")) for n in range(5)]
    client = api_client_for(user_a)

    # About ten a message (five to learn its tokens, five in mail_item_move to refile it),
    # plus a fixed cost (authentication, scoping, the store lock, the audit event).
    with django_assert_max_num_queries(70):
        response = post(client, {"messages": [item.pk for item in items], "is_spam": True})

    assert response.json() == {"trained": 5, "moved": 5}


# --- Webmail buttons -------------------------------------------------------------------------


def test_webmail_shows_report_spam_in_the_inbox_and_not_spam_in_junk(client, user_a, mailbox_a):
    inbox_item = file_message(mailbox_a, raw_message("inbox one"))
    junk_item = file_message(mailbox_a, raw_message("junk one"), folder=Folder.SpecialUse.JUNK)
    sent_item = file_message(mailbox_a, raw_message("sent one"), folder=Folder.SpecialUse.SENT)
    client.force_login(user_a)
    report = reverse("threats:webmail-spam-report", args=[inbox_item.pk])

    inbox_page = client.get(f"/mail/webmail/messages/{inbox_item.pk}/").content.decode()
    junk_page = client.get(f"/mail/webmail/messages/{junk_item.pk}/").content.decode()
    sent_page = client.get(f"/mail/webmail/messages/{sent_item.pk}/").content.decode()

    assert f'action="{report}"' in inbox_page and ">Report spam</button>" in inbox_page
    assert ">Not spam</button>" in junk_page and ">Report spam</button>" not in junk_page
    assert "Report spam" not in sent_page and "Not spam" not in sent_page


def test_webmail_report_spam_trains_moves_to_junk_and_returns_to_the_folder(
    client, user_a, mailbox_a, domain_a
):
    item = file_message(mailbox_a, raw_message("cheap watches"))
    client.force_login(user_a)

    response = client.post(reverse("threats:webmail-spam-report", args=[item.pk]), {"is_spam": "1"})

    assert response.status_code == 302
    assert response["Location"] == f"/mail/webmail/{mailbox_a.pk}/"
    assert folder_of(item) == Folder.SpecialUse.JUNK
    assert learnt(domain_a) == (1, 0)
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Reported as spam and moved to Junk."]

    response = client.post(reverse("threats:webmail-spam-report", args=[item.pk]), {"is_spam": "0"})
    assert response["Location"] == f"/mail/webmail/{mailbox_a.pk}/?folder=Junk"
    assert folder_of(item) == Folder.SpecialUse.INBOX
    assert learnt(domain_a) == (0, 1)


def test_webmail_report_of_anothers_message_is_404_and_changes_nothing(client, user_a, mailbox_b, domain_b):
    item = file_message(mailbox_b, raw_message("not yours"))
    client.force_login(user_a)

    response = client.post(reverse("threats:webmail-spam-report", args=[item.pk]), {"is_spam": "1"})

    assert response.status_code == 404
    assert folder_of(item) == Folder.SpecialUse.INBOX
    assert learnt(domain_b) == (0, 0)


def test_webmail_report_needs_a_post_with_a_verdict(client, user_a, mailbox_a):
    item = file_message(mailbox_a, raw_message("no verdict"))
    client.force_login(user_a)
    url = reverse("threats:webmail-spam-report", args=[item.pk])

    assert client.get(url).status_code == 405
    response = client.post(url, {"is_spam": "maybe"})
    assert response.status_code == 400 and b"spam" in response.content
    assert folder_of(item) == Folder.SpecialUse.INBOX
