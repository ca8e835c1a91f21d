"""`manage.py smtpd`: the SMTP listener alone (scale-out mode)."""

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run only the SMTP (MX) listener. Several can share A3_SMTP_LISTEN (SO_REUSEPORT)."

    def handle(self, *args: object, **options: object) -> None:
        call_command("serve", roles="smtp", skip_migrate=True)
