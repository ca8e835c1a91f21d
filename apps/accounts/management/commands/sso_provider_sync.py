"""Write the OpenID Connect provider described by the environment (A3_OIDC_*) to the
database; run it after deploying or changing those variables."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.sso.services import sso_provider_sync_from_settings
from apps.core.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Create or update the OpenID Connect provider given by A3_OIDC_ISSUER, A3_OIDC_CLIENT_ID, A3_OIDC_CLIENT_SECRET and A3_OIDC_NAME."

    def handle(self, *args: object, **options: object) -> None:
        try:
            provider = sso_provider_sync_from_settings()
        except ApplicationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.fields.items())
            raise CommandError(f"{exc.message} {problems}".strip()) from None
        if provider is None:
            self.stdout.write("A3_OIDC_ISSUER is not set: nothing to do.")
            return
        self.stdout.write(f"Identity provider {provider.slug} ({provider.get_kind_display()}) is up to date.")
