"""Webmail in the dashboard: pick a mailbox, browse its folders, read and file messages.

Server-rendered and usable without JavaScript; HTMX requests get the partial the page
is built from (message list, message pane, action bar). Mail HTML is never part of our
pages: it is sanitised and served by `webmail_message_body_view` into a sandboxed iframe,
under its own CSP that forbids scripts and, unless asked, remote images.
"""

from __future__ import annotations

from csp.constants import NONE, SELF, UNSAFE_INLINE
from csp.decorators import csp
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect

from apps.core.htmx import htmx_partial
from apps.mailboxes import selectors, services
from apps.mailboxes.models import MailItem

PAGE_SIZE = 50
MAILBOX_PAGE_SIZE = 25
SEARCH_MAX = 500
SHOW_CHOICES = {"unread": {"unread": True}, "flagged": {"flagged": True}}

# The mail body document: nothing may run or load except inline images and, on
# request, remote ones; mail layouts need inline styles. Only our own pages may frame
# it, and even opened on its own it is sandboxed (links may open a new tab).
_BODY_POLICY = {
    "default-src": [NONE],
    "img-src": ["data:", "cid:"],
    "style-src": [UNSAFE_INLINE],
    "frame-ancestors": [SELF],
    "base-uri": [NONE],
    "form-action": [NONE],
    "sandbox": ["allow-popups", "allow-popups-to-escape-sandbox"],
}
_BODY_POLICY_REMOTE = {**_BODY_POLICY, "img-src": ["data:", "cid:", "https:", "http:"]}


class FlagsForm(forms.Form):
    """The flags a reader toggles; absent ones stay as they are."""

    seen = forms.TypedChoiceField(
        choices=[("1", "yes"), ("0", "no")], coerce=lambda v: v == "1", required=False, empty_value=None
    )
    flagged = forms.TypedChoiceField(
        choices=[("1", "yes"), ("0", "no")], coerce=lambda v: v == "1", required=False, empty_value=None
    )


class MoveForm(forms.Form):
    folder = forms.CharField(max_length=255)


def _folder_url(item: MailItem | None = None, *, mailbox_id: int | None = None, folder: str = "") -> str:
    mailbox_id = item.mailbox_id if item is not None else mailbox_id
    folder = item.folder.name if item is not None else folder
    url = reverse("mailboxes:webmail-mailbox", args=[mailbox_id])
    return f"{url}?{urlencode({'folder': folder})}" if folder and folder != "INBOX" else url


def _done(request: HttpRequest, url: str, message: str) -> HttpResponse:
    """After a change that takes the message out of view: go to `url` with a flash."""
    messages.success(request, message)
    if htmx_partial(request):
        return HttpResponseClientRedirect(url)
    return redirect(url)


# --- Mailboxes and folders -------------------------------------------------------------


@login_required
@require_safe
def webmail_index_view(request: HttpRequest) -> HttpResponse:
    """The mailboxes you may read; with just one of your own, straight into it."""
    mailboxes = selectors.mailbox_list(actor=request.user)
    query = request.GET.get("q", "").strip()[:SEARCH_MAX]
    if query:
        mailboxes = mailboxes.filter(address__icontains=query)
    elif not request.user.is_admin:
        only = list(mailboxes[:2])
        if len(only) == 1:
            return redirect("mailboxes:webmail-mailbox", only[0].pk)
    page = Paginator(mailboxes.order_by("address"), MAILBOX_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "q": query}
    template = (
        "mailboxes/webmail/partials/mailbox_table.html"
        if htmx_partial(request)
        else "mailboxes/webmail/index.html"
    )
    return render(request, template, context)


