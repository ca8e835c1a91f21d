"""The Bayesian classifier: tokenizer, chi-square combining, the per-domain token store
(learning, moving a message between classes, isolation, pruning) and the scan stage."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from apps.core.exceptions import NotFoundError
from apps.mailboxes.blobstore import blob_store
from apps.mailboxes.models import Message
from apps.mailboxes.services import new_queue_id
from apps.threats.models import BayesCorpus, BayesToken, BayesTraining, DomainPolicy
from apps.threats.pipeline import ScanContext, StageTimeout, pipeline_run
from apps.threats.services.learning import (
    bayes_classify,
    bayes_prune,
    bayes_train_message,
    bayes_train_raw,
)
from apps.threats.stages.bayes import (
    MAX_TOKENS,
    bayes_stage,
    combine,
    message_tokens,
    raw_tokens,
    score_for,
    token_id,
    token_ids,
    token_probability,
)

# --- A synthetic corpus -------------------------------------------------------------------------
#
# Spam and ham each have words of their own, share a large common vocabulary, and borrow
# some of each other's words (overlap and noise): a store must learn which words tell.

_LETTERS = "abcdefghijklmnopqrstuvwxyzäöüéñ"


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    return list(dict.fromkeys("".join(rng.choices(_LETTERS, k=rng.randint(4, 9))) for _ in range(size)))


_VOCAB_RNG = random.Random(6006)
COMMON = _vocabulary(_VOCAB_RNG, 400)
SPAM_WORDS = _vocabulary(_VOCAB_RNG, 150)
HAM_WORDS = _vocabulary(_VOCAB_RNG, 150)
SPAM_DOMAINS = [f"{word}.example" for word in _vocabulary(_VOCAB_RNG, 40)]
HAM_DOMAINS = [f"{word}.example" for word in _vocabulary(_VOCAB_RNG, 15)]
SHARED_DOMAINS = ["mail.example", "post.example"]


# Common words follow Zipf's law, as in language: a few are in nearly every message.
_COMMON_WEIGHTS = list(itertools.accumulate(1 / rank for rank in range(1, len(COMMON) + 1)))


def synthetic_message(rng: random.Random, *, is_spam: bool, own_rate: float = 0.2) -> bytes:
    """A message with `own_rate` of its words from its class's vocabulary, 5% from the
    other class's and the rest common words."""
    own, other = (SPAM_WORDS, HAM_WORDS) if is_spam else (HAM_WORDS, SPAM_WORDS)

    def words(count: int) -> str:
        chosen = []
        for _ in range(count):
            roll = rng.random()
            if roll < own_rate:
                chosen.append(rng.choice(own))
            elif roll < own_rate + 0.05:
                chosen.append(rng.choice(other))
            else:
                chosen.append(rng.choices(COMMON, cum_weights=_COMMON_WEIGHTS)[0])
        return " ".join(chosen)

    domains = SPAM_DOMAINS if is_spam else HAM_DOMAINS
    sender = rng.choice(domains if rng.random() < 0.7 else SHARED_DOMAINS)
    link = ""
    if rng.random() < (0.6 if is_spam else 0.2):
        link = (
            f"\r\nhttps://{rng.choice(domains if rng.random() < 0.8 else SHARED_DOMAINS)}/x?id={rng.random()}"
        )
    body = "\r\n".join(words(rng.randint(6, 14)) for _ in range(rng.randint(3, 8)))
    return (
        f"From: Someone <someone@{sender}>\r\nTo: alice@alpha.test\r\nSubject: {words(4)}\r\n"
        f"Message-ID: <{rng.random()}@{sender}>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}{link}\r\n"
    ).encode()


def clear_message(seed: int, *, is_spam: bool) -> bytes:
    """A message that says plainly what it is: half its words are its class's."""
    return synthetic_message(random.Random(seed), is_spam=is_spam, own_rate=0.9)


def corpus(seed: int, spam: int, ham: int) -> list[tuple[bytes, bool]]:
    rng = random.Random(seed)
    return [(synthetic_message(rng, is_spam=True), True) for _ in range(spam)] + [
        (synthetic_message(rng, is_spam=False), False) for _ in range(ham)
    ]


