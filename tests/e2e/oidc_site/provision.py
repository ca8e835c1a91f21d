"""Prepare the test provider's database: tables, a signing key, one user, one client.

python -m tests.e2e.oidc_site.provision --redirect-uri URI --client-id ID --client-secret S
    --username NAME --email ADDRESS --password P
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("redirect-uri", "client-id", "client-secret", "username", "email", "password"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.oidc_site.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from oidc_provider.models import Client, ResponseType

    call_command("migrate", interactive=False, verbosity=0)
    call_command("creatersakey", verbosity=0)
    User.objects.create_user(
        username=args.username,
        email=args.email,
        password=args.password,
        first_name="Ada",
        last_name="Example",
    )
    client = Client.objects.create(
        name="A3Mailer",
        client_type="confidential",
        client_id=args.client_id,
        client_secret=args.client_secret,
        jwt_alg="RS256",
        require_consent=False,
        reuse_consent=True,
        redirect_uris=[args.redirect_uri],
        scope=["openid", "email", "profile"],
    )
    client.response_types.add(ResponseType.objects.get(value="code"))


if __name__ == "__main__":
    main()
