"""The role registry: the long-running parts of A3Mailer that `manage.py serve` can host.

A role is a named factory for a runner with async `start()` (returns once the role is
serving) and `stop()` (returns once it has drained). Apps register their roles in
`AppConfig.ready()`; `serve` starts the chosen ones in one process, in registration order,
and stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

logger = logging.getLogger(__name__)


class RoleRunner(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    factory: Callable[[], RoleRunner]
    default: bool = True


_registry: dict[str, Role] = {}


def role_register(role: Role) -> None:
    _registry[role.name] = role


def role_list() -> list[Role]:
    return list(_registry.values())


def role_default_names() -> list[str]:
    return [role.name for role in _registry.values() if role.default]


# --- Built-in roles --------------------------------------------------------------------


class WebRunner:
    """ASGI server (uvicorn) for the dashboard, the API and the WebSockets."""

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        import uvicorn

        default_host, default_port = settings.A3_HTTP_LISTEN
        self.host = host or default_host
        self.port = default_port if port is None else port
        config = uvicorn.Config(
            "a3mailer.asgi:application",
            host=self.host,
            port=self.port,
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )

        class _Server(uvicorn.Server):
            # `serve` owns SIGTERM/SIGINT so that every role drains, not just HTTP.
            @contextmanager
            def capture_signals(self):  # type: ignore[override]
                yield

        self.server = _Server(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        from apps.core.realtime import set_home_loop

        set_home_loop(asyncio.get_running_loop())
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()  # re-raise the bind error
                raise RuntimeError("web server exited during startup")
            await asyncio.sleep(0.02)
        sock = self.server.servers[0].sockets[0] if self.server.servers else None
        if sock is not None:
            self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task

    def describe(self) -> str:
        return f"http://{self.host}:{self.port}/"


class WorkerRunner:
    """A Celery worker on a thread pool, consuming every queue, inside this process."""

    def __init__(self, concurrency: int | None = None) -> None:
        self.concurrency = concurrency or settings.A3_WORKER_CONCURRENCY
        self._thread: threading.Thread | None = None
        self._worker = None

    async def start(self) -> None:
        from celery.worker import WorkController

        from celery_workers import app
        from celery_workers.config import QUEUES

        ready = threading.Event()

        class _Worker(WorkController):
            def on_consumer_ready(self, consumer):
                ready.set()

        app.loader.import_default_modules()
        self._worker = _Worker(
            app=app,
            hostname=f"embedded@{socket.gethostname()}",
            pool_cls="threads",
            concurrency=self.concurrency,
            queues=list(QUEUES),
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            optimization="fair",
        )
        self._thread = threading.Thread(target=self._worker.start, name="celery-worker", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("the embedded Celery worker did not start within 30 s")

    async def stop(self) -> None:
        from celery.worker import state

        if self._thread is None:
            return
        state.should_stop = 0  # warm shutdown: running tasks finish first
        await asyncio.to_thread(self._thread.join, 30)
        state.should_stop = None
        if self._thread.is_alive():
            logger.warning("embedded worker still busy after 30 s; leaving it to the sweep")

    def describe(self) -> str:
        return f"celery worker, {self.concurrency} threads, broker {_broker_label()}"


class BeatRunner:
    """Celery beat on a thread, reading its schedule from the database (django-celery-beat)."""

    def __init__(self) -> None:
        self._service = None

    async def start(self) -> None:
        from celery.beat import EmbeddedService

        from celery_workers import app

        # Celery's Service defaults to the file-based PersistentScheduler; use the
        # configured (database) scheduler like `celery beat` does.
        self._service = EmbeddedService(
            app, thread=True, max_interval=2, scheduler_cls=app.conf.beat_scheduler
        )

        self._service.start()

    async def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            await asyncio.to_thread(self._service.join, 10)

    def describe(self) -> str:
        return "celery beat (database schedule)"


def _broker_label() -> str:
    # Only the scheme: the URL may carry a password.
    return settings.CELERY_BROKER_URL.split("://", 1)[0] + "://"


role_register(Role("web", "HTTP, REST API and WebSocket server (uvicorn)", WebRunner))
role_register(Role("worker", "Celery worker on a thread pool", WorkerRunner))
role_register(Role("beat", "Celery beat scheduler", BeatRunner))
