from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from apps.compliance import services
from apps.compliance.models import AuditStreamState
from apps.compliance.tasks import audit_stream_task
from apps.core.exceptions import TemporaryFailure

pytestmark = pytest.mark.django_db


def test_stream_does_nothing_when_no_destination_is_configured():
    services.audit_record(action="test.quiet")

    assert services.audit_stream_send() == {}
    assert not AuditStreamState.objects.exists()


def test_stream_sends_rfc5424_datagrams_over_udp_and_advances(settings):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    settings.A3_AUDIT_SYSLOG = f"udp://127.0.0.1:{receiver.getsockname()[1]}"
    settings.A3_AUDIT_STREAM_BATCH = 2
    events = [services.audit_record(action=f"test.udp{i}", target=("thing", i, "t")) for i in range(3)]

    try:
        assert services.audit_stream_send() == {"syslog": 3}
        lines = [receiver.recv(65535) for _ in range(3)]
    finally:
        receiver.close()

    header, _, rest = lines[0].partition(b" [")
    assert header.startswith(b"<110>1 ")  # facility log audit, severity informational, version 1
    assert header.endswith(b" a3mailer - test.udp0")
    assert f'id="{events[0].pk}"'.encode() in rest
    body = json.loads(rest.split(b"\xef\xbb\xbf", 1)[1])
    assert body["hash"] == events[0].hash and body["action"] == "test.udp0"
    assert AuditStreamState.objects.get(destination="syslog").last_event_id == events[-1].pk
    assert services.audit_stream_send() == {"syslog": 0}  # nothing new, nothing resent


def test_stream_frames_tcp_messages_with_octet_counting(settings):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    settings.A3_AUDIT_SYSLOG = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    services.audit_record(action="test.tcp")
    received = bytearray()

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65535):
                received.extend(chunk)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        services.audit_stream_send()
        thread.join(5)
    finally:
        server.close()

    length, _, frame = bytes(received).partition(b" ")
    assert int(length) == len(frame)
    assert b"test.tcp" in frame


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook(settings):
    _Hook.received = []
    _Hook.status = 200
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.A3_AUDIT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hook"
    settings.A3_AUDIT_WEBHOOK_SECRET = "s3cret"
    yield _Hook
    server.shutdown()
    server.server_close()


def test_stream_posts_signed_json_batches_to_the_webhook(webhook, settings):
    settings.A3_AUDIT_STREAM_BATCH = 2
    events = [services.audit_record(action=f"test.hook{i}") for i in range(3)]

    assert audit_stream_task.run() == {"webhook": 3}

    assert len(webhook.received) == 2
    headers, body = webhook.received[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-A3-Signature"] == expected
    assert [e["id"] for e in json.loads(body)["events"]] == [events[0].pk, events[1].pk]
    assert AuditStreamState.objects.get(destination="webhook").last_event_id == events[-1].pk


def test_stream_keeps_its_place_when_the_webhook_fails(webhook):
    webhook.status = 500
    event = services.audit_record(action="test.retry")

    with pytest.raises(TemporaryFailure):
        services.audit_stream_send()
    assert AuditStreamState.objects.get(destination="webhook").last_event_id == 0

    webhook.status = 200
    assert services.audit_stream_send() == {"webhook": 1}  # at-least-once: sent again
    assert json.loads(webhook.received[-1][1])["events"][0]["id"] == event.pk
