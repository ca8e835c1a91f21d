"""Dashboard pages for transport rules (superadmins): where mail for a recipient domain
goes instead of the domain's MX hosts, "*" being a smarthost for every domain.

The relay password is write-only here as in the API: forms never render it back.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters

from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.permissions import superadmin_required
from apps.relay import selectors, services
from apps.relay.models import TransportRule


class TransportRuleForm(forms.Form):
    domain = forms.CharField(
        max_length=253, help_text="Recipient domain, or * for every domain (a smarthost)."
    )
    host = forms.CharField(max_length=253, help_text="Host name or IP address of the next hop.")
    port = forms.IntegerField(min_value=1, max_value=65535, initial=25)
    tls = forms.ChoiceField(
        choices=TransportRule.Tls.choices, initial=TransportRule.Tls.OPPORTUNISTIC, label="TLS"
    )
    verify_certificate = forms.BooleanField(
        required=False, help_text="Check the host's certificate and name (with STARTTLS or implicit TLS)."
    )
    username = forms.CharField(
        max_length=254, required=False, help_text="For SMTP AUTH at the host; optional."
    )
    password = forms.CharField(
        max_length=256,
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}, render_value=False),
    )
    clear_password = forms.BooleanField(required=False, label="Remove the stored password")
    description = forms.CharField(max_length=255, required=False)
    is_active = forms.BooleanField(required=False, initial=True, label="Active")

    def __init__(self, *args: object, rule: TransportRule | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        if rule is None:
            del self.fields["clear_password"]
        else:
            # The domain names the rule; to route another domain, add another rule.
            del self.fields["domain"]
            self.fields["password"].help_text = (
                "A password is stored; leave empty to keep it."
                if rule.password
                else "Leave empty for no authentication."
            )
            if not rule.password:
                del self.fields["clear_password"]

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        clear = data.pop("clear_password", False)
        password = data.pop("password")
        if self.rule is None:
            data["password"] = password
        elif clear:
            data["password"] = ""
        elif password:
            data["password"] = password
        return data


@superadmin_required
def transport_list_view(request: HttpRequest) -> HttpResponse:
    rules = selectors.transport_rule_list(request.user)
    return render(request, "relay/transport_list.html", {"rules": rules})


@superadmin_required
@sensitive_post_parameters("password")
def transport_create_view(request: HttpRequest) -> HttpResponse:
    form = TransportRuleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            rule = services.transport_rule_create(actor=request.user, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Mail for {rule.domain} now goes to {rule.host}:{rule.port}.")
            return redirect("relay:transport-list")
    return render(request, "relay/transport_form.html", {"form": form, "creating": True})


@superadmin_required
@sensitive_post_parameters("password")
def transport_edit_view(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = selectors.transport_rule_get(request.user, rule_id)
    initial = {
        "host": rule.host,
        "port": rule.port,
        "tls": rule.tls,
        "verify_certificate": rule.verify_certificate,
        "username": rule.username,
        "description": rule.description,
        "is_active": rule.is_active,
    }
    form = TransportRuleForm(request.POST or None, initial=initial, rule=rule)
    if request.method == "POST" and form.is_valid():
        try:
            services.transport_rule_update(rule=rule, actor=request.user, **form.service_kwargs())
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Transport rule for {rule.domain} saved.")
            return redirect("relay:transport-list")
    return render(request, "relay/transport_form.html", {"form": form, "rule": rule})


@superadmin_required
def transport_delete_view(request: HttpRequest, rule_id: int) -> HttpResponse:
    """GET asks for confirmation; POST deletes."""
    rule = selectors.transport_rule_get(request.user, rule_id)
    if request.method == "POST":
        services.transport_rule_delete(rule=rule, actor=request.user)
        messages.success(request, f"Transport rule for {rule.domain} deleted.")
        return redirect("relay:transport-list")
    return render(request, "relay/transport_confirm_delete.html", {"rule": rule})
