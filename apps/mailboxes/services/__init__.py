"""Mailbox services: the directory (domains, mailboxes, aliases) and the message store
(accepting, delivering, flagging, moving messages). Import from here."""

from apps.mailboxes.services.directory import *  # noqa: F403
from apps.mailboxes.services.directory import (  # noqa: F401 - public names used by callers
    MAX_ALIAS_DEPTH,
    AliasLoop,
    DeletionReport,
)
from apps.mailboxes.services.mailitems import *  # noqa: F403
from apps.mailboxes.services.messages import *  # noqa: F403
