"""The external engines as scan stages, against real private instances of clamd, Rspamd
and spamd (tests/support/engines.py): EICAR found by ClamAV, GTUBE scored by Rspamd and
SpamAssassin, and an engine that is down handled as a scanner failure end to end."""

from __future__ import annotations

import io
import os
import time
import zipfile
from email.message import EmailMessage

import pytest
from django.core.cache import cache

from apps.alerts.models import Alert
from apps.mailboxes import services as mailbox_services
from apps.mailboxes.models import MailItem, Message
from apps.mailboxes.services import IncomingMessage
from apps.threats.models import Category, DomainPolicy, QuarantineItem, ScannerFailureMode, ScanVerdict
from apps.threats.pipeline import ScanContext, pipeline_run
from apps.threats.stages.external import (
    ClamdClient,
    EngineError,
    clamav_stage,
    rspamd_headers,
    rspamd_stage,
    spamd_stage,
)
from tests.support.engines import EICAR, EICAR_SIGNATURE, GTUBE, ClamdRunner, closed_port, started

ALICE = "alice@alpha.test"
CLAMAV = "apps.threats.stages.external.clamav_stage"


def mail(body: str = "Hello Alice,\n\nSee you at lunch.\n", *, attachments=(), subject="Lunch") -> bytes:
    message = EmailMessage()
    message["From"] = "Sender <sender@remote.test>"
    message["To"] = ALICE
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.monotonic_ns()}@remote.test>"
    message["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    message.set_content(body)
    for filename, payload in attachments:
        message.add_attachment(payload, maintype="application", subtype="octet-stream", filename=filename)
    return bytes(message).replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


def zipped(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, payload)
    return buffer.getvalue()


def run(raw: bytes, stage):
    result = pipeline_run(
        ScanContext(raw=raw, mail_from="sender@remote.test", peer_ip="192.0.2.7"), stages=[stage]
    )
    [record] = result.stages
    return result, record


# --- not configured --------------------------------------------------------------------


@pytest.mark.parametrize("stage", [clamav_stage, rspamd_stage, spamd_stage])
def test_engine_not_configured_is_skipped(settings, stage):
    settings.A3_CLAMD_ADDRESS = settings.A3_RSPAMD_URL = settings.A3_SPAMD_ADDRESS = ""
    result, record = run(mail(body=GTUBE.decode(), attachments=[("eicar.com", EICAR)]), stage)
    assert record["status"] == "skipped"
    assert (result.score, result.category, result.failed_stages) == (0, "", [])


# --- ClamAV ----------------------------------------------------------------------------


def test_clamav_finds_eicar_attachment(settings, clamd_engine):
    settings.A3_CLAMD_ADDRESS = clamd_engine.address
    result, record = run(mail(attachments=[("invoice.com", EICAR)]), clamav_stage)
    assert record["status"] == "ok"
    assert result.category == Category.MALWARE
    assert record["reasons"] == [f"Malware: {EICAR_SIGNATURE}.UNOFFICIAL (ClamAV)"]
    assert record["data"]["signature"].startswith(EICAR_SIGNATURE)


def test_clamav_finds_eicar_inside_a_zip(settings, clamd_engine):
    settings.A3_CLAMD_ADDRESS = clamd_engine.address
    result, _ = run(mail(attachments=[("docs.zip", zipped("readme.txt", EICAR))]), clamav_stage)
    assert result.category == Category.MALWARE


def test_clamav_clean_mail_is_ok(settings, clamd_engine):
    settings.A3_CLAMD_ADDRESS = clamd_engine.address
    result, record = run(
        mail(attachments=[("notes.zip", zipped("notes.txt", b"nothing to see"))]), clamav_stage
    )
    assert (record["status"], result.category, result.score, record["reasons"]) == ("ok", "", 0, [])


def test_clamav_runs_on_submissions_too(settings, clamd_engine):
    """Our own users' outgoing mail is checked for malware, but not scored as spam."""
    settings.A3_CLAMD_ADDRESS = clamd_engine.address
    settings.A3_SPAMD_ADDRESS = closed_port()  # would fail if it ran
    context = ScanContext(raw=mail(attachments=[("x.com", EICAR)]), submitted=True)
    result = pipeline_run(context, stages=[clamav_stage, spamd_stage])
    assert result.category == Category.MALWARE
    assert [record["stage"] for record in result.stages] == ["clamav"]


def test_clamav_tcp_address(settings):
    """host:port addresses: a clamd on TCP gives the same verdict."""
    port = closed_port().rpartition(":")[2]
    with started(ClamdRunner(options={"TCPSocket": port, "TCPAddr": "127.0.0.1"})) as tcp_clamd:
        assert ClamdClient(f"127.0.0.1:{port}", timeout=5).ping()
        settings.A3_CLAMD_ADDRESS = f"127.0.0.1:{port}"
        result, _ = run(mail(attachments=[("a.com", EICAR)]), clamav_stage)
        assert tcp_clamd.pids()
    assert result.category == Category.MALWARE


@pytest.mark.parametrize("where", ["missing socket", "refused port"])
def test_clamav_down_is_a_scanner_failure(settings, tmp_path, where):
    settings.A3_CLAMD_ADDRESS = str(tmp_path / "clamd.sock") if where == "missing socket" else closed_port()
    result, record = run(mail(attachments=[("a.com", EICAR)]), clamav_stage)
    assert record["status"] == "error"
    assert result.failed_stages == ["clamav"]
    assert result.category == ""  # not scanned, so not known to be malware
    assert "ClamAV gave no verdict" in record["reasons"][0]


def test_clamav_stream_limit_is_an_error(settings):
    """Past clamd's StreamMaxLength it answers "INSTREAM size limit exceeded. ERROR"."""
    with started(ClamdRunner(options={"StreamMaxLength": "1M"})) as small:
        settings.A3_CLAMD_ADDRESS = small.address
        _, record = run(mail(attachments=[("big.bin", b"\x01" * (3 * 1024 * 1024))]), clamav_stage)
    assert record["status"] == "error"
    assert "size limit exceeded" in record["reasons"][0]


def test_engine_runner_leaves_nothing_behind():
    with started(ClamdRunner()) as clamd:
        group, directory = clamd.popen.pid, clamd.dir
        os.killpg(group, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not directory.exists()


def test_clamd_client_rejects_a_bad_address():
    with pytest.raises(EngineError):
        ClamdClient("nohostport", timeout=1).instream(b"x")


# --- ClamAV down, end to end: policy and alert ----------------------------------------


@pytest.fixture
def clamd_down(settings, tmp_path, blob_dir):
    settings.A3_SCAN_STAGES = [CLAMAV]
    settings.A3_CLAMD_ADDRESS = str(tmp_path / "nothing-listens.sock")
    cache.delete("threats:scanner-down:clamav")  # the alert is rate-limited per stage


@pytest.fixture
def blob_dir(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    return settings.A3_BLOB_DIR


def accept_and_deliver(raw: bytes) -> Message:
    [message] = mailbox_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id=mailbox_services.new_queue_id(),
                mail_from="sender@remote.test",
                recipients=(ALICE,),
                raw=raw,
                peer_ip="192.0.2.7",
                helo="client.test",
            )
        ]
    )
    mailbox_services.message_deliver(message_id=message.pk)
    message.refresh_from_db()
    return message