def train(domain, messages: list[tuple[bytes, bool]]) -> None:
    for raw, is_spam in messages:
        bayes_train_raw(domain_id=domain.pk, raw=raw, is_spam=is_spam)


def context_for(raw: bytes, domain) -> ScanContext:
    return ScanContext(raw=raw, recipient_domain_ids=[domain.pk])


@pytest.fixture
def blob_dir(settings, tmp_path):
    settings.A3_BLOB_DIR = tmp_path / "blobs"
    return settings.A3_BLOB_DIR


def stored_message(raw: bytes) -> Message:
    digest = blob_store().put(raw)
    return Message.objects.create(
        queue_id=new_queue_id(), blob_sha256=digest, size=len(raw), state=Message.State.DELIVERED
    )


def counts(domain, raw: bytes) -> dict[int, tuple[int, int]]:
    ids = token_ids(raw_tokens(raw))
    return {
        token: (spam, ham)
        for token, spam, ham in BayesToken.objects.filter(domain=domain, token__in=ids).values_list(
            "token", "spam", "ham"
        )
    }


def corpus_counts(domain) -> tuple[int, int]:
    return tuple(BayesCorpus.objects.filter(domain=domain).values_list("spam_count", "ham_count").get())


# --- Tokenizer ----------------------------------------------------------------------------------

MIXED = (
    b"From: Shop <deals@news.cheap-pills.example>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe=2C_win_a_PRIZE?=\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Caf\xc3\xa9 \xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 ok go 12345678901 "
    + b"z"
    * 60
    + b" https://www.Track.Example.net/a?b=c\r\n"
    b"--b\r\nContent-Type: text/html\r\n\r\n"
    b'<p style="color:red">Click&nbsp;<a href="http://evil.example/x">here</a></p>'
    b"<script>hiddenscriptword()</script>\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=Invoice.PDF\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
)


def test_message_tokens_reads_headers_structure_links_and_unicode_words():
    tokens = message_tokens(ScanContext(raw=MIXED))

    # Subject words (decoded, lower-cased), the From domain and its parent.
    assert {"s:grüße", "s:win", "s:prize"} <= set(tokens)
    assert {"fd:news.cheap-pills.example", "fd:cheap-pills.example"} <= set(tokens)
    # Link domains, from text and from HTML attributes.
    assert {"u:www.track.example.net", "u:example.net", "u:evil.example"} <= set(tokens)
    # MIME structure, not attachment bytes.
    assert {"ct:text/plain", "ct:text/html", "ct:application/pdf", "ext:pdf"} <= set(tokens)
    # Unicode words, lower-cased; HTML is read as text without its markup and scripts.
    assert {"café", "привет", "click", "here"} <= set(tokens)
    assert not {"style", "color", "href", "hiddenscriptword", "nbsp"} & set(tokens)
    # Too short, long numbers and non-words (a run of 60 letters) are not words.
    assert not {"ok", "go", "12345678901"} & set(tokens)
    assert "skip:z:60" in tokens
    assert len(tokens) == len(set(tokens))


def test_message_tokens_are_capped():
    words = " ".join(f"word{n:05d}" for n in range(5000))
    raw = f"From: a@b.example\r\nSubject: many\r\n\r\n{words}\r\n".encode()

    tokens = message_tokens(ScanContext(raw=raw))

    assert len(tokens) == MAX_TOKENS
    assert tokens[:2] == ["s:many", "fd:b.example"]  # header tokens come first


def test_message_tokens_stop_at_the_stage_deadline():
    words = " ".join(f"word{n:05d}" for n in range(5000))
    context = ScanContext(raw=f"Subject: x\r\n\r\n{words}\r\n".encode())
    context.deadline = 1.0  # long past (monotonic clock)

    with pytest.raises(StageTimeout):
        message_tokens(context)


