"""Base errors that every adapter (API, pages, SMTP, tasks) knows how to translate."""

from __future__ import annotations


class ApplicationError(Exception):
    """A business rule refused the operation; the caller can fix the input and retry.

    `code` is stable and documented; `fields` maps input field names to messages.
    """

    code = "invalid"
    status_code = 400

    def __init__(
        self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = fields or {}

    @property
    def public_message(self) -> str:
        return self.message


class ConflictError(ApplicationError):
    """The request clashes with existing state (a duplicate, a reference that blocks it)."""

    code = "conflict"
    status_code = 409


class NotFoundError(ApplicationError):
    """The object does not exist, or is outside the caller's scope (we never say which)."""

    code = "not_found"
    status_code = 404


class PermissionDeniedError(ApplicationError):
    """The caller may see the object but not perform this operation on it."""

    code = "permission_denied"
    status_code = 403


class TemporaryFailure(Exception):
    """Something outside our control failed; retrying later may succeed."""
