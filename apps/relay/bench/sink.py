"""The remote end of the outbound benchmark: an aiosmtpd server that accepts every message
and discards it, after appending one line to a log: the time it arrived
(time.monotonic(), the same clock in every process of the machine) and its Message-ID.

Runs as a process of its own, `python -m apps.relay.bench.sink PORT LOGFILE`, so that it
takes no CPU from the load generator's process; it needs no Django. Stopped by SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def message_id_of(content: bytes) -> str:
    end = content.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(content if end < 0 else content[:end])
    return match.group(1).decode("ascii", "replace") if match else "<none>"


class _Handler:
    def __init__(self, log) -> None:
        self.log = log

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        arrived = time.monotonic()
        recipients = len(envelope.rcpt_tos)
        # One line per recipient: a relay may send one copy to several of them.
        line = f"{arrived:.6f} {message_id_of(envelope.original_content or b'')}\n" * recipients
        self.log.write(line)
        self.log.flush()
        return "250 2.0.0 Ok: discarded"


def read_arrivals(path: Path) -> list[tuple[float, str]]:
    """(arrival time, Message-ID) for every message the sink has accepted so far."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    arrivals = []
    for line in text.splitlines():
        stamp, _, message_id = line.partition(" ")
        if message_id:  # a line still being written has no Message-ID yet
            arrivals.append((float(stamp), message_id))
    return arrivals


async def _serve(port: int, log_path: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with log_path.open("a", buffering=1) as log:
        handler = _Handler(log)
        server = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="sink.bench.test",
                decode_data=False,
                data_size_limit=64 * 2**20,
                enable_SMTPUTF8=True,
            ),
            host="127.0.0.1",
            port=port,
        )
        print(f"sink listening on 127.0.0.1:{port}", flush=True)
        await stop.wait()
        server.close()


def main(argv: list[str]) -> None:
    port, log_path = int(argv[1]), Path(argv[2])
    asyncio.run(_serve(port, log_path))


if __name__ == "__main__":
    main(sys.argv)
