"""`manage.py audit_verify`: check the audit hash chain; exit code 1 when it is broken."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.compliance import services


class Command(BaseCommand):
    help = "Verify the audit log's hash chain. Exits 1 and names the first broken event when tampered."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=1000, help="rows read per query")

    def handle(self, *args: object, batch: int, **options: object) -> None:
        result = services.audit_verify(batch=max(1, batch))
        if not result.ok:
            raise CommandError(
                f"Audit chain broken at event {result.first_broken_id}: {result.reason} "
                f"({result.checked} checked)",
                returncode=1,
            )
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {result.checked} events checked."))
