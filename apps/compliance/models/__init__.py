"""Compliance models: the audit log, retention and legal holds, GDPR jobs, DLP."""

from apps.compliance.models.audit import *  # noqa: F403
from apps.compliance.models.dlp import *  # noqa: F403
from apps.compliance.models.gdpr import *  # noqa: F403
from apps.compliance.models.retention import *  # noqa: F403
