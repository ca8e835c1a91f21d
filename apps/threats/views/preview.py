"""What a reviewer sees of a held message's body: the project's nh3 sanitiser (remote
content blocked), then every link turned into plain text followed by its real target.

A quarantined message is suspect by definition, so its links must not work at all: a
click in the preview would navigate the frame to whatever the sender chose. Each <a> is
replaced by a <span> holding its text and "[→ target]", and the targets are listed
beside the preview too, so a link that says one address and goes to another is plain
to see. The result goes through the sanitiser a second time: what the rewrite emits is
held to the same rules as the mail itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser

from apps.mailboxes.parsing import parse_message
from apps.mailboxes.rendering import sanitize_html

# Targets worth showing; anything else (cid:, data:) is not somewhere a click would go.
_SHOWN_SCHEMES = ("http:", "https:", "mailto:", "tel:")
MAX_LINKS = 200
MAX_TARGET_CHARS = 500
# Void elements: the rewrite must not emit end tags for them.
_VOID = {"area", "br", "col", "hr", "img", "wbr"}


@dataclass(frozen=True)
class Link:
    text: str
    target: str


@dataclass(frozen=True)
class Preview:
    """A held message's body as the reviewer sees it. `html` is sanitised and has no
    links left; otherwise `text` is shown, escaped."""

    html: str | None
    text: str
    links: list[Link] = field(default_factory=list)
    blocked_images: int = 0


def _shown_target(href: str) -> str:
    target = href.strip()
    if not target.lower().startswith(_SHOWN_SCHEMES):
        return ""
    return target[:MAX_TARGET_CHARS]


class _LinkRewriter(HTMLParser):
    """Re-serialises sanitised HTML with every <a> made inert text plus its target."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.links: list[Link] = []
        self._open: list[tuple[str, list[str]]] = []  # (target, text chunks) per open <a>

    @staticmethod
    def _tag(tag: str, attrs: list[tuple[str, str | None]]) -> str:
        rendered = "".join(
            f' {name}="{escape(value, quote=True)}"' if value is not None else f" {name}"
            for name, value in attrs
        )
        return f"<{tag}{rendered}>"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = next((value or "" for name, value in attrs if name == "href"), "")
            self._open.append((_shown_target(href), []))
            self.out.append("<span>")
            return
        self.out.append(self._tag(tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            self.out.append(self._tag(tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close_link()
        elif tag not in _VOID:
            self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        for _, chunks in self._open:
            chunks.append(data)
        self.out.append(escape(data, quote=False))

    def _close_link(self) -> None:
        if not self._open:
            return
        target, chunks = self._open.pop()
        self.out.append("</span>")
        if target:
            self.out.append(f" <small>[→ {escape(target, quote=False)}]</small>")
            if len(self.links) < MAX_LINKS:
                text = " ".join("".join(chunks).split())[:200]
                self.links.append(Link(text=text, target=target))

    def close(self) -> None:
        super().close()
        while self._open:
            self._close_link()


def preview_of(raw: bytes) -> Preview:
    """The body of a raw message, ready for the preview frame: sanitised HTML without
    links (remote images blocked), or the plain text; with the list of link targets."""
    parsed = parse_message(raw)
    if parsed.html is None:
        return Preview(html=None, text=parsed.text)
    sanitized = sanitize_html(parsed.html, allow_remote_images=False)
    rewriter = _LinkRewriter()
    rewriter.feed(sanitized.html)
    rewriter.close()
    html = sanitize_html("".join(rewriter.out), allow_remote_images=False).html
    unique: dict[str, Link] = {}
    for link in rewriter.links:
        unique.setdefault(link.target, link)
    return Preview(
        html=html, text=parsed.text, links=list(unique.values()), blocked_images=sanitized.blocked_images
    )
