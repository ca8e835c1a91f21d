"""`manage.py serve`: every role in one process (embedded mode), or a chosen subset."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.services import superuser_ensure_initial
from apps.core.roles import role_default_names, role_list


class Command(BaseCommand):
    help = "Run A3Mailer: HTTP/WebSocket, Celery worker and beat, and the mail listeners."

    def add_arguments(self, parser: CommandParser) -> None:
        names = ", ".join(f"{r.name} ({r.description})" for r in role_list())
        parser.add_argument(
            "--roles",
            default=",".join(role_default_names()),
            help=f"Comma-separated roles to run. Available: {names}.",
        )
        parser.add_argument("--skip-migrate", action="store_true", help="Do not apply migrations on start.")

    def handle(self, *args: object, **options: object) -> None:
        available = {role.name: role for role in role_list()}
        wanted = [name.strip() for name in str(options["roles"]).split(",") if name.strip()]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise CommandError(f"unknown role(s): {', '.join(unknown)}; see --help")
        if not wanted:
            raise CommandError("no roles selected")

        created = None
        # Only the process that migrates sets up the first superadmin: with several
        # processes starting together (smtpd, extra web roles) exactly one prints it.
        if not options["skip_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
            created = superuser_ensure_initial()
        if created is not None and created.generated_password:
            # Printed once, on stdout, never logged: the password exists nowhere else.
            self.stdout.write(
                self.style.WARNING(
                    "\n  First start: created superadmin\n"
                    f"    email:    {created.user.email}\n"
                    f"    password: {created.generated_password}\n"
                    "  Store it now; it is not shown again.\n"
                )
            )
        runners = [(name, available[name].factory()) for name in wanted]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._run(runners))

    async def _run(self, runners: list) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)

        started = []
        try:
            for name, runner in runners:
                await runner.start()
                started.append((name, runner))
                self.stdout.write(f"  {name:<11} {runner.describe()}")
            self.stdout.write(self.style.SUCCESS(f"A3Mailer is running (data: {settings.A3_DATA_DIR})."))
            sys.stdout.flush()
            await stopping.wait()
            self.stdout.write("Shutting down…")
        finally:
            for name, runner in reversed(started):
                began = time.monotonic()
                try:
                    await runner.stop()
                except Exception:  # noqa: BLE001 - keep stopping the other roles
                    self.stderr.write(f"error while stopping {name}")
                else:
                    self.stdout.write(f"  {name:<11} stopped in {time.monotonic() - began:.1f}s")

            self.stdout.write("Stopped.")
