"""Relay services: submission (authentication, sender policy, accepting), the outbound
queue and its delivery, routing (MX, transport rules, SRS), DKIM and delivery reports.
Import from here."""

from apps.relay.services.bounces import *  # noqa: F403
from apps.relay.services.dkim import *  # noqa: F403
from apps.relay.services.forwarding import *  # noqa: F403
from apps.relay.services.queue import *  # noqa: F403
from apps.relay.services.queue_admin import *  # noqa: F403
from apps.relay.services.routing import *  # noqa: F403
from apps.relay.services.submission import *  # noqa: F403
from apps.relay.services.system_mail import *  # noqa: F403
