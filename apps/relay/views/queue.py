"""Dashboard pages for the outbound queue: the list with its summary and filters, and one
item's whole story (message, recipients, attempt log) with its actions.

Filtering and paging swap only the table with HTMX; the filter form is a plain GET form
and every action a plain POST form, so the pages work without JavaScript. Deleting asks
for confirmation on a page of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from apps.core.exceptions import ApplicationError
from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required
from apps.relay import selectors, services
from apps.relay.models import DeliveryAttempt, QueueItem

PAGE_SIZE = 25
State = QueueItem.State

BULK_LABELS = {
    "retry": "retried",
    "hold": "held",
    "release": "released",
    "delete": "deleted",
    "delete_bounce": "deleted and bounced",
}


class QueueFilterForm(forms.Form):
    state = forms.ChoiceField(choices=[("", "Any state"), *State.choices], required=False)
    domain = forms.CharField(max_length=253, required=False, label="Destination")
    sender = forms.CharField(max_length=254, required=False)
    held = forms.ChoiceField(
        choices=[("", "Held or not"), ("yes", "Held only"), ("no", "Not held")], required=False, label="Held"
    )

    def selector_kwargs(self) -> dict:
        """The valid filters; an invalid one (a stale link) is ignored, not an error page."""
        data = self.cleaned_data if self.is_bound else {}
        held = data.get("held") or ""
        return {
            "state": data.get("state") or "",
            "domain": (data.get("domain") or "").strip(),
            "sender": (data.get("sender") or "").strip(),
            "on_hold": {"yes": True, "no": False}.get(held),
        }


class QueueBulkForm(forms.Form):
    action = forms.ChoiceField(choices=[(name, name) for name in services.QUEUE_BULK_ACTIONS])

    def item_ids(self) -> list[int]:
        """The selected ids (checkboxes named "items"); the service checks their scope."""
        return [int(value) for value in self.data.getlist("items") if value.isdigit()]


@dataclass(frozen=True)
class AttemptRow:
    """One attempt as the timeline shows it."""

    number: int
    attempt: DeliveryAttempt
    tried: list[str]
    replies: list[tuple[str, str]]  # (recipient, reply); empty when all got the same reply
    seconds: float | None  # how long the attempt took


@dataclass(frozen=True)
class Allowed:
    """Which actions the detail page offers for the item's current state."""

    retry: bool
    hold: bool
    release: bool
    delete: bool
    bounce: bool


def _allowed(item: QueueItem) -> Allowed:
    waiting = item.state in (State.QUEUED, State.DEFERRED)
    return Allowed(
        retry=waiting and not item.on_hold,
        hold=waiting and not item.on_hold,
        release=item.on_hold and not item.is_final,
        delete=item.state != State.SENDING,
        bounce=waiting,
    )


def _attempt_rows(item: QueueItem) -> list[AttemptRow]:
    rows = []
    for number, attempt in enumerate(item.attempts_log.all(), start=1):
        detail = attempt.detail if isinstance(attempt.detail, dict) else {}
        by_recipient = detail.get("recipients") or {}
        replies = [(str(address), str((r or {}).get("reply") or "")) for address, r in by_recipient.items()]
        if len({reply for _, reply in replies}) <= 1:
            replies = []  # the attempt's reply says it all
        took = attempt.finished_at - attempt.started_at if attempt.finished_at else None
        rows.append(
            AttemptRow(
                number=number,
                attempt=attempt,
                tried=[str(note) for note in detail.get("tried") or []],
                replies=replies,
                seconds=round(took.total_seconds(), 1) if took is not None else None,
            )
        )
    return rows


def _next_url(request: HttpRequest) -> str:
    """Where to go back to after a bulk action: the list page it came from, if that is ours."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("relay:queue-list")


def _back(request: HttpRequest) -> HttpResponse:
    return redirect(_next_url(request))


@admin_required
def queue_list_view(request: HttpRequest) -> HttpResponse:
    form = QueueFilterForm(request.GET)
    form.is_valid()
    items = selectors.queue_item_filter(selectors.queue_item_list(request.user), **form.selector_kwargs())
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "form": form}
    if htmx_partial(request):
        return render(request, "relay/partials/queue_table.html", context)
    context["summary"] = selectors.queue_summary(request.user)
    return render(request, "relay/queue_list.html", context)


@admin_required
def queue_detail_view(request: HttpRequest, item_id: int) -> HttpResponse:
    item = selectors.queue_item_detail(request.user, item_id)
    context = {"item": item, "attempts": _attempt_rows(item), "allowed": _allowed(item)}
    return render(request, "relay/queue_detail.html", context)


def _act(request: HttpRequest, item_id: int, service: Callable[..., QueueItem], done: str) -> HttpResponse:
    item = selectors.queue_item_detail(request.user, item_id)
    try:
        service(actor=request.user, item=item)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Message {item.message.queue_id} to {item.domain} {done}.")
    return redirect("relay:queue-detail", item_id=item.pk)


@admin_required
@require_POST
def queue_retry_view(request: HttpRequest, item_id: int) -> HttpResponse:
    return _act(request, item_id, services.queue_item_retry, "will be tried again now")


@admin_required
@require_POST
def queue_hold_view(request: HttpRequest, item_id: int) -> HttpResponse:
    return _act(request, item_id, services.queue_item_hold, "is on hold")


@admin_required
@require_POST
def queue_release_view(request: HttpRequest, item_id: int) -> HttpResponse:
    return _act(request, item_id, services.queue_item_release, "was released")


@admin_required
def queue_delete_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """GET asks for confirmation (?bounce=1 preselects bouncing); POST deletes."""
    item = selectors.queue_item_detail(request.user, item_id)
    if request.method != "POST":
        context = {
            "items": [item],
            "bounce": request.GET.get("bounce") == "1",
            "allowed": _allowed(item),
            "cancel": item,
        }
        return render(request, "relay/queue_confirm_delete.html", context)
    bounce = request.POST.get("bounce") == "1"
    try:
        result = services.queue_item_delete(actor=request.user, item=item, bounce=bounce)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("relay:queue-detail", item_id=item.pk)
    if result.deleted:
        messages.success(request, f"Message {result.queue_id} to {item.domain} deleted from the queue.")
        return redirect("relay:queue-list")
    messages.success(
        request,
        f"Message {result.queue_id} to {item.domain} deleted; "
        f"{len(result.bounced)} recipient(s) bounced back to the sender.",
    )
    return redirect("relay:queue-detail", item_id=item.pk)


@admin_required
@require_POST
def queue_bulk_view(request: HttpRequest) -> HttpResponse:
    """One action on the selected items; deleting shows a confirmation page first."""
    form = QueueBulkForm(request.POST)
    ids = form.item_ids() if form.is_valid() else []
    if not ids:
        messages.error(request, "Select messages and an action.")
        return _back(request)
    action = form.cleaned_data["action"]
    if action in ("delete", "delete_bounce") and request.POST.get("confirmed") != "1":
        items = list(selectors.queue_item_list(request.user).filter(pk__in=ids))
        context = {
            "items": items,
            "bounce": action == "delete_bounce",
            "bulk": True,
            "next": _next_url(request),
        }
        return render(request, "relay/queue_confirm_delete.html", context)
    try:
        result = services.queue_items_bulk(actor=request.user, item_ids=ids, action=action)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return _back(request)
    if result.done:
        messages.success(request, f"{len(result.done)} message(s) {BULK_LABELS[action]}.")
    if result.refused:
        reasons = sorted(set(result.refused.values()))
        messages.warning(request, f"{len(result.refused)} message(s) skipped: " + " ".join(reasons))
    return _back(request)
