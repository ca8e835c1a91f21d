"""Single sign-on: OpenID Connect (generic, Google and Microsoft Entra presets) and SAML 2.0
through social-auth, configured per identity provider (accounts.SsoProvider).

- backends.py   social-core backends that read their settings from an SsoProvider row
- pipeline.py   our social-auth pipeline steps: link by verified email, provisioning, roles,
                second-factor assurance; each calls a service
- services.py   the rules: providers (create, change, sync from the environment), accounts,
                roles, MFA trust, SAML replay protection, the start of the session
- flow.py       begin and complete a sign-in with social-core's actions
- saml.py       the service-provider side of SAML: settings and metadata
- views.py      dashboard pages and the sign-in endpoints
"""
