"""What the threat API's resources share: error documentation, and resolving the
domain and mailbox ids a request body names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter

from apps.core.api.errors import ErrorSerializer
from apps.core.exceptions import ApplicationError
from apps.mailboxes.models import Domain, Mailbox
from apps.threats import selectors

if TYPE_CHECKING:
    from apps.accounts.models import User

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}
READ_ERRORS = {403: ErrorSerializer, 404: ErrorSerializer}


def id_parameter(description: str, name: str = "id") -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.INT, OpenApiParameter.PATH, description=description)


def body_domain(user: User, domain_id: int | None, *, field: str = "domain") -> Domain | None:
    """The domain a request body names, among those the caller can see. An unknown id
    and one outside the caller's scope read the same: the body is wrong."""
    if domain_id is None:
        return None
    domain = Domain.objects.visible_to(user).filter(pk=domain_id).first()
    if domain is None:
        raise ApplicationError("No such domain.", fields={field: ["No such domain."]})
    return domain


def body_mailbox(user: User, mailbox_id: int | None, *, field: str = "mailbox") -> Mailbox | None:
    """The mailbox a request body names, among those the caller reviews."""
    if mailbox_id is None:
        return None
    mailbox = selectors.mailboxes_in_scope(user).select_related("domain").filter(pk=mailbox_id).first()
    if mailbox is None:
        raise ApplicationError("No such mailbox.", fields={field: ["No such mailbox."]})
    return mailbox