def test_raw_tokens_fall_back_to_words_for_mail_the_parser_refuses(settings):
    settings.A3_SCAN_MAX_HEADER_BYTES = 100
    raw = b"X-Long: " + b"a " * 200 + b"\r\n\r\nunparseable lottery winnings\r\n"

    assert {"unparseable", "lottery", "winnings"} <= set(raw_tokens(raw))


def test_token_ids_are_stable_63_bit_hashes():
    assert token_id("hello") == 6042553977968695870  # the same on every machine, forever
    assert token_id("hello") != token_id("s:hello")
    assert all(0 <= token_id(word) < 2**63 for word in ["a", "grüße", "u:evil.example", "x" * 40])


# --- Arithmetic ----------------------------------------------------------------------------------


def test_token_probability_is_robinsons_f_of_w():
    # Seen in 10 of 20 spam and none of 20 ham: p = 1, n = 10 → (0.5 + 10) / 11.
    assert token_probability(10, 0, 20, 20) == pytest.approx(10.5 / 11)
    # Seen once: the prior pulls it half way back to "don't know".
    assert token_probability(0, 1, 20, 20) == pytest.approx(0.25)
    # Relative to the number learnt: 10 of 100 spam vs 1 of 10 ham is no evidence.
    assert token_probability(10, 1, 100, 10) == pytest.approx(0.5)
    assert token_probability(0, 0, 20, 20) == 0.5


def test_combine_chi_square():
    assert combine([]) == (0.5, 0)
    assert combine([0.45, 0.55]) == (0.5, 0)  # too weak to be clues
    spam, used = combine([0.99] * 20)
    assert spam > 0.999 and used == 20
    assert combine([0.01] * 20)[0] < 0.001
    assert combine([0.99] * 10 + [0.01] * 10)[0] == pytest.approx(0.5)  # torn: unsure
    assert combine([0.9] * 400)[1] == 150  # only the strongest clues count


@pytest.mark.parametrize(
    ("probability", "score"),
    [
        (0.999, 5.5),
        (0.99, 5.5),
        (0.97, 3.5),
        (0.85, 2.0),
        (0.5, 0.0),
        (0.2, 0.0),
        (0.04, -1.0),
        (0.005, -2.0),
    ],
)
def test_score_for_probability(probability, score):
    assert score_for(probability) == score


# --- Learning -------------------------------------------------------------------------------------


def test_bayes_train_message_counts_once_and_moves_between_classes(blob_dir, domain_a):
    raw = synthetic_message(random.Random(1), is_spam=True)
    message = stored_message(raw)

    assert bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=True) is True
    learnt = counts(domain_a, raw)
    assert len(learnt) == len(token_ids(raw_tokens(raw)))
    assert set(learnt.values()) == {(1, 0)}
    assert corpus_counts(domain_a) == (1, 0)

    # Reported again as spam: nothing changes.
    assert bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=True) is False
    assert set(counts(domain_a, raw).values()) == {(1, 0)}
    assert corpus_counts(domain_a) == (1, 0)

    # Then as not spam: it moves from one class to the other.
    assert bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=False) is True
    assert set(counts(domain_a, raw).values()) == {(0, 1)}
    assert corpus_counts(domain_a) == (0, 1)
    assert BayesTraining.objects.get(domain=domain_a, message=message).is_spam is False


def test_bayes_train_message_adds_to_tokens_other_messages_taught(blob_dir, domain_a):
    raw = b"From: x@shop.example\r\nSubject: offer\r\n\r\ncheap watches today\r\n"
    bayes_train_raw(domain_id=domain_a.pk, raw=raw, is_spam=True)
    bayes_train_raw(domain_id=domain_a.pk, raw=raw, is_spam=False)
    message = stored_message(raw)

    bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=True)
    assert set(counts(domain_a, raw).values()) == {(2, 1)}
    bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=False)
    assert set(counts(domain_a, raw).values()) == {(1, 2)}
    assert corpus_counts(domain_a) == (1, 2)


