"""Relay services: submission (authentication, sender policy, accepting), the outbound
queue and its delivery, routing (MX, transport rules, SRS), DKIM and delivery reports.
Import from here."""
