"""The Bayesian spam classifier: tokens, Robinson/Fisher chi-square combining, the stage.

Each domain has its own token store (BayesToken, BayesCorpus), taught by quarantine
review and by users' "report spam / not spam" (apps.threats.services.learning). This
module holds the pure parts (the tokenizer and the arithmetic); reading and writing the
store is the learning service's.

The classifier is the one SpamBayes uses and SpamAssassin's Bayes follows:

- a token's spam probability is Robinson's f(w) = (s·x + n·p(w)) / (s + n), where p(w)
  compares how often the token appeared in spam and in ham (each relative to the number
  of spam and ham messages learnt), n is how many messages it appeared in, and the prior
  x = 0.5 with strength s = 1 keeps rare tokens close to "don't know";
- the ~150 tokens farthest from 0.5 are combined with Fisher's method twice (once for
  "spammy", once for "hammy") and the two chi-square tests are averaged into 0..1.

Tokens are stored as 63-bit BLAKE2b hashes, so the store never holds anyone's words.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Iterable, Iterator
from email.utils import getaddresses
from functools import lru_cache

from apps.threats.pipeline import ScanContext, StageOutcome, Unscannable, scan_stage

# --- Tokenizer -----------------------------------------------------------------------------

MAX_TOKENS = 1000  # unique tokens per message: enough to classify, bounded to query
MIN_WORD, MAX_WORD = 3, 40
# Text read per part and in all: spam puts its message first, and a 20 MB text part
# must not cost 20 MB of regex work.
MAX_PART_TEXT = 256 * 1024
MAX_TEXT = 1024 * 1024
# Text tokenized between two deadline checks: whole words, about a millisecond of work.
_TEXT_CHUNK = 16 * 1024

# `\w` is Unicode-aware for str patterns: "grüße", "привет" and "東京" are words. Words
# shorter than MIN_WORD never make a token, so the pattern skips them itself: a run of
# word characters matches whole or not at all.
_WORD = re.compile(rf"\w{{{MIN_WORD},}}")
_WORD_RUN = re.compile(r"\w+")
_URL_HOST = re.compile(r"(?i)\bhttps?://(?:[^\s/@<>\"']*@)?([^\s/:?#<>\"'\\]+)")


def _words(text: str, start: int = 0, end: int | None = None) -> list[str]:
    """The word tokens of text[start:end] in order of first appearance, each once."""
    # Tokenizing is most of the stage's own time: one C-level findall, and the Python work
    # only once per distinct word (a token depends on its word alone, so dropping repeats
    # first keeps the order in which tokens first appear).
    found = dict.fromkeys(_WORD.findall(text, start, len(text) if end is None else end))
    return [
        # What SpamBayes does with what is not a word (base64 runs, hashes): keep only its
        # first character and rough length.
        f"skip:{word[0].lower()}:{len(word) // 10 * 10}" if len(word) > MAX_WORD else word.lower()
        for word in found
        # Long numbers (ids, dates, phone numbers) say little.
        if not (len(word) > 6 and word.isdigit())
    ]


def _word_chunks(text: str) -> Iterator[list[str]]:
    """_words of `text` in pieces of about _TEXT_CHUNK characters, never cut inside a word."""
    start = 0
    while start < len(text):
        end = start + _TEXT_CHUNK
        if end < len(text) and (run := _WORD_RUN.match(text, end)):
            end = run.end()  # finish the word the cut would split
        yield _words(text, start, end)
        start = end


def _domain_tokens(prefix: str, host: str) -> list[str]:
    """The host, and its last two labels: spam varies the subdomains of one domain."""
    host = host.strip().strip(".").lower()
    if not host or len(host) > 253:
        return []
    labels = host.split(".")
    tokens = [f"{prefix}{host}"]
    if len(labels) > 2:
        tokens.append(f"{prefix}{'.'.join(labels[-2:])}")
    return tokens


def _header_tokens(context: ScanContext) -> Iterator[str]:
    for subject in context.header_values("Subject")[:1]:
        for word in _words(subject[:1000]):
            yield f"s:{word}"
    for _, address in getaddresses(context.header_values("From")[:1]):
        if "@" in address:
            yield from _domain_tokens("fd:", address.rpartition("@")[2])


def _part_tokens(context: ScanContext, texts: list[tuple[str, bool]]) -> Iterator[str]:
    """Content types and attachment extensions; fills `texts` with (text, is_html) of the
    text parts, bounded."""
    budget = MAX_TEXT
    for part in context.parts:
        yield f"ct:{part.content_type}"
        if part.filename:
            extension = part.filename.rpartition(".")[2].lower() if "." in part.filename else ""
            yield f"ext:{extension[:10]}"
            continue
        if part.content_type.startswith("text/") and budget > 0:
            text = part.payload[: min(MAX_PART_TEXT, budget)].decode("utf-8", errors="replace")
            budget -= len(text)
            texts.append((text, part.content_type == "text/html"))


def message_tokens(context: ScanContext, *, limit: int = MAX_TOKENS) -> list[str]:
    """The message's unique tokens, at most `limit`: header tokens first (subject words
    "s:", From domain "fd:"), then the MIME structure ("ct:", "ext:"), link domains
    ("u:") and body words. Raises Unscannable (from the parser) for mail that cannot be
    taken apart."""
    seen: dict[str, None] = {}

    def add(tokens: Iterable[str]) -> bool:
        """Whether there is room for more: the first `limit` unique tokens are kept."""
        context.check_time()
        seen.update(dict.fromkeys(tokens))
        return len(seen) < limit

    def fill() -> None:
        texts: list[tuple[str, bool]] = []
        if not (add(_header_tokens(context)) and add(_part_tokens(context, texts))):
            return
        for text, _ in texts:
            if not add(t for m in _URL_HOST.finditer(text) for t in _domain_tokens("u:", m.group(1))):
                return
        for text, is_html in texts:
            for words in _word_chunks(_html_text(text) if is_html else text):
                if not add(words):
                    return

    fill()
    return list(seen)[:limit]


def _html_text(source: str) -> str:
    import nh3

    # Tags and their attributes are markup, not words; script and style go with content.
    return html.unescape(nh3.clean(source, tags=set()))


def raw_tokens(raw: bytes, *, limit: int = MAX_TOKENS) -> list[str]:
    """Tokens of raw bytes: the parsed message's, or for mail the parser refuses (which
    users still report as spam) the words of its first bytes."""
    context = ScanContext(raw=raw)
    try:
        return message_tokens(context, limit=limit)
    except Unscannable:
        text = raw[:MAX_TEXT].decode("utf-8", errors="replace")
        return list(dict.fromkeys(_words(text)))[:limit]


@lru_cache(maxsize=65536)  # common words recur in every message; hashing them is not free
def token_id(token: str) -> int:
    """A token's stable id: 63 bits of BLAKE2b, so it fits a signed BIGINT column."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def token_ids(tokens: Iterable[str]) -> list[int]:
    return list(dict.fromkeys(token_id(token) for token in tokens))


