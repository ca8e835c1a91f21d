from __future__ import annotations

from django.db.models import QuerySet

from apps.alerts.models import Alert
from apps.core.exceptions import NotFoundError


def alert_list(*, actor) -> QuerySet[Alert]:
    """Alerts the actor may see, newest first."""
    return Alert.objects.visible_to(actor)


def alert_get(*, actor, alert_id: int) -> Alert:
    try:
        return alert_list(actor=actor).get(pk=alert_id)
    except Alert.DoesNotExist:
        raise NotFoundError("No such alert.") from None


def alert_groups_for(*, actor) -> list[str]:
    """Channel groups the actor's WebSocket joins; empty means not allowed at all."""
    from apps.alerts.groups import ALL_ALERTS_GROUP, domain_group

    if not getattr(actor, "is_authenticated", False) or not actor.is_active:
        return []
    if actor.is_superadmin:
        return [ALL_ALERTS_GROUP]
    if actor.is_domain_admin:
        ids = actor.administered_domains.values_list("id", flat=True)
        # A domain admin with no domains yet still gets a (quiet) connection.
        return [domain_group(domain_id) for domain_id in ids] or [f"user.{actor.pk}"]
    return []