def test_bayes_train_message_counts_a_thousand_tokens_in_a_few_statements(
    blob_dir, domain_a, django_assert_max_num_queries
):
    words = " ".join(f"word{n:05d}" for n in range(3000))
    message = stored_message(f"Subject: big\r\n\r\n{words}\r\n".encode())

    # Not one statement per token: the inserts go in batches (SQLite: about 200 rows
    # each), then a single UPDATE adds to every row.
    with django_assert_max_num_queries(20):
        bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=True)

    assert BayesToken.objects.filter(domain=domain_a, spam=1, ham=0).count() == MAX_TOKENS


def test_bayes_train_message_without_its_content_is_not_found(blob_dir, domain_a):
    message = Message.objects.create(queue_id=new_queue_id(), blob_sha256="0" * 64, size=10)

    with pytest.raises(NotFoundError) as caught:
        bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=True)

    assert caught.value.code == "content_missing"
    assert not BayesTraining.objects.exists()
    assert not BayesToken.objects.exists()


def test_untraining_forgets_tokens_no_message_still_holds(blob_dir, domain_a):
    only_here = b"Subject: zanzibar\r\n\r\nquixotic\r\n"
    message = stored_message(only_here)
    bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=True)
    bayes_train_raw(domain_id=domain_a.pk, raw=b"Subject: other\r\n\r\nquixotic\r\n", is_spam=True)
    quixotic, zanzibar = token_ids(["quixotic", "s:zanzibar"])
    assert counts(domain_a, only_here) == {
        quixotic: (2, 0),
        zanzibar: (1, 0),
        token_id("ct:text/plain"): (2, 0),
    }

    bayes_train_message(domain_id=domain_a.pk, message=message, is_spam=False)

    # "s:zanzibar" was only ever this message's spam token: (0, 0) is deleted, not kept.
    assert not BayesToken.objects.filter(domain=domain_a, spam=0, ham=0).exists()
    assert counts(domain_a, only_here) == {
        quixotic: (1, 1),
        zanzibar: (0, 1),
        token_id("ct:text/plain"): (1, 1),
    }


def test_bayes_prune_removes_stale_single_count_tokens(domain_a, domain_b):
    old = timezone.now() - timedelta(days=200)
    with time_machine.travel(old):
        bayes_train_raw(domain_id=domain_a.pk, raw=b"Subject: once\r\n\r\nrare\r\n", is_spam=True)
        bayes_train_raw(domain_id=domain_a.pk, raw=b"Subject: twice\r\n\r\ncommon\r\n", is_spam=True)
        bayes_train_raw(domain_id=domain_a.pk, raw=b"Subject: twice\r\n\r\ncommon\r\n", is_spam=False)
        bayes_train_raw(domain_id=domain_b.pk, raw=b"Subject: once\r\n\r\nrare\r\n", is_spam=True)
    bayes_train_raw(domain_id=domain_a.pk, raw=b"Subject: fresh\r\n\r\nnew\r\n", is_spam=False)

    assert bayes_prune(domain_id=domain_a.pk, older_than_days=180) == 2

    remaining = set(BayesToken.objects.filter(domain=domain_a).values_list("token", flat=True))
    assert remaining == set(token_ids(["s:twice", "common", "s:fresh", "new", "ct:text/plain"]))
    assert BayesToken.objects.filter(domain=domain_b).count() == 3  # another store: untouched
    assert bayes_prune(older_than_days=180) == 3  # every store
    assert not BayesToken.objects.filter(domain=domain_b).exists()


# --- Classifying -------------------------------------------------------------------------------


def test_bayes_stage_is_skipped_until_the_store_learnt_enough(domain_a):
    train(domain_a, corpus(seed=3, spam=19, ham=30))
    raw = synthetic_message(random.Random(4), is_spam=True)

    outcome = bayes_stage(context_for(raw, domain_a))

    assert (outcome.status, outcome.score, outcome.reasons) == ("skipped", 0.0, ["not enough training yet"])
    assert bayes_classify(domain_id=domain_a.pk, context=context_for(raw, domain_a)) == (None, 19, 30)