# --- Classifier ------------------------------------------------------------------------------

# Before a store has learnt this many of each class its counts mean little: no score.
MIN_SPAM_LEARNT = 20
MIN_HAM_LEARNT = 20
# Robinson's prior: an unseen token is x = 0.5 ("don't know") with the weight of s = 1 message.
ROBINSON_S = 1.0
ROBINSON_X = 0.5
MAX_CLUES = 150  # the strongest tokens combined
MIN_STRENGTH = 0.1  # |f(w) - 0.5| below this is noise, not a clue (SpamBayes' default)


def token_probability(spam: int, ham: int, spam_learnt: int, ham_learnt: int) -> float:
    """Robinson's f(w): how spammy a token is, pulled towards 0.5 when seldom seen."""
    spam_ratio = spam / spam_learnt if spam_learnt else 0.0
    ham_ratio = ham / ham_learnt if ham_learnt else 0.0
    if spam_ratio + ham_ratio == 0:
        return ROBINSON_X
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (ROBINSON_S * ROBINSON_X + n * p) / (ROBINSON_S + n)


def chi2_survival(x2: float, degrees: int) -> float:
    """P(chi² with `degrees` (even) degrees of freedom ≥ x2)."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, degrees // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probabilities: Iterable[float]) -> tuple[float, int]:
    """Fisher/Robinson chi-square combining of the strongest clues: (spam probability
    0..1, clues used). 0.5 when nothing is a clue."""
    clues = sorted(
        (p for p in probabilities if abs(p - 0.5) >= MIN_STRENGTH), key=lambda p: abs(p - 0.5), reverse=True
    )[:MAX_CLUES]
    if not clues:
        return 0.5, 0
    n = len(clues)
    # f(w) is never 0 or 1 (the prior keeps it inside), so the logarithms are finite.
    spamminess = 1.0 - chi2_survival(-2.0 * math.fsum(math.log1p(-p) for p in clues), 2 * n)
    hamminess = 1.0 - chi2_survival(-2.0 * math.fsum(math.log(p) for p in clues), 2 * n)
    return (spamminess - hamminess + 1.0) / 2.0, n


# --- Score --------------------------------------------------------------------------------

# (probability bound, score): a sure spam verdict adds enough to reach the header/junk
# thresholds together with any other finding (A3_SPAM_HEADER_SCORE is 5.0); a sure ham
# verdict takes a little off, never enough to hide what the rule and malware stages found.
SPAM_SCORES = ((0.99, 5.5), (0.95, 3.5), (0.80, 2.0))
HAM_SCORES = ((0.01, -2.0), (0.05, -1.0))


def score_for(probability: float) -> float:
    for bound, score in SPAM_SCORES:
        if probability >= bound:
            return score
    for bound, score in HAM_SCORES:
        if probability <= bound:
            return score
    return 0.0


def _percent(probability: float) -> str:
    # Never "100% spam" or "0% spam": the classifier is never that sure, and rounding
    # 99.6 up would claim it is.
    value = probability * 100
    return f"{min(max(math.floor(value) if value > 50 else math.ceil(value), 0), 100)}%"


@scan_stage("bayes")
def bayes_stage(context: ScanContext) -> StageOutcome:
    """Score with the token store of the first recipient domain."""
    # learning imports this module's tokenizer; importing it here avoids the cycle.
    from apps.threats.services.learning import bayes_scan

    domain_id = context.primary_domain_id
    if domain_id is None:
        return StageOutcome(status="skipped", reasons=["Bayesian classifier: no local recipient"])
    scan = bayes_scan(domain_id=domain_id, context=context)
    if not scan.enabled:
        return StageOutcome(status="skipped", reasons=["Bayesian classifier: turned off for this domain"])
    probability, spam_learnt, ham_learnt = scan.probability, scan.spam_learnt, scan.ham_learnt
    if probability is None:
        return StageOutcome(
            status="skipped",
            reasons=["not enough training yet"],
            data={"spam_learnt": spam_learnt, "ham_learnt": ham_learnt},
        )
    return StageOutcome(
        score=score_for(probability),
        reasons=[
            f"Bayesian classifier: {_percent(probability)} spam "
            f"(learnt from {spam_learnt} spam, {ham_learnt} ham)"
        ],
        data={"probability": round(probability, 4), "spam_learnt": spam_learnt, "ham_learnt": ham_learnt},
    )