@pytest.mark.django_db
def test_clamd_down_fail_closed_quarantines_as_unscannable(clamd_down, domain_a, mailbox_a):
    DomainPolicy.objects.create(domain=domain_a, scanner_failure=ScannerFailureMode.FAIL_CLOSED)
    message = accept_and_deliver(mail())
    assert message.state == Message.State.QUARANTINED
    item = QuarantineItem.objects.get(message=message)
    assert item.category == Category.UNSCANNABLE
    assert "clamav" in item.reason
    assert not MailItem.objects.filter(message=message).exists()
    [alert] = Alert.objects.filter(kind="threats.scanner_failed")
    assert (alert.data["stage"], alert.data["queue_id"], alert.domain_id) == (
        "clamav",
        message.queue_id,
        domain_a.pk,
    )
    verdict = ScanVerdict.objects.get(message=message)
    assert [(s["stage"], s["status"]) for s in verdict.stages] == [("clamav", "error")]


@pytest.mark.django_db
def test_clamd_down_fail_open_delivers(clamd_down, domain_a, mailbox_a):
    DomainPolicy.objects.create(domain=domain_a, scanner_failure=ScannerFailureMode.FAIL_OPEN)
    message = accept_and_deliver(mail())
    assert message.state == Message.State.DELIVERED
    assert MailItem.objects.filter(message=message, mailbox=mailbox_a, folder__special_use="inbox").exists()
    assert not QuarantineItem.objects.filter(message=message).exists()
    assert Alert.objects.filter(kind="threats.scanner_failed", data__stage="clamav").exists()


@pytest.mark.django_db
def test_clamd_up_quarantines_eicar_as_malware(settings, clamd_engine, blob_dir, domain_a, mailbox_a):
    settings.A3_SCAN_STAGES = [CLAMAV]
    settings.A3_CLAMD_ADDRESS = clamd_engine.address
    message = accept_and_deliver(mail(attachments=[("invoice.com", EICAR)]))
    assert message.state == Message.State.QUARANTINED
    assert QuarantineItem.objects.get(message=message).category == Category.MALWARE


