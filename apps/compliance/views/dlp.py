"""Dashboard pages for outbound DLP policies (administrators, scoped to their domains)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from apps.compliance.models import DlpPolicy
from apps.compliance.services import dlp as dlp_services
from apps.compliance.services.classification import CATEGORIES
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.permissions import admin_required
from apps.mailboxes import selectors as mail_selectors


class DlpPolicyForm(forms.Form):
    domain = forms.ModelChoiceField(queryset=None, empty_label=None)
    category = forms.ChoiceField(choices=sorted(CATEGORIES.items()))
    threshold = forms.IntegerField(
        min_value=0, initial=0, help_text="Act when a message holds more than this many distinct items."
    )
    action = forms.ChoiceField(choices=DlpPolicy.Action.choices, initial=DlpPolicy.Action.HOLD)
    is_active = forms.BooleanField(required=False, initial=True, label="Active")

    def __init__(self, *args: object, actor: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["domain"].queryset = mail_selectors.domains_manageable(actor=actor)


@admin_required
def dlp_policy_list_view(request: HttpRequest) -> HttpResponse:
    policies = dlp_services.dlp_policy_list(actor=request.user)
    hits = dlp_services.dlp_hit_list(actor=request.user)[:20]
    return render(
        request,
        "compliance/dlp_list.html",
        {"policies": policies, "hits": hits, "categories": CATEGORIES},
    )


@admin_required
def dlp_policy_create_view(request: HttpRequest) -> HttpResponse:
    form = DlpPolicyForm(request.POST or None, actor=request.user)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        try:
            policy = dlp_services.dlp_policy_create(
                actor=request.user, domain_id=data.pop("domain").pk, **data
            )
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"DLP policy added for {policy.domain.name}: {policy.category}.")
            return redirect("compliance:dlp-list")
    return render(request, "compliance/dlp_form.html", {"form": form})


@admin_required
def dlp_policy_delete_view(request: HttpRequest, policy_id: int) -> HttpResponse:
    """GET asks for confirmation; POST deletes."""
    policy = dlp_services.dlp_policy_get(actor=request.user, policy_id=policy_id)
    if request.method == "POST":
        dlp_services.dlp_policy_delete(actor=request.user, policy=policy)
        messages.success(request, f"DLP policy for {policy.domain.name} ({policy.category}) deleted.")
        return redirect("compliance:dlp-list")
    return render(request, "compliance/dlp_confirm_delete.html", {"policy": policy})
