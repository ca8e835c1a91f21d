"""Dashboard pages for GDPR exports (anyone, within their scope) and erasures (superadmins)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.compliance.models import ComplianceJob
from apps.compliance.services import gdpr
from apps.core.exceptions import ApplicationError
from apps.core.forms import apply_application_error
from apps.core.htmx import htmx_partial
from apps.core.permissions import superadmin_required


class SubjectForm(forms.Form):
    subject = forms.CharField(max_length=254, label="Mailbox address or user email")


def _has_active(jobs: list[ComplianceJob]) -> bool:
    return any(job.state in (ComplianceJob.State.QUEUED, ComplianceJob.State.RUNNING) for job in jobs)


@login_required
def gdpr_view(request: HttpRequest) -> HttpResponse:
    """The export form and the caller's export jobs; POST requests an export."""
    form = SubjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = gdpr.export_request(actor=request.user, subject=form.cleaned_data["subject"])
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Export of {job.subject} requested.")
            return redirect("compliance:gdpr")
    jobs = list(gdpr.export_list(actor=request.user)[:50])
    erasures = (
        list(gdpr.job_list(actor=request.user, kind=ComplianceJob.Kind.ERASURE)[:20])
        if request.user.is_superadmin
        else []
    )
    # Without JavaScript the page reloads itself while a job is under way.
    return render(
        request,
        "compliance/gdpr.html",
        {"form": form, "jobs": jobs, "erasures": erasures, "refresh": _has_active(jobs)},
    )


@login_required
def gdpr_export_row_view(request: HttpRequest, job_id: int) -> HttpResponse:
    """One export's table row, which HTMX polls while the job runs; the page otherwise."""
    job = gdpr.export_get(actor=request.user, job_id=job_id)
    if not htmx_partial(request):
        return redirect("compliance:gdpr")
    return render(request, "compliance/gdpr_job_row.html", {"job": job})


@login_required
def gdpr_export_download_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = gdpr.export_get(actor=request.user, job_id=job_id)
    try:
        handle = gdpr.export_open(actor=request.user, job=job)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("compliance:gdpr")
    return FileResponse(
        handle, as_attachment=True, filename=f"export-{job.pk}.zip", content_type="application/zip"
    )


@login_required
@require_POST
def gdpr_export_cancel_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = gdpr.export_get(actor=request.user, job_id=job_id)
    try:
        job = gdpr.export_cancel(actor=request.user, job=job)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    if htmx_partial(request):
        return render(request, "compliance/gdpr_job_row.html", {"job": job})
    return redirect("compliance:gdpr")


@superadmin_required
def gdpr_erasure_view(request: HttpRequest) -> HttpResponse:
    """Two steps: name the subject, then confirm having read what erasure does."""
    form = SubjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        subject = form.cleaned_data["subject"]
        if request.POST.get("confirm") != "yes":
            return render(
                request,
                "compliance/gdpr_erasure_confirm.html",
                {"subject": subject, "backups": gdpr.erasure_backups_statement()},
            )
        try:
            job = gdpr.erasure_request(actor=request.user, subject=subject)
        except ApplicationError as exc:
            apply_application_error(form, exc)
        else:
            messages.success(request, f"Erasure of {job.subject} queued.")
            return redirect("compliance:gdpr-erasure-detail", job_id=job.pk)
    return render(request, "compliance/gdpr_erasure.html", {"form": form})


@superadmin_required
def gdpr_erasure_detail_view(request: HttpRequest, job_id: int) -> HttpResponse:
    """The erasure's progress and, once done, its certificate."""
    job = gdpr.erasure_get(actor=request.user, job_id=job_id)
    return render(
        request,
        "compliance/gdpr_certificate.html",
        {
            "job": job,
            "report": job.report,
            "removed": job.report.get("removed", {}),
            "refresh": _has_active([job]),
        },
    )
