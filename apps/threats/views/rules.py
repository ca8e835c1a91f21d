"""Threat rules in the dashboard.

Administrators (`/quarantine/rules/`): allow and block lists, content rules and each
domain's verdict policy. Everyone (`/quarantine/lists/`): the allow and block list of
their own mailbox and how often its quarantine digest arrives.

Forms check the shape of the input; services/rules.py and services/preferences.py
decide who may change what and validate values. Their refusals come back as form errors
(ApplicationError.fields) or a message on the page.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_POST, require_safe

from apps.core.exceptions import ApplicationError, NotFoundError
from apps.core.permissions import admin_required
from apps.mailboxes.models import Domain, Mailbox
from apps.threats import selectors
from apps.threats.models import Action, ContentRule, DigestFrequency, ListEntry, ScannerFailureMode
from apps.threats.services import preferences as preference_services
from apps.threats.services import rules as rule_services

ENTRY_PAGE_SIZE = 50
SERVER_WIDE = ""


def _apply_errors(form: forms.Form, error: ApplicationError) -> None:
    """Put a service's field errors on the form's fields (the rest on the form)."""
    placed = False
    for name, problems in error.fields.items():
        for problem in problems:
            form.add_error(name if name in form.fields else None, problem)
            placed = True
    if not placed:
        form.add_error(None, error.message)


def _scope_choices(user) -> list[tuple[str, str]]:
    choices = [(SERVER_WIDE, "Server-wide (every domain)")] if user.is_superadmin else []
    choices += [
        (str(pk), name)
        for pk, name in selectors.domains_administered(user).order_by("name").values_list("pk", "name")
    ]
    return choices


class ScopedForm(forms.Form):
    """A form whose `scope` is a domain the user administers, or server-wide for superadmins."""

    scope = forms.ChoiceField(label="Applies to", required=False)
    id_prefix = "scoped"

    def __init__(self, *args: object, user, **kwargs: object) -> None:
        # Several forms share one page: distinct element ids keep their labels apart.
        kwargs.setdefault("auto_id", f"{self.id_prefix}_%s")
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["scope"].choices = _scope_choices(user)

    def domain(self) -> Domain | None:
        value = self.cleaned_data.get("scope") or SERVER_WIDE
        return None if value == SERVER_WIDE else selectors.domains_administered(self.user).get(pk=int(value))


class ListEntryForm(ScopedForm):
    kind = forms.ChoiceField(choices=ListEntry.Kind.choices)
    match = forms.ChoiceField(choices=ListEntry.Match.choices)
    value = forms.CharField(
        max_length=254, help_text="An address, a domain, or an IP address or network (CIDR)"
    )
    mailbox = forms.CharField(
        max_length=254, required=False, label="Only for mailbox", help_text="Optional: one mailbox's own list"
    )
    comment = forms.CharField(max_length=200, required=False)

    id_prefix = "entry"
    field_order = ["kind", "match", "value", "scope", "mailbox", "comment"]

    def clean_mailbox(self) -> Mailbox | None:
        address = (self.cleaned_data.get("mailbox") or "").strip()
        if not address:
            return None
        mailbox = selectors.mailboxes_in_scope(self.user).filter(address__iexact=address).first()
        if mailbox is None:
            raise forms.ValidationError("No such mailbox of yours.")
        return mailbox


class ContentRuleForm(ScopedForm):
    name = forms.CharField(max_length=100)
    target = forms.ChoiceField(choices=ContentRule.Target.choices, initial=ContentRule.Target.SUBJECT)
    header_name = forms.CharField(
        max_length=100, required=False, help_text="For header rules: the header's name"
    )
    pattern = forms.CharField(max_length=1000, help_text="A regular expression, matched case-insensitively")
    score = forms.FloatField(help_text="Added on a match; negative makes mail look less like spam")
    is_active = forms.BooleanField(required=False, initial=True, label="Active")

    id_prefix = "rule"
    field_order = ["name", "target", "header_name", "pattern", "score", "scope", "is_active"]


class PolicyForm(forms.Form):
    header_score = forms.FloatField(label="Add a spam header from score")
    junk_score = forms.FloatField(label="File to Junk from score")
    quarantine_score = forms.FloatField(label="Quarantine from score")
    reject_score = forms.FloatField(label="Reject at SMTP time from score")
    unscannable_action = forms.ChoiceField(choices=Action.choices, label="Mail that cannot be scanned")
    scanner_failure = forms.ChoiceField(
        choices=ScannerFailureMode.choices, label="When a scanner is unavailable"
    )
    quarantine_days = forms.IntegerField(min_value=1, max_value=3650, label="Keep quarantined mail (days)")
    digest_default = forms.ChoiceField(choices=DigestFrequency.choices, label="Quarantine digest (default)")
    bayes_enabled = forms.BooleanField(required=False, label="Learn from reports (Bayes)")

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("auto_id", "policy_%s")
        super().__init__(*args, **kwargs)


class OwnListEntryForm(forms.Form):
    kind = forms.ChoiceField(choices=ListEntry.Kind.choices)
    match = forms.ChoiceField(choices=ListEntry.Match.choices)
    value = forms.CharField(
        max_length=254, help_text="An address, a domain, or an IP address or network (CIDR)"
    )
    comment = forms.CharField(max_length=200, required=False)


class PreferenceForm(forms.Form):
    digest = forms.ChoiceField(required=False, label="Quarantine digest")

    def __init__(self, *args: object, default: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        label = dict(DigestFrequency.choices).get(default, default)
        self.fields["digest"].choices = [("", f"Domain default ({label.lower()})"), *DigestFrequency.choices]


def _back(request: HttpRequest, default: str) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(default)


# --- Administrators: /quarantine/rules/ ------------------------------------------------------


def _selected_domain(request: HttpRequest) -> Domain | None:
    domains = selectors.domains_administered(request.user).order_by("name")
    wanted = request.GET.get("domain", "")
    if wanted.isdigit():
        domain = domains.filter(pk=int(wanted)).first()
        if domain is not None:
            return domain
    return domains.first()


def _policy_initial(domain: Domain) -> dict:
    policy = rule_services.domain_policy_get(domain=domain)
    return {name: getattr(policy, name) for name in PolicyForm.base_fields}


def _rules_page(
    request: HttpRequest,
    *,
    domain: Domain | None = None,
    list_form: ListEntryForm | None = None,
    rule_form: ContentRuleForm | None = None,
    policy_form: PolicyForm | None = None,
    status: int = 200,
) -> HttpResponse:
    user = request.user
    domain = domain or _selected_domain(request)
    entries = selectors.list_entries_visible_to(user).order_by("kind", "match", "value", "id")
    policy = rule_services.domain_policy_get(domain=domain) if domain is not None else None
    context = {
        "entries": Paginator(entries, ENTRY_PAGE_SIZE).get_page(request.GET.get("page")),
        "rules": selectors.content_rules_visible_to(user).order_by("name", "id"),
        "domains": selectors.domains_administered(user).order_by("name"),
        "domain": domain,
        "policy": policy,
        "list_form": list_form or ListEntryForm(user=user),
        "rule_form": rule_form or ContentRuleForm(user=user),
        "policy_form": policy_form or (PolicyForm(initial=_policy_initial(domain)) if domain else None),
    }
    return render(request, "threats/rules.html", context, status=status)


@admin_required
@require_safe
def rules_view(request: HttpRequest) -> HttpResponse:
    return _rules_page(request)


def _rules_url(domain: Domain | None = None) -> str:
    url = reverse("threats:rules")
    return f"{url}?{urlencode({'domain': domain.pk})}" if domain is not None else url


@admin_required
@require_POST
def list_entry_create_view(request: HttpRequest) -> HttpResponse:
    form = ListEntryForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            entry = rule_services.list_entry_create(
                actor=request.user,
                kind=form.cleaned_data["kind"],
                match=form.cleaned_data["match"],
                value=form.cleaned_data["value"],
                domain=None if form.cleaned_data["mailbox"] else form.domain(),
                mailbox=form.cleaned_data["mailbox"],
                comment=form.cleaned_data["comment"],
            )
        except ApplicationError as exc:
            _apply_errors(form, exc)
        else:
            messages.success(
                request, f"{entry.get_match_display()} {entry.value} added to the {entry.kind} list."
            )
            return redirect(reverse("threats:rules") + "#lists")
    return _rules_page(request, list_form=form, status=400)


@login_required
@require_POST
def list_entry_delete_view(request: HttpRequest, entry_id: int) -> HttpResponse:
    """Remove an entry the viewer can see (their own mailbox's, or their scope's for
    admins); back to the page it was removed from."""
    entry = selectors.list_entries_visible_to(request.user).filter(pk=entry_id).first()
    if entry is None:
        raise NotFoundError("no such list entry")
    default = reverse("threats:rules") if request.user.is_admin else reverse("threats:lists")
    try:
        rule_services.list_entry_delete(actor=request.user, entry=entry)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{entry.value} removed from the {entry.kind} list.")
    return _back(request, default)


@admin_required
@require_POST
def content_rule_create_view(request: HttpRequest) -> HttpResponse:
    form = ContentRuleForm(request.POST, user=request.user)
    if form.is_valid():
        data = form.cleaned_data
        try:
            rule = rule_services.content_rule_create(
                actor=request.user,
                name=data["name"],
                target=data["target"],
                pattern=data["pattern"],
                score=data["score"],
                header_name=data["header_name"],
                domain=form.domain(),
                is_active=data["is_active"],
            )
        except ApplicationError as exc:
            _apply_errors(form, exc)
        else:
            messages.success(request, f"Content rule “{rule.name}” added.")
            return redirect(reverse("threats:rules") + "#rules")
    return _rules_page(request, rule_form=form, status=400)


@admin_required
@require_POST
def content_rule_delete_view(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = selectors.content_rules_visible_to(request.user).filter(pk=rule_id).first()
    if rule is None:
        raise NotFoundError("no such content rule")
    try:
        rule_services.content_rule_delete(actor=request.user, rule=rule)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Content rule “{rule.name}” deleted.")
    return redirect(reverse("threats:rules") + "#rules")


@admin_required
@require_POST
def policy_update_view(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = selectors.domains_administered(request.user).filter(pk=domain_id).first()
    if domain is None:
        raise NotFoundError("no such domain")
    form = PolicyForm(request.POST)
    if form.is_valid():
        try:
            rule_services.domain_policy_update(actor=request.user, domain=domain, **form.cleaned_data)
        except ApplicationError as exc:
            _apply_errors(form, exc)
        else:
            messages.success(request, f"Threat policy of {domain.name} saved.")
            return redirect(_rules_url(domain) + "#policy")
    return _rules_page(request, domain=domain, policy_form=form, status=400)


# --- Everyone: /quarantine/lists/ -----------------------------------------------------------


def _own_mailboxes(request: HttpRequest):
    return selectors.mailboxes_in_scope(request.user).filter(owner=request.user).order_by("address")


def _selected_mailbox(request: HttpRequest, wanted: str) -> Mailbox | None:
    """The mailbox asked for (any the viewer reviews; admins may open their users'),
    else the viewer's first own mailbox."""
    if wanted.isdigit():
        mailbox = selectors.mailboxes_in_scope(request.user).filter(pk=int(wanted)).first()
        if mailbox is None:
            raise NotFoundError("no such mailbox")
        return mailbox
    return _own_mailboxes(request).first()


def _lists_page(
    request: HttpRequest,
    mailbox: Mailbox | None,
    *,
    entry_form: OwnListEntryForm | None = None,
    preference_form: PreferenceForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context: dict = {"mailbox": mailbox, "mailboxes": list(_own_mailboxes(request)[:200])}
    if mailbox is not None:
        if mailbox not in context["mailboxes"]:
            context["mailboxes"].append(mailbox)
        preference = preference_services.quarantine_preference_get(mailbox=mailbox)
        default = rule_services.domain_policy_get(domain=mailbox.domain).digest_default
        context.update(
            entries=selectors.list_entries_visible_to(request.user)
            .filter(mailbox=mailbox)
            .order_by("kind", "value"),
            entry_form=entry_form or OwnListEntryForm(),
            preference_form=preference_form
            or PreferenceForm(initial={"digest": preference.digest}, default=default),
        )
    return render(request, "threats/lists.html", context, status=status)


def _lists_url(mailbox: Mailbox) -> str:
    return f"{reverse('threats:lists')}?{urlencode({'mailbox': mailbox.pk})}"


@login_required
@require_safe
def lists_view(request: HttpRequest) -> HttpResponse:
    return _lists_page(request, _selected_mailbox(request, request.GET.get("mailbox", "")))


@login_required
@require_POST
def own_list_entry_create_view(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    mailbox = _selected_mailbox(request, str(mailbox_id))
    form = OwnListEntryForm(request.POST)
    if form.is_valid():
        try:
            entry = rule_services.list_entry_create(actor=request.user, mailbox=mailbox, **form.cleaned_data)
        except ApplicationError as exc:
            _apply_errors(form, exc)
        else:
            messages.success(request, f"{entry.value} added to the {entry.kind} list of {mailbox.address}.")
            return redirect(_lists_url(mailbox))
    return _lists_page(request, mailbox, entry_form=form, status=400)


@login_required
@require_POST
def preference_update_view(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    mailbox = _selected_mailbox(request, str(mailbox_id))
    default = rule_services.domain_policy_get(domain=mailbox.domain).digest_default
    form = PreferenceForm(request.POST, default=default)
    if form.is_valid():
        try:
            preference_services.quarantine_preference_set(
                actor=request.user, mailbox=mailbox, digest=form.cleaned_data["digest"]
            )
        except ApplicationError as exc:
            _apply_errors(form, exc)
        else:
            messages.success(request, f"Quarantine digest of {mailbox.address} saved.")
            return redirect(_lists_url(mailbox))
    return _lists_page(request, mailbox, preference_form=form, status=400)
