"""Quarantine review in the dashboard, for administrators and mailbox users alike: the
list (summary cards, filters, HTMX paging, bulk actions, live refresh) and one held
message's page ("why was this held?", its recipients, the actions, raw headers and a
preview).

What anyone sees comes from the selectors (users: their own mailboxes' items; admins:
their scope); what anyone may do is decided by services/quarantine.py. A refused action
becomes a message on the page, never an error page. The message body is never part of
our pages: it is served by `quarantine_preview_view` as its own document, under a CSP
that forbids scripts and every network fetch, into an iframe sandboxed without scripts
or same-origin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from csp.constants import NONE, SELF, UNSAFE_INLINE
from csp.decorators import csp
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_POST, require_safe

from apps.core.exceptions import ApplicationError, NotFoundError
from apps.core.htmx import htmx_partial
from apps.mailboxes.parsing import headers_of
from apps.threats import selectors, services
from apps.threats.models import Category, QuarantineItem, QuarantineRecipient, ScanVerdict
from apps.threats.policy import policy_for_domain
from apps.threats.views.preview import preview_of

PAGE_SIZE = 25
RecipientState = QuarantineRecipient.State
OPEN_STATES = (RecipientState.HELD, RecipientState.RELEASE_REQUESTED)

# The preview document: nothing may run or load; the sanitiser already swapped remote
# images for inline blanks and mail layouts need inline styles. Only our own pages may
# frame it, and opened on its own it is sandboxed all the same.
PREVIEW_POLICY = {
    "default-src": [NONE],
    "img-src": ["data:"],
    "style-src": [UNSAFE_INLINE],
    "frame-ancestors": [SELF],
    "base-uri": [NONE],
    "form-action": [NONE],
    "sandbox": True,
}

BULK_ACTIONS = {
    "release": "released",
    "delete": "deleted",
    "spam": "reported as spam",
    "ham": "reported as not spam",
}


class QuarantineFilterForm(forms.Form):
    category = forms.ChoiceField(choices=[("", "Any category"), *Category.choices], required=False)
    state = forms.ChoiceField(
        choices=[
            ("", "Held"),
            (QuarantineItem.State.RESOLVED, "Resolved"),
            (QuarantineItem.State.EXPIRED, "Expired"),
            ("all", "Any state"),
        ],
        required=False,
    )
    q = forms.CharField(max_length=200, required=False, label="Search", help_text="Sender, From or subject")
    mailbox = forms.CharField(max_length=254, required=False, label="Recipient")
    requested = forms.BooleanField(required=False, label="Release requests only")

    def selector_kwargs(self) -> dict:
        """The valid filters; an invalid one (a stale link) is ignored, not an error page."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        return {
            "category": data.get("category") or "",
            "state": data.get("state") or "",
            "query": (data.get("q") or "").strip(),
            "mailbox": (data.get("mailbox") or "").strip(),
            "requested": bool(data.get("requested")),
        }


class BulkForm(forms.Form):
    action = forms.ChoiceField(choices=[(name, name) for name in BULK_ACTIONS])

    def item_ids(self) -> list[int]:
        """The selected ids (checkboxes named "items"); scoping happens in the selector."""
        return [int(value) for value in self.data.getlist("items") if value.isdigit()][:500]


class ReleaseForm(forms.Form):
    allow_sender = forms.BooleanField(required=False, label="Also allow this sender")

    def mailbox_ids(self) -> list[int]:
        return [int(value) for value in self.data.getlist("mailboxes") if value.isdigit()]


class RequestForm(forms.Form):
    note = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Note for the administrator",
    )


@dataclass(frozen=True)
class StageRow:
    """One scan stage as "why was this held?" shows it."""

    name: str
    score: float
    bar: float  # |score| on the meter's scale
    ms: float
    status: str
    category: str
    reasons: list[str]


def _visible_items(request: HttpRequest, items: QuerySet[QuarantineItem]) -> QuerySet[QuarantineItem]:
    """The items with only the recipient rows the viewer may see, in one query."""
    rows = selectors.quarantine_recipients_visible_to(request.user).select_related("mailbox").order_by("id")
    return items.prefetch_related(Prefetch("recipients", queryset=rows, to_attr="visible_recipients"))