def test_the_classifier_learns_from_a_corpus(domain_a):
    train(domain_a, corpus(seed=11, spam=200, ham=200))
    held_out = corpus(seed=12, spam=100, ham=100)

    results = [
        (bayes_classify(domain_id=domain_a.pk, context=context_for(raw, domain_a))[0], is_spam)
        for raw, is_spam in held_out
    ]

    correct = sum((probability > 0.5) == is_spam for probability, is_spam in results)
    assert correct / len(results) >= 0.90
    # Its scores: most spam gets spam points; ham almost never does (a false positive
    # costs more than a miss), and much of it gets points off.
    assert sum(score_for(p) > 0 for p, is_spam in results if is_spam) >= 80
    assert sum(score_for(p) > 0 for p, is_spam in results if not is_spam) <= 2
    assert sum(score_for(p) < 0 for p, is_spam in results if not is_spam) >= 30


def test_bayes_stage_scores_with_plain_reasons(domain_a):
    train(domain_a, corpus(seed=21, spam=40, ham=60))
    spam_raw = clear_message(22, is_spam=True)
    ham_raw = clear_message(23, is_spam=False)

    spam = bayes_stage(context_for(spam_raw, domain_a))
    ham = bayes_stage(context_for(ham_raw, domain_a))

    assert spam.status == "ok" and spam.score == 5.5
    assert spam.reasons == [
        f"Bayesian classifier: {int(spam.data['probability'] * 100)}% spam (learnt from 40 spam, 60 ham)"
    ]
    assert spam.data["probability"] >= 0.99
    assert ham.status == "ok" and ham.score == -2.0
    assert ham.reasons[0].startswith("Bayesian classifier: ")
    assert ham.data["probability"] <= 0.01


def test_bayes_stage_in_the_pipeline(domain_a):
    train(domain_a, corpus(seed=31, spam=30, ham=30))
    spam_raw = clear_message(32, is_spam=True)

    result = pipeline_run(context_for(spam_raw, domain_a), stages=[bayes_stage])

    assert result.score == 5.5
    assert result.stages[0]["stage"] == "bayes"
    assert "99% spam (learnt from 30 spam, 30 ham)" in result.reasons[0]


def test_a_domains_store_does_not_score_from_another_domains_training(domain_a, domain_b):
    train(domain_a, corpus(seed=41, spam=40, ham=40))
    # domain_b learnt as much, about other mail: what spam looks like at domain_a is news to it.
    rng = random.Random(42)
    other = [
        (
            f"Subject: meeting\r\n\r\n{' '.join(rng.choices(_vocabulary(rng, 50), k=30))}\r\n".encode(),
            n % 2 == 0,
        )
        for n in range(80)
    ]
    train(domain_b, other)
    spam_raw = clear_message(43, is_spam=True)

    at_a = bayes_stage(context_for(spam_raw, domain_a))
    at_b = bayes_stage(context_for(spam_raw, domain_b))

    assert at_a.score == 5.5
    assert at_b.status == "ok"
    assert 0.2 < at_b.data["probability"] < 0.8 and at_b.score == 0.0
    assert "(learnt from 40 spam, 40 ham)" in at_b.reasons[0]


def test_bayes_stage_honours_the_domain_policy(domain_a):
    train(domain_a, corpus(seed=51, spam=25, ham=25))
    DomainPolicy.objects.create(domain=domain_a, bayes_enabled=False)
    spam_raw = clear_message(52, is_spam=True)

    outcome = bayes_stage(context_for(spam_raw, domain_a))

    assert (outcome.status, outcome.score) == ("skipped", 0.0)
    assert outcome.reasons == ["Bayesian classifier: turned off for this domain"]


def test_bayes_classify_fetches_token_counts_in_one_query(domain_a, django_assert_num_queries):
    train(domain_a, corpus(seed=61, spam=20, ham=20))
    words = " ".join(f"word{n:05d}" for n in range(3000))  # a full 1000 tokens
    context = context_for(f"Subject: x\r\n\r\n{words}\r\n".encode(), domain_a)

    with django_assert_num_queries(2):  # the corpus counts, the token counts
        probability, spam, ham = bayes_classify(domain_id=domain_a.pk, context=context)

    assert (spam, ham) == (20, 20)
    assert probability == 0.5  # none of these tokens was ever learnt
