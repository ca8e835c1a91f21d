"""End to end: real `manage.py serve` processes, real HTTP and WebSocket clients."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.e2e.conftest import admin_token, api, free_port, installation

pytestmark = pytest.mark.e2e


def _ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.http_port}/ws/alerts/"


def _receive_kind(ws, kind: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if event.get("kind") == kind:
            return event
    raise AssertionError(f"no {kind} event within {timeout}s")


def test_serve_is_ready_with_every_check_and_a_worker_heartbeat(served):
    body = served.wait_ready()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "blob_store"}
    assert all(check["ok"] for check in body["checks"].values())
    # Beat (embedded) scheduled the heartbeat and the embedded worker ran it.
    assert served.wait_heartbeat() < 30


def test_serve_api_write_pushes_alert_over_websocket_with_bearer(served):
    token = admin_token(served)
    with connect(_ws_url(served), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        status, body = api(
            served,
            "POST",
            "/api/v1/users/",
            {"email": "ops@e2e.test", "password": "a-long-enough-password", "role": "domain_admin"},
            token=token,
        )
        assert status == 201, body
        event = _receive_kind(ws, "accounts.admin_created")
    assert {"id", "kind", "level", "message", "created_at"} <= set(event)
    assert "ops@e2e.test" in event["message"]
    status, alerts = api(served, "GET", "/api/v1/alerts/?kind=accounts.admin_created", token=token)
    assert status == 200
    assert event["id"] in [a["id"] for a in alerts["results"]]


def _close_code(url: str, headers: dict[str, str] | None = None) -> int:
    with connect(url, additional_headers=headers) as ws, pytest.raises(ConnectionClosed) as excinfo:
        ws.recv(timeout=5)
    return excinfo.value.rcvd.code


def test_serve_websocket_refuses_anonymous_and_bad_tokens(served):
    assert _close_code(_ws_url(served)) == 4401
    assert _close_code(_ws_url(served), {"Authorization": "Bearer a3_nope_nope"}) == 4401


def test_serve_websocket_rejects_cross_site_origin(served):
    with pytest.raises(InvalidStatus) as excinfo:
        connect(_ws_url(served), origin="https://evil.example").close()
    assert excinfo.value.response.status_code == 403


def test_serve_http_errors_are_json_not_500(served):
    token = admin_token(served)
    status, body = api(served, "POST", "/api/v1/domains/", {"name": "bad..name"}, token=token)
    assert status == 400 and body["code"] == "invalid_address" and "name" in body["fields"]
    status, body = api(served, "POST", "/api/v1/domains/", {"name": "ok.test", "bogus": 1}, token=token)
    assert status == 400 and body["fields"] == {"bogus": ["Unknown field."]}
    status, body = api(served, "GET", "/api/v1/domains/999999/", token=token)
    assert status == 404 and body["code"] == "not_found"


def test_serve_first_start_prints_generated_password_once_and_stops_cleanly(tmp_path):
    with installation(tmp_path) as server:
        del server.env["DJANGO_SUPERUSER_EMAIL"], server.env["DJANGO_SUPERUSER_PASSWORD"]
        server.env["A3_HOSTNAME"] = "mx.e2e.test"
        first = server.start("first", sys.executable, "manage.py", "serve")  # every role
        server.wait_ready()
        printed = re.search(r"email:\s+(\S+)\s+password:\s+(\S+)", first.log())
        assert printed, first.log()
        email, password = printed.groups()
        assert email == "admin@mx.e2e.test"
        status, body = api(server, "POST", "/api/v1/auth/token/", {"email": email, "password": password})
        assert status == 201 and body["token"].startswith("a3_")
        codes = server.stop()
        assert codes == {"first": 0}, server.logs()
        assert "Stopped." in first.log()
        assert re.findall(r"(\w+)\s+stopped in", first.log()) == [
            "submission",
            "smtp",
            "beat",
            "worker",
            "web",
        ]

        server.procs.clear()
        second = server.start("second", sys.executable, "manage.py", "serve", "--roles", "web")
        server.wait_ready()
        assert "First start" not in second.log()
        assert password not in second.log()


@pytest.mark.skipif(
    not (os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")),
    reason="scale-out mode needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL)",
)
def test_scale_out_roles_share_postgres_and_redis(tmp_path):
    """Two web processes, a Celery worker and beat as separate processes: an API write on
    one web process reaches a WebSocket on the other through Redis, and beat + worker
    record heartbeats in PostgreSQL."""
    with installation(tmp_path) as web1:
        web1.start("web1", sys.executable, "manage.py", "serve", "--roles", "web")
        web1.wait_ready()
        web1.start(
            "worker",
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_workers",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "-Q",
            "default,mail,scan,backup",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "WARNING",
        )
        web1.start(
            "beat",
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_workers",
            "beat",
            "--loglevel",
            "WARNING",
            "--max-interval",
            "1",
        )
        web2_port = free_port()
        web1.start(
            "web2",
            sys.executable,
            "manage.py",
            "serve",
            "--roles",
            "web",
            "--skip-migrate",
            env={"A3_HTTP_LISTEN": f"127.0.0.1:{web2_port}"},
        )

        body = web1.wait_ready()
        assert body["checks"]["database"]["detail"] == "postgresql"
        assert body["checks"]["broker"]["detail"] == "redis"
        assert web1.wait_heartbeat(timeout=60) < 30

        token = admin_token(web1)
        ws_url = f"ws://127.0.0.1:{web2_port}/ws/alerts/"
        deadline = time.monotonic() + 30
        while True:  # web2 may still be starting
            try:
                ws = connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        with ws:
            status, body = api(web1, "POST", "/api/v1/domains/", {"name": "scaled.test"}, token=token)
            assert status == 201, body
            event = _receive_kind(ws, "mailboxes.domain_created")
        assert event["domain_id"] == body["id"]
        codes = web1.stop()
        assert all(code == 0 for name, code in codes.items() if name in {"web1", "web2"}), web1.logs()
