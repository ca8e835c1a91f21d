"""A small OpenID provider (django-oidc-provider) for the end-to-end SSO test: run it with
DJANGO_SETTINGS_MODULE=tests.e2e.oidc_site.settings and OIDC_SITE_DIR set to a temporary
directory; `python -m tests.e2e.oidc_site.provision` prepares its database."""
