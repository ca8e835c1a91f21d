from apps.compliance.services.audit import *  # noqa: F403
from apps.compliance.services.gdpr import *  # noqa: F403
from apps.compliance.services.holds import *  # noqa: F403
from apps.compliance.services.retention import *  # noqa: F403
