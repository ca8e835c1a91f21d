"""Rendering mail for people: HTML bodies sanitised with nh3 (Ammonia), remote content
blocked unless the reader asks for it.

The sanitised HTML is served into a sandboxed iframe with its own strict CSP (see the
message body view), so the sanitiser is one layer of two: no script survives nh3, and
none could run in the sandbox even if one did.
"""

from __future__ import annotations

from dataclasses import dataclass

import nh3

# Attributes mail layouts need for display; nothing that can carry script or CSS.
_ATTRIBUTES = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "a": {"href", "hreflang", "title"},
    "img": {"src", "alt", "width", "height", "align", "title"},
    "td": {"colspan", "rowspan", "align", "valign", "width"},
    "th": {"colspan", "rowspan", "align", "valign", "width"},
    "table": {"width", "align", "border", "cellpadding", "cellspacing"},
    "font": {"color", "size"},
    "*": {"dir", "lang"},
}
_TAGS = set(nh3.ALLOWED_TAGS) | {"font", "table", "tbody", "thead", "tfoot", "tr", "td", "th"}
_URL_SCHEMES = {"http", "https", "mailto", "cid", "data", "tel"}
BLOCKED_IMAGE = "data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/>"


@dataclass(frozen=True)
class SanitizedHtml:
    html: str
    blocked_images: int  # remote images swapped for a blank image


def sanitize_html(html: str, *, allow_remote_images: bool = False) -> SanitizedHtml:
    """Return HTML safe to show: no scripts, event handlers, javascript: URLs, forms,
    frames or styles; remote images only when allowed; links open a new context."""
    blocked = 0

    def attribute_filter(tag: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if tag == "img" and attribute == "src":
            lowered = value.strip().lower()
            if lowered.startswith("data:"):
                return value if lowered.startswith("data:image/") else None
            if lowered.startswith("cid:"):
                return value
            if not allow_remote_images:
                # Anything else may reach the network, however it is spelled
                # ("ht&#9;tps:", "/\\host", relative paths): block it all.
                blocked += 1
                return BLOCKED_IMAGE
        return value

    cleaned = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=attribute_filter,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )
    return SanitizedHtml(html=cleaned, blocked_images=blocked)
