from django import template

register = template.Library()

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]


@register.filter(name="bytes")
def format_bytes(value: int | None) -> str:
    """1536 -> '1.5 KiB'; 0 or None -> '0 B'."""
    size = float(value or 0)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"


@register.filter(name="quota")
def format_quota(value: int | None) -> str:
    return "no limit" if not value else format_bytes(value)
