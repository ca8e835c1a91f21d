"""A deterministic mail corpus for the scanning benchmark: the same seed gives the same
bytes on every machine and in every process (each benchmark worker builds it itself).

Messages of about 4-8 KB: plain and HTML ham, spam with links, attachments in zip
archives, and a few GTUBE and EICAR test messages, in fixed proportions.
"""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

from apps.threats.bench.engines import EICAR, GTUBE

RECIPIENT = "bench@bench.test"

# (kind, label, share): label is what a filter should say (Bayes trains on it).
KINDS: tuple[tuple[str, str, float], ...] = (
    ("ham", "ham", 0.40),
    ("ham-html", "ham", 0.15),
    ("ham-zip", "ham", 0.10),
    ("spam", "spam", 0.12),
    ("spam-html", "spam", 0.15),
    ("spam-zip", "spam", 0.04),
    ("gtube", "spam", 0.02),
    ("eicar", "malware", 0.02),
)

HAM_WORDS = [
    "meeting",
    "project",
    "report",
    "budget",
    "schedule",
    "review",
    "team",
    "quarter",
    "invoice",
    "attached",
    "notes",
    "agenda",
    "deadline",
    "draft",
    "proposal",
    "contract",
    "client",
    "update",
    "thanks",
    "regards",
    "tomorrow",
    "monday",
    "friday",
    "office",
    "lunch",
    "call",
    "minutes",
    "release",
    "version",
    "build",
    "test",
    "deploy",
    "server",
    "backup",
    "policy",
    "training",
    "holiday",
    "travel",
    "hotel",
    "flight",
    "conference",
    "slides",
    "feedback",
    "question",
    "answer",
    "summary",
    "figures",
    "table",
    "chart",
    "customer",
    "order",
    "shipment",
    "delivery",
    "warehouse",
    "payroll",
    "audit",
    "planning",
    "roadmap",
    "milestone",
    "design",
]
SPAM_WORDS = [
    "winner",
    "prize",
    "claim",
    "free",
    "offer",
    "limited",
    "guaranteed",
    "cash",
    "bonus",
    "investment",
    "bitcoin",
    "crypto",
    "profit",
    "discount",
    "pharmacy",
    "pills",
    "cheap",
    "loan",
    "credit",
    "approved",
    "urgent",
    "act",
    "now",
    "exclusive",
    "deal",
    "lottery",
    "million",
    "dollars",
    "transfer",
    "beneficiary",
    "inheritance",
    "unclaimed",
    "casino",
    "jackpot",
    "rolex",
    "replica",
    "weight",
    "loss",
    "miracle",
    "click",
    "here",
    "unsubscribe",
    "risk-free",
    "satisfaction",
    "congratulations",
    "selected",
]
HAM_DOMAINS = ("example.org", "partner.example", "docs.example.net", "intranet.example.com")
SPAM_DOMAINS = ("win-prize.example", "cheap-deals.example", "crypto-profit.example", "pharma-shop.example")
SENDER_DOMAINS = ("example.com", "mail.example.net", "corp.example.org", "news.example")


@dataclass(frozen=True)
class CorpusMessage:
    kind: str
    label: str  # "ham", "spam" or "malware"
    raw: bytes
    mail_from: str
    peer_ip: str
    helo: str


def _sentence(rng: random.Random, words: tuple[str, ...] | list[str], mix: list[str] | None = None) -> str:
    count = rng.randint(6, 16)
    chosen = [rng.choice(mix if mix and rng.random() < 0.25 else words) for _ in range(count)]
    return chosen[0].capitalize() + " " + " ".join(chosen[1:]) + rng.choice([".", ".", ".", "!", "?"])


def _paragraphs(rng: random.Random, words: list[str], size: int, mix: list[str] | None = None) -> list[str]:
    paragraphs: list[str] = []
    total = 0
    while total < size:
        paragraph = " ".join(_sentence(rng, words, mix) for _ in range(rng.randint(3, 7)))
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return paragraphs


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in files:
            # A fixed timestamp: the archive's bytes depend on the seed only.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), payload)
    return buffer.getvalue()


