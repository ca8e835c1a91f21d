"""`manage.py smtpd`: the SMTP listeners alone (scale-out mode)."""

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Run only the SMTP listeners: MX and submission. Several processes can share the "
        "listening ports (SO_REUSEPORT)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--roles", default="smtp,submission", help="Listeners to run (default: both).")

    def handle(self, *args: object, **options: object) -> None:
        call_command("serve", roles=options["roles"], skip_migrate=True)
