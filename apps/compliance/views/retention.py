"""Dashboard pages for retention policies, their runs, and legal holds (superadmins)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_safe

from apps.compliance.models import LegalHold
from apps.compliance.services import holds as hold_services
from apps.compliance.services import retention as retention_services
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.permissions import superadmin_required
from apps.mailboxes import selectors as mail_selectors
from apps.mailboxes.models import Folder

# --- Retention policies ------------------------------------------------------------------


class RetentionPolicyForm(forms.Form):
    domain = forms.ModelChoiceField(queryset=None, required=False, empty_label="Every domain")
    folder_special_use = forms.ChoiceField(
        choices=[("", "Every folder"), *[c for c in Folder.SpecialUse.choices if c[0]]],
        required=False,
        label="Folder",
    )
    days = forms.IntegerField(min_value=1, help_text="Delete mail filed longer ago than this.")
    description = forms.CharField(max_length=255, required=False)
    is_active = forms.BooleanField(required=False, initial=True, label="Active")

    def __init__(self, *args: object, actor: object, editing: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["domain"].queryset = mail_selectors.domain_list(actor=actor)
        if editing:
            self.fields["domain"].disabled = True  # fixed: delete and add another instead


@superadmin_required
@require_safe
def retention_list_view(request: HttpRequest) -> HttpResponse:
    policies = retention_services.retention_policy_list(actor=request.user)
    runs = retention_services.retention_run_list(actor=request.user)[:10]
    return render(request, "compliance/retention_list.html", {"policies": policies, "runs": runs})


@superadmin_required
def retention_create_view(request: HttpRequest) -> HttpResponse:
    form = RetentionPolicyForm(request.POST or None, actor=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            policy = retention_services.retention_policy_create(actor=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Retention policy added: {policy}.")
            return redirect("compliance:retention-list")
    return render(request, "compliance/retention_form.html", {"form": form, "policy": None})


@superadmin_required
def retention_edit_view(request: HttpRequest, policy_id: int) -> HttpResponse:
    policy = retention_services.retention_policy_get(actor=request.user, policy_id=policy_id)
    initial = {
        "domain": policy.domain,
        "folder_special_use": policy.folder_special_use,
        "days": policy.days,
        "description": policy.description,
        "is_active": policy.is_active,
    }
    form = RetentionPolicyForm(request.POST or None, actor=request.user, editing=True, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        data.pop("domain")
        try:
            policy = retention_services.retention_policy_update(actor=request.user, policy=policy, **data)
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Retention policy saved: {policy}.")
            return redirect("compliance:retention-list")
    return render(request, "compliance/retention_form.html", {"form": form, "policy": policy})


@superadmin_required
def retention_delete_view(request: HttpRequest, policy_id: int) -> HttpResponse:
    """GET asks for confirmation; POST deletes."""
    policy = retention_services.retention_policy_get(actor=request.user, policy_id=policy_id)
    if request.method == "POST":
        label = str(policy)
        retention_services.retention_policy_delete(actor=request.user, policy=policy)
        messages.success(request, f"Retention policy deleted: {label}.")
        return redirect("compliance:retention-list")
    return render(request, "compliance/retention_confirm_delete.html", {"policy": policy})


@superadmin_required
@require_safe
def retention_preview_view(request: HttpRequest) -> HttpResponse:
    """What a run would delete now, per mailbox; reads only."""
    plan = retention_services.retention_plan()
    return render(request, "compliance/retention_preview.html", {"plan": plan})


@superadmin_required
@require_safe
def retention_runs_view(request: HttpRequest) -> HttpResponse:
    runs = retention_services.retention_run_list(actor=request.user)[:100]
    return render(request, "compliance/retention_runs.html", {"runs": runs})


# --- Legal holds ---------------------------------------------------------------------------


class LegalHoldForm(forms.Form):
    scope = forms.ChoiceField(choices=LegalHold.Scope.choices)
    mailbox = forms.ModelChoiceField(
        queryset=None, required=False, help_text="Mailbox scope; narrows a search to this mailbox."
    )
    domain = forms.ModelChoiceField(
        queryset=None, required=False, help_text="Domain scope; narrows a search to this domain."
    )
    sender = forms.CharField(
        max_length=254, required=False, help_text="Search: the envelope sender or From contains this."
    )
    date_from = forms.DateTimeField(required=False, help_text="Search: received from (YYYY-MM-DD HH:MM).")
    date_to = forms.DateTimeField(required=False, help_text="Search: received until.")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Case or request reference.")
    ends_at = forms.DateTimeField(required=False, help_text="Optional: the hold lapses then.")

    def __init__(self, *args: object, actor: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["mailbox"].queryset = mail_selectors.mailbox_list(actor=actor)
        self.fields["domain"].queryset = mail_selectors.domain_list(actor=actor)


@superadmin_required
@require_safe
def holds_list_view(request: HttpRequest) -> HttpResponse:
    holds = hold_services.legal_hold_list(actor=request.user)
    return render(request, "compliance/holds_list.html", {"holds": holds, "now": timezone.now()})


@superadmin_required
def holds_create_view(request: HttpRequest) -> HttpResponse:
    form = LegalHoldForm(request.POST or None, actor=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            hold = hold_services.legal_hold_create(actor=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Legal hold {hold.pk} placed.")
            return redirect("compliance:holds-list")
    return render(request, "compliance/holds_form.html", {"form": form})


@superadmin_required
def holds_release_view(request: HttpRequest, hold_id: int) -> HttpResponse:
    """GET asks for confirmation; POST releases."""
    hold = hold_services.legal_hold_get(actor=request.user, hold_id=hold_id)
    if request.method == "POST":
        hold_services.legal_hold_release(actor=request.user, hold=hold)
        messages.success(request, f"Legal hold {hold.pk} released.")
        return redirect("compliance:holds-list")
    return render(request, "compliance/holds_release.html", {"hold": hold})
