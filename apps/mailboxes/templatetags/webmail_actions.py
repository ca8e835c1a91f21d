"""Buttons other apps add to a webmail message (A3_WEBMAIL_MESSAGE_ACTIONS: templates
included in the message's action bar with its context, `item` included), so that the
mailboxes app needs to know nothing about them."""

from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def webmail_message_action_templates() -> list[str]:
    return list(getattr(settings, "A3_WEBMAIL_MESSAGE_ACTIONS", []))
