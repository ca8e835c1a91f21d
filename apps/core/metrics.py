"""A3Mailer's own Prometheus metrics, next to django-prometheus' HTTP and DB metrics."""

from __future__ import annotations

from prometheus_client import Counter

ALERTS_EMITTED = Counter("a3_alerts_emitted_total", "Alerts emitted, by level.", ["level"])
LOGINS = Counter("a3_logins_total", "Sign-in attempts, by channel and outcome.", ["channel", "outcome"])
