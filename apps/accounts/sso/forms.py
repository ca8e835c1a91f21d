"""The dashboard form for identity providers: input format only; the rules are in
services._provider_clean."""

from __future__ import annotations

from django import forms

from apps.accounts.models import SsoProvider, User


class RoleMappingField(forms.CharField):
    """One "group = role" per line."""

    widget = forms.Textarea(attrs={"rows": 4})

    def prepare_value(self, value: object) -> object:
        if isinstance(value, dict):
            return "\n".join(f"{group} = {role}" for group, role in value.items())
        return value

    def to_python(self, value: object) -> dict[str, str]:
        text = super().to_python(value)
        mapping: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            group, sep, role = line.rpartition("=")
            if not sep or not group.strip() or not role.strip():
                raise forms.ValidationError(f"Line {number}: write “group = role”.")
            mapping[group.strip()] = role.strip()
        return mapping


class DomainListField(forms.CharField):
    def prepare_value(self, value: object) -> object:
        if isinstance(value, (list, tuple)):
            return ", ".join(str(item) for item in value)
        return value

    def to_python(self, value: object) -> list[str]:
        text = super().to_python(value)
        return [item for item in text.replace(",", " ").split() if item]


class SsoProviderForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Shown on the sign-in button.")
    slug = forms.SlugField(
        max_length=40,
        help_text="Part of the OpenID Connect callback URL (/accounts/sso/complete/<slug>/).",
    )
    kind = forms.ChoiceField(choices=SsoProvider.Kind.choices)
    enabled = forms.BooleanField(required=False, initial=True)
    issuer = forms.CharField(
        required=False,
        max_length=200,
        help_text="OpenID Connect issuer. Google: https://accounts.google.com (filled in when empty). "
        "Microsoft Entra: https://login.microsoftonline.com/<tenant ID>/v2.0.",
    )
    client_id = forms.CharField(required=False, max_length=255, label="Client ID")
    client_secret = forms.CharField(
        required=False,
        max_length=1000,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the stored secret.",
    )
    clear_secret = forms.BooleanField(required=False, label="Remove the stored client secret")
    scopes = forms.CharField(max_length=255, initial="openid email profile")
    idp_entity_id = forms.CharField(required=False, max_length=255, label="SAML IdP entity ID")
    idp_sso_url = forms.CharField(required=False, max_length=200, label="SAML IdP sign-on URL")
    idp_x509_cert = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        label="SAML IdP signing certificate",
        help_text="PEM, from the identity provider's metadata.",
    )
    jit_provisioning = forms.BooleanField(
        required=False, label="Create accounts on first sign-in (for the domains below)"
    )
    jit_domains = DomainListField(
        required=False, label="Provisioning domains", help_text="Comma-separated, e.g. example.com"
    )
    groups_claim = forms.CharField(
        required=False,
        max_length=100,
        help_text="The claim (OIDC) or attribute (SAML) that lists the user's groups, e.g. groups.",
    )
    role_mapping = RoleMappingField(
        required=False,
        help_text="One “group = role” per line; roles: "
        + ", ".join(User.Role.values)
        + ". “* = role” applies when no group matches (it never demotes a superadmin).",
    )
    trust_idp_mfa = forms.BooleanField(
        required=False,
        label="Trust this provider's second factor",
        help_text="A sign-in counts as MFA when the provider asserts it (amr/acr).",
    )

    def values(self, *, creating: bool) -> dict[str, object]:
        """The cleaned input as the service's values: the secret only when typed or cleared."""
        data = dict(self.cleaned_data)
        secret = data.pop("client_secret", "")
        clear = data.pop("clear_secret", False)
        if secret:
            data["client_secret"] = secret
        elif clear and not creating:
            data["client_secret"] = ""
        return data
