"""'Report spam' / 'Not spam' from the webmail: the same service as
POST /api/v1/spam-reports/, for one filed message, then back to its folder."""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.mailboxes.selectors import mail_item_get
from apps.threats.services.learning import spam_report


class SpamReportForm(forms.Form):
    is_spam = forms.TypedChoiceField(choices=[("1", "spam"), ("0", "not spam")], coerce=lambda v: v == "1")


@login_required
@require_POST
def webmail_spam_report_view(request: HttpRequest, item_id: int) -> HttpResponse:
    item = mail_item_get(actor=request.user, item_id=item_id)  # another user's mail: 404
    form = SpamReportForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Say whether the message is spam.", status=400, content_type="text/plain")
    is_spam = form.cleaned_data["is_spam"]
    folder = item.folder.name
    outcome = spam_report(actor=request.user, mail_item_ids=[item.pk], is_spam=is_spam, request=request)
    target = "Junk" if is_spam else "the INBOX"
    moved = f" and moved to {target}" if outcome.moved else ""
    messages.success(request, f"Reported as {'spam' if is_spam else 'not spam'}{moved}.")
    back = reverse("mailboxes:webmail-mailbox", args=[item.mailbox_id])
    if folder != "INBOX":
        back = f"{back}?{urlencode({'folder': folder})}"
    return redirect(back)