# --- Rspamd ----------------------------------------------------------------------------


def test_rspamd_scores_gtube(settings, rspamd_engine):
    settings.A3_RSPAMD_URL = rspamd_engine.address
    result, record = run(mail(body=f"Buy now!\n{GTUBE.decode()}\n"), rspamd_stage)
    assert record["status"] == "ok"
    assert result.score >= 15
    assert result.category == Category.SPAM  # Rspamd's action is "reject"
    assert any("GTUBE" in reason for reason in record["reasons"])
    assert record["data"]["action"] == "reject"


def test_rspamd_weight_scales_its_score(settings, rspamd_engine):
    settings.A3_RSPAMD_URL = rspamd_engine.address
    settings.A3_RSPAMD_WEIGHT = 0.5
    result, record = run(mail(body=GTUBE.decode()), rspamd_stage)
    assert result.score == pytest.approx(record["data"]["score"] * 0.5)
    assert record["data"]["score"] >= 15


def test_rspamd_ham_scores_low(settings, rspamd_engine):
    settings.A3_RSPAMD_URL = rspamd_engine.address
    result, record = run(mail(), rspamd_stage)
    assert record["status"] == "ok"
    assert result.score < 5
    assert result.category == ""


def test_rspamd_keeps_its_connection_across_scans(settings, rspamd_engine):
    settings.A3_RSPAMD_URL = rspamd_engine.address
    scores = [run(mail(body=GTUBE.decode()), rspamd_stage)[0].score for _ in range(5)]
    assert min(scores) >= 15


def test_rspamd_takes_an_internationalised_envelope(settings, rspamd_engine):
    settings.A3_RSPAMD_URL = rspamd_engine.address
    context = ScanContext(
        raw=mail(body=GTUBE.decode()), mail_from="jöran@exämple.test", helo="mx.exämple.test"
    )
    result = pipeline_run(context, stages=[rspamd_stage])
    assert result.stages[0]["status"] == "ok"
    assert result.score >= 15


@pytest.mark.django_db
def test_rspamd_is_told_the_envelope(blob_dir, mailbox_a):
    [message] = mailbox_services.messages_accept(
        incoming=[
            IncomingMessage(
                queue_id="Q1234",
                mail_from="sender@remote.test",
                recipients=(ALICE, "other@alpha.test"),
                raw=mail(),
                peer_ip="192.0.2.7",
                helo="client.test",
            )
        ]
    )
    context = ScanContext(
        raw=b"", mail_from="sender@remote.test", peer_ip="192.0.2.7", helo="client.test", message=message
    )
    assert rspamd_headers(context) == {
        "IP": "192.0.2.7",
        "From": "sender@remote.test",
        "Helo": "client.test",
        "Rcpt": [ALICE, "other@alpha.test"],
        "Queue-Id": "Q1234",
    }


def test_rspamd_down_is_a_scanner_failure(settings):
    settings.A3_RSPAMD_URL = f"http://{closed_port()}"
    result, record = run(mail(), rspamd_stage)
    assert (record["status"], result.failed_stages) == ("error", ["rspamd"])
    assert "Rspamd gave no verdict" in record["reasons"][0]


# --- SpamAssassin ----------------------------------------------------------------------


def test_spamd_scores_gtube(settings, spamd_engine):
    settings.A3_SPAMD_ADDRESS = spamd_engine.address
    result, record = run(mail(body=f"Buy now!\n{GTUBE.decode()}\n"), spamd_stage)
    assert record["status"] == "ok"
    assert result.score >= 1000  # GTUBE alone is worth 1000 points in SpamAssassin
    assert record["reasons"][0].startswith("SpamAssassin: GTUBE (")
    assert record["data"]["spam"] is True


def test_spamd_weight_scales_its_score(settings, spamd_engine):
    settings.A3_SPAMD_ADDRESS = spamd_engine.address
    settings.A3_SPAMD_WEIGHT = 0.01
    result, record = run(mail(body=GTUBE.decode()), spamd_stage)
    assert result.score == pytest.approx(record["data"]["score"] * 0.01)


def test_spamd_ham_is_not_spam(settings, spamd_engine):
    settings.A3_SPAMD_ADDRESS = spamd_engine.address
    result, record = run(mail(), spamd_stage)
    assert record["status"] == "ok"
    assert record["data"]["spam"] is False
    assert result.score < 5


def test_spamd_down_is_a_scanner_failure(settings):
    settings.A3_SPAMD_ADDRESS = closed_port()
    result, record = run(mail(), spamd_stage)
    assert (record["status"], result.failed_stages) == ("error", ["spamd"])