def _html(rng: random.Random, paragraphs: list[str], domains: tuple[str, ...]) -> str:
    blocks = []
    for paragraph in paragraphs:
        link = f"https://{rng.choice(domains)}/{rng.choice(['offer', 'docs', 'view', 'a'])}/{rng.randint(1, 99999)}"
        blocks.append(
            f'<p>{paragraph} <a href="{link}">{rng.choice(["here", "details", "link", "open"])}</a></p>'
        )
    return "<html><body>\n" + "\n".join(blocks) + "\n</body></html>\n"


def _message(rng: random.Random, index: int, kind: str, label: str, started: datetime) -> CorpusMessage:
    spammy = label != "ham"
    words = list(SPAM_WORDS if spammy else HAM_WORDS)
    mix = list(HAM_WORDS if spammy else SPAM_WORDS) if rng.random() < 0.3 else None
    local = rng.choice(["news", "info", "anna", "ben", "support", "billing", "team", "no-reply"])
    domain = rng.choice(SENDER_DOMAINS)
    sender = f"{local}{rng.randint(1, 40)}@{domain}"
    email = EmailMessage()
    email["Received"] = (
        f"from mx{rng.randint(1, 9)}.{domain} (mx.{domain} [198.51.100.{rng.randint(1, 254)}]) "
        f"by mx.bench.test with ESMTPS id B{index:06d}; {format_datetime(started)}"
    )
    email["From"] = f"{local.title()} <{sender}>"
    email["To"] = RECIPIENT
    email["Subject"] = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7))).capitalize()
    email["Date"] = format_datetime(started + timedelta(seconds=index * 7))
    email["Message-ID"] = f"<bench-{index}-{rng.randint(10**8, 10**9)}@{domain}>"
    # Sizes of 4-8 KB as sent: an HTML message carries its text twice.
    body_size = {"html": rng.randint(1600, 3000), "zip": rng.randint(2400, 4200)}.get(
        kind.rpartition("-")[2], rng.randint(3000, 6000)
    )
    paragraphs = _paragraphs(rng, words, body_size, mix)
    if kind == "gtube":
        paragraphs.insert(rng.randint(0, len(paragraphs)), GTUBE.decode())
    text = "\n\n".join(paragraphs) + "\n"
    if kind.endswith("-html"):
        email.set_content(text)
        email.add_alternative(_html(rng, paragraphs, SPAM_DOMAINS if spammy else HAM_DOMAINS), subtype="html")
    else:
        if spammy and kind != "eicar":
            text += f"\nhttps://{rng.choice(SPAM_DOMAINS)}/claim/{rng.randint(1, 99999)}\n"
        email.set_content(text)
    if kind.endswith("-zip"):
        inner = "\n".join(_paragraphs(rng, words, 1200)).encode()
        name = "report.txt" if not spammy else rng.choice(["invoice.txt", "details.csv"])
        email.add_attachment(
            _zip([(name, inner)]),
            maintype="application",
            subtype="zip",
            filename=name.rsplit(".", 1)[0] + ".zip",
        )
    if kind == "eicar":
        email.add_attachment(
            _zip([("scan.com", EICAR)]), maintype="application", subtype="zip", filename="document.zip"
        )
    for number, part in enumerate(email.walk()):
        if part.is_multipart():  # the library draws boundaries at random: fix them
            part.set_boundary(f"=_bench_{index}_{number}")
    raw = bytes(email).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return CorpusMessage(
        kind=kind,
        label=label,
        raw=raw,
        mail_from=sender,
        peer_ip=f"198.51.100.{rng.randint(1, 254)}",
        helo=f"mx.{domain}",
    )


def build_corpus(count: int, *, seed: int = 6) -> list[CorpusMessage]:
    """`count` messages, kinds in the KINDS proportions (at least one GTUBE and EICAR
    message once count ≥ 50), shuffled by `seed`."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    plan: list[tuple[str, str]] = []
    for kind, label, share in KINDS:
        wanted = round(count * share)
        if kind in ("gtube", "eicar") and count >= 50:
            wanted = max(wanted, 1)
        plan += [(kind, label)] * wanted
    plan = (plan + [("ham", "ham")] * count)[:count]
    rng.shuffle(plan)
    started = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    return [_message(rng, index, kind, label, started) for index, (kind, label) in enumerate(plan)]
