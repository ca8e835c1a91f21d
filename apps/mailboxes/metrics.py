"""Gauges of what A3Mailer hosts, read from the database at scrape time."""

from __future__ import annotations

import logging

from prometheus_client.core import REGISTRY, GaugeMetricFamily

logger = logging.getLogger(__name__)


def _family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "a3_hosted_objects", "Hosted objects, by kind and state.", labels=["kind", "state"]
    )


class HostedObjectsCollector:
    def describe(self):
        return [_family()]

    def collect(self):
        from django.db import DatabaseError

        from apps.mailboxes.models import Alias, Domain, Mailbox

        gauge = _family()
        try:
            for kind, model in (("domain", Domain), ("mailbox", Mailbox), ("alias", Alias)):
                active = model.objects.filter(is_active=True).count()
                total = model.objects.count()
                gauge.add_metric([kind, "active"], active)
                gauge.add_metric([kind, "disabled"], total - active)
        except DatabaseError:
            logger.warning("hosted-object gauges unavailable: database not ready")
            return
        yield gauge


_registered = False


def register() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(HostedObjectsCollector())
        _registered = True
