"""Channel-layer group names for live alerts (`<object>.<id>`)."""

ALL_ALERTS_GROUP = "alerts.all"


def domain_group(domain_id: int) -> str:
    return f"domain.{domain_id}"
