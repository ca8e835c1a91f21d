"""Threat services: scanning, verdicts, the quarantine and its review, learning,
digests and behaviour analysis. Import from here."""

from apps.threats.services.learning import *  # noqa: F403
from apps.threats.services.quarantine import *  # noqa: F403
from apps.threats.services.scan import *  # noqa: F403
from apps.threats.services.verdicts import *  # noqa: F403
