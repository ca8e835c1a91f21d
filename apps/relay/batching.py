"""Group commit for acknowledged mail.

Each SMTP session that finishes DATA writes its message's blob itself, on a thread, so
that many sessions' fsyncs run at once (the filesystem journal merges them). It then
hands the message to the one AcceptBatcher, which commits every waiting message's rows
in a single durable transaction and wakes each session to send its 250. Under load many
sessions share one commit; a lone message waits for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from apps.mailboxes import services as mail_services
from apps.mailboxes.services import IncomingMessage
from apps.relay.metrics import ACCEPT_BATCH_SIZE, ACCEPT_SECONDS

logger = logging.getLogger(__name__)


class AcceptBatcher:
    def __init__(self, *, max_batch: int = 128) -> None:
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[IncomingMessage, asyncio.Future, float]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="smtp-accept-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def submit(self, incoming: IncomingMessage) -> None:
        """Return once the message is durable; raise if it could not be stored."""
        from apps.relay.smtp import run_io

        self.start()
        started = time.monotonic()
        sha256 = await run_io(mail_services.message_blob_store, raw=incoming.raw)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((dataclasses.replace(incoming, blob_sha256=sha256), future, started))
        await future

    async def _run(self) -> None:
        from apps.relay.smtp import run_db

        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await run_db(mail_services.messages_accept, incoming=[item for item, _, _ in batch])
            except Exception as exc:
                logger.exception("group commit of %d message(s) failed", len(batch))
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                now = time.monotonic()
                ACCEPT_BATCH_SIZE.observe(len(batch))
                for _, future, started in batch:
                    ACCEPT_SECONDS.observe(now - started)
                    if not future.done():
                        future.set_result(None)
            finally:
                for _ in batch:
                    self._queue.task_done()