def _next_url(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


@login_required
@require_safe
def quarantine_list_view(request: HttpRequest) -> HttpResponse:
    """The held messages the viewer may see; HTMX gets the table (and fresh summary cards
    out of band), for paging, filtering and the live refresh."""
    form = QuarantineFilterForm(request.GET)
    items = selectors.quarantine_items_search(request.user, **form.selector_kwargs())
    page = Paginator(_visible_items(request, items), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "form": form,
        "counts": selectors.quarantine_counts(request.user),
        "bulk_actions": BULK_ACTIONS,
    }
    if htmx_partial(request):
        return render(request, "threats/partials/quarantine_table.html", {**context, "oob": True})
    context["held_chart"] = selectors.quarantine_held_chart(request.user)
    context["scan_chart"] = selectors.scan_rate_chart(request.user)
    return render(request, "threats/quarantine_list.html", context)


def _bulk_one(request: HttpRequest, item: QuarantineItem, action: str) -> None:
    if action == "release":
        services.quarantine_release(actor=request.user, item=item, request=request)
    elif action == "delete":
        services.quarantine_delete(actor=request.user, item=item, request=request)
    else:
        services.quarantine_report(actor=request.user, item=item, is_spam=action == "spam", request=request)


@login_required
@require_POST
def quarantine_bulk_view(request: HttpRequest) -> HttpResponse:
    """One action on the selected items, item by item: what one item refuses (a user
    releasing malware, an item already decided) is reported, the rest goes ahead."""
    back = _next_url(request, reverse("threats:quarantine-list"))
    form = BulkForm(request.POST)
    ids = form.item_ids() if form.is_valid() else []
    if not ids:
        messages.error(request, "Select messages and an action.")
        return redirect(back)
    action = form.cleaned_data["action"]
    done = 0
    refused: list[str] = []
    for item in selectors.quarantine_items_visible_to(request.user).filter(pk__in=ids).order_by("id"):
        try:
            _bulk_one(request, item, action)
        except ApplicationError as exc:
            refused.append(f"“{item.subject[:60] or '(no subject)'}”: {exc.message}")
        else:
            done += 1
    if done:
        messages.success(request, f"{done} message(s) {BULK_ACTIONS[action]}.")
    if refused:
        shown = "; ".join(refused[:5]) + (f"; and {len(refused) - 5} more" if len(refused) > 5 else "")
        messages.warning(request, f"{len(refused)} message(s) skipped: {shown}.")
    if not done and not refused:
        messages.error(request, "None of the selected messages is in your quarantine.")
    return redirect(back)


def _stage_rows(verdict: ScanVerdict | None, scale: float) -> list[StageRow]:
    if verdict is None:
        return []
    rows = []
    for stage in verdict.stages:
        score = float(stage.get("score") or 0)
        rows.append(
            StageRow(
                name=str(stage.get("stage", "")),
                score=score,
                bar=min(abs(score), scale),
                ms=float(stage.get("ms") or 0),
                status=str(stage.get("status", "")),
                category=str(stage.get("category", "")),
                reasons=[str(reason) for reason in stage.get("reasons", [])],
            )
        )
    return rows


@login_required
@require_safe
def quarantine_detail_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """Why the message was held, who it was for, what the viewer can do, its headers and
    a preview frame."""
    item = selectors.quarantine_item_get(request.user, item_id)
    recipients = list(selectors.quarantine_item_recipients(request.user, item))
    verdict = selectors.quarantine_item_verdict(item)
    policy = policy_for_domain(recipients[0].mailbox.domain_id if recipients else None)
    # The meters' full scale: the quarantine threshold, or the largest stage score.
    scale = max(
        [policy.quarantine_score, *(abs(float(s.get("score") or 0)) for s in getattr(verdict, "stages", []))]
    )
    try:
        raw = selectors.quarantine_item_raw(item)
    except NotFoundError:
        raw = None
    context = {
        "item": item,
        "recipients": recipients,
        "open_recipients": [row for row in recipients if row.state in OPEN_STATES],
        "verdict": verdict,
        "explanation": services.explain(verdict) if verdict else item.reason,
        "stages": _stage_rows(verdict, scale),
        "scale": scale,
        "policy": policy,
        "allowed": services.quarantine_actions(request.user, item, recipients),
        "headers": headers_of(raw) if raw is not None else [],
        "preview": preview_of(raw) if raw is not None else None,
        "release_form": ReleaseForm(),
        "request_form": RequestForm(),
    }
    return render(request, "threats/quarantine_detail.html", context)


@csp(PREVIEW_POLICY)
def _preview_response(request: HttpRequest, context: dict) -> HttpResponse:
    return render(request, "threats/preview.html", context)


@login_required
@require_safe
@xframe_options_sameorigin
def quarantine_preview_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """The held message's body as its own document for the sandboxed preview frame:
    sanitised, links made inert, remote content blocked, no script allowed to run."""
    item = selectors.quarantine_item_get(request.user, item_id)
    response = _preview_response(request, {"preview": preview_of(selectors.quarantine_item_raw(item))})
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-store"
    return response


def _act(request: HttpRequest, item_id: int, act: Callable[[QuarantineItem], str]) -> HttpResponse:
    """Run one action on a visible item; its refusal becomes a message on the page."""
    item = selectors.quarantine_item_get(request.user, item_id)
    try:
        done = act(item)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return redirect("threats:quarantine-detail", item_id=item.pk)


@login_required
@require_POST
def quarantine_release_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """Release to the chosen recipients (the checkboxes), optionally allowing the sender."""
    form = ReleaseForm(request.POST)
    form.is_valid()
    mailbox_ids = form.mailbox_ids()
    if not mailbox_ids:
        messages.error(request, "Select the recipients to release the message to.")
        return redirect("threats:quarantine-detail", item_id=item_id)

    def release(item: QuarantineItem) -> str:
        outcome = services.quarantine_release(
            actor=request.user,
            item=item,
            mailbox_ids=mailbox_ids,
            allow_sender=bool(form.cleaned_data.get("allow_sender")),
            request=request,
        )
        if outcome.delivered:
            return f"Released to {outcome.changed} recipient(s); the message is in their inbox."
        return f"Released to {outcome.changed} recipient(s); delivery will follow shortly."

    return _act(request, item_id, release)


@login_required
@require_POST
def quarantine_delete_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """Discard the held copy for the chosen recipients (all the viewer's when none are sent)."""
    mailbox_ids = ReleaseForm(request.POST).mailbox_ids() or None

    def delete(item: QuarantineItem) -> str:
        outcome = services.quarantine_delete(
            actor=request.user, item=item, mailbox_ids=mailbox_ids, request=request
        )
        return f"Deleted for {outcome.changed} recipient(s)."

    return _act(request, item_id, delete)


@login_required
@require_POST
def quarantine_report_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """Report a false positive (as="ham") or confirm spam (as="spam"): trains the filter."""
    verdict = request.POST.get("as")
    if verdict not in ("spam", "ham"):
        messages.error(request, "Report the message as spam or as not spam.")
        return redirect("threats:quarantine-detail", item_id=item_id)

    def report(item: QuarantineItem) -> str:
        services.quarantine_report(actor=request.user, item=item, is_spam=verdict == "spam", request=request)
        kind = "spam" if verdict == "spam" else "not spam"
        return f"Reported as {kind}: the filter learns from this."

    return _act(request, item_id, report)


@login_required
@require_POST
def quarantine_request_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """A user asks an administrator to release what they may not release themselves."""
    form = RequestForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""

    def ask(item: QuarantineItem) -> str:
        services.release_request(actor=request.user, item=item, note=note, request=request)
        return "Release requested: an administrator will decide."

    return _act(request, item_id, ask)


@login_required
@require_POST
def quarantine_decide_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """An administrator approves (releases) or denies pending release requests."""
    approve = request.POST.get("approve") == "1"

    def decide(item: QuarantineItem) -> str:
        outcome = services.release_request_decide(
            actor=request.user, item=item, approve=approve, request=request
        )
        if approve:
            return f"Request approved: released to {outcome.changed} recipient(s)."
        return f"Request denied: the message stays held for {outcome.changed} recipient(s)."

    return _act(request, item_id, decide)
