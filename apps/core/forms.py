"""Shared form plumbing for the dashboard."""

from __future__ import annotations

from django import forms

from apps.core.exceptions import ApplicationError


def apply_application_error(form: forms.Form, error: ApplicationError) -> None:
    """Show a service's error on the form: per field where it names one, else on top."""
    placed = False
    for name, messages in error.fields.items():
        target = name if name in form.fields else None
        for message in messages:
            form.add_error(target, message)
            placed = True
    if not placed:
        form.add_error(None, error.message)