@login_required
@require_safe
def webmail_mailbox_view(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    """A folder's messages, newest first, with search and paging; INBOX by default."""
    mailbox = selectors.mailbox_get(actor=request.user, mailbox_id=mailbox_id)
    folder = selectors.folder_get(
        actor=request.user, mailbox=mailbox, name=request.GET.get("folder") or "INBOX"
    )
    query = request.GET.get("q", "").strip()[:SEARCH_MAX]
    show = request.GET.get("show", "")
    items = selectors.mail_item_list(
        actor=request.user, mailbox=mailbox, folder=folder, search=query, **SHOW_CHOICES.get(show, {})
    )
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    services.mailbox_access_record(actor=request.user, mailbox=mailbox, action="open")
    context = {
        "mailbox": mailbox,
        "folder": folder,
        "page": page,
        "q": query,
        "show": show if show in SHOW_CHOICES else "",
        "hidden": {"folder": folder.name, **({"show": show} if show in SHOW_CHOICES else {})},
    }
    if htmx_partial(request):
        return render(request, "mailboxes/webmail/partials/message_list.html", context)
    context["folders"] = selectors.folder_list(actor=request.user, mailbox=mailbox)
    context["under_legal_hold"] = services.mailbox_under_hold(mailbox=mailbox)
    return render(request, "mailboxes/webmail/mailbox.html", context)


# --- One message -----------------------------------------------------------------------


@login_required
@require_safe
def webmail_message_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """Read a message; opening it marks it seen. The HTML body is an iframe."""
    item = selectors.mail_item_get(actor=request.user, item_id=item_id)
    remote = request.GET.get("remote_images") == "1"
    # Sanitised with remote images blocked either way: the count drives the "show" bar.
    content = selectors.mail_item_content(item=item, allow_remote_images=False)
    services.mailbox_access_record(actor=request.user, mailbox=item.mailbox, action="read")
    if not item.seen:
        item = services.mail_item_set_flags(actor=request.user, item=item, seen=True)
    body_url = reverse("mailboxes:webmail-message-body", args=[item.pk])
    context = {
        "item": item,
        "message": item.message,
        "mailbox": item.mailbox,
        "content": content,
        "remote": remote,
        "body_url": f"{body_url}?remote_images=1" if remote else body_url,
        "folders": selectors.folder_list(actor=request.user, mailbox=item.mailbox),
        "back_url": _folder_url(item),
    }
    if htmx_partial(request):
        return render(request, "mailboxes/webmail/partials/message_pane.html", context)
    return render(request, "mailboxes/webmail/message.html", context)


@csp(_BODY_POLICY)
def _body_blocked(request: HttpRequest, context: dict) -> HttpResponse:
    return render(request, "mailboxes/webmail/body.html", context)


@csp(_BODY_POLICY_REMOTE)
def _body_remote(request: HttpRequest, context: dict) -> HttpResponse:
    return render(request, "mailboxes/webmail/body.html", context)


@login_required
@require_safe
@xframe_options_sameorigin
def webmail_message_body_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """The sanitised HTML (or the text) of a message as its own document, for the
    sandboxed iframe. Remote images load only with ?remote_images=1."""
    item = selectors.mail_item_get(actor=request.user, item_id=item_id)
    remote = request.GET.get("remote_images") == "1"
    content = selectors.mail_item_content(item=item, allow_remote_images=remote)
    services.mailbox_access_record(actor=request.user, mailbox=item.mailbox, action="read")
    response = (_body_remote if remote else _body_blocked)(request, {"content": content})
    response["Referrer-Policy"] = "no-referrer"  # remote images learn nothing about us
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
@require_POST
def webmail_message_flags_view(request: HttpRequest, item_id: int) -> HttpResponse:
    """Mark read/unread, flag/unflag. HTMX gets the new action bar."""
    item = selectors.mail_item_get(actor=request.user, item_id=item_id)
    form = FlagsForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Bad flags.", status=400, content_type="text/plain")
    changes = {name: value for name, value in form.cleaned_data.items() if value is not None}
    item = services.mail_item_set_flags(actor=request.user, item=item, **changes)
    if htmx_partial(request):
        folders = selectors.folder_list(actor=request.user, mailbox=item.mailbox)
        return render(
            request, "mailboxes/webmail/partials/message_actions.html", {"item": item, "folders": folders}
        )
    if changes.get("seen") is False:
        # Back on the message page it would be read again: return to the folder.
        return _done(request, _folder_url(item), "Marked as unread.")
    return redirect("mailboxes:webmail-message", item.pk)


@login_required
@require_POST
def webmail_message_move_view(request: HttpRequest, item_id: int) -> HttpResponse:
    item = selectors.mail_item_get(actor=request.user, item_id=item_id)
    form = MoveForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Choose a folder.", status=400, content_type="text/plain")
    back = _folder_url(item)
    item = services.mail_item_move(actor=request.user, item=item, folder_name=form.cleaned_data["folder"])
    return _done(request, back, f"Moved to {item.folder.name}.")


@login_required
@require_POST
def webmail_message_delete_view(request: HttpRequest, item_id: int) -> HttpResponse:
    item = selectors.mail_item_get(actor=request.user, item_id=item_id)
    back = _folder_url(item)
    try:
        moved = services.mail_item_delete(actor=request.user, item=item)
    except services.DeletionHeld as exc:
        # Nothing was deleted: say why and stay on the message.
        messages.error(request, exc.message)
        url = reverse("mailboxes:webmail-message", args=[item.pk])
        return HttpResponseClientRedirect(url) if htmx_partial(request) else redirect(url)
    return _done(request, back, "Deleted for good." if moved is None else f"Moved to {moved.folder.name}.")
