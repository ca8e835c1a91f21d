"""Teaching the Bayesian classifier, and asking it.

Every domain has its own token store: BayesCorpus (how many spam and ham messages it
learnt) and BayesToken (in how many of each a token appeared). BayesTraining remembers
which message a store learnt as what, so learning the same message again is a no-op and
learning it as the other class moves it instead of counting it twice.

Counts only ever change by relative UPDATEs (`F("spam") + 1`) inside a transaction that
first locks the store's BayesCorpus row, so concurrent training of one domain queues up
and never loses an increment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest
from django.http import HttpRequest
from django.utils import timezone

from apps.accounts.models import User
from apps.core.audit import audit
from apps.core.exceptions import NotFoundError
from apps.mailboxes.blobstore import BlobNotFound, blob_store
from apps.mailboxes.models import Folder, Mailbox, MailItem, Message
from apps.mailboxes.services.mailitems import mail_item_move
from apps.threats.models import BayesCorpus, BayesToken, BayesTraining, DomainPolicy
from apps.threats.pipeline import ScanContext
from apps.threats.policy import server_policy
from apps.threats.stages.bayes import (
    MIN_HAM_LEARNT,
    MIN_SPAM_LEARNT,
    combine,
    message_tokens,
    raw_tokens,
    token_ids,
    token_probability,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BayesScan",
    "SpamReportOutcome",
    "bayes_classify",
    "bayes_prune",
    "bayes_scan",
    "bayes_train_message",
    "bayes_train_raw",
    "spam_report",
]


# --- The store ---------------------------------------------------------------------------------


def _store_lock(domain_id: int) -> None:
    """Lock the domain's store (its BayesCorpus row, made on first use) until commit.
    Callers locking several stores lock them in domain id order, so two of them never
    wait for each other."""
    if BayesCorpus.objects.select_for_update().filter(domain_id=domain_id).exists():
        return
    BayesCorpus.objects.get_or_create(domain_id=domain_id)
    BayesCorpus.objects.select_for_update().filter(domain_id=domain_id).exists()


def _count(*, domain_id: int, ids: list[int], is_spam: bool, delta: int) -> None:
    """Add (delta=1) or take back (delta=-1) one message's tokens. Call under _store_lock."""
    column = "spam" if is_spam else "ham"
    corpus_column = "spam_count" if is_spam else "ham_count"
    tokens = BayesToken.objects.filter(domain_id=domain_id, token__in=ids)
    if delta > 0:
        now = timezone.now()
        # Two statements, portable to SQLite and PostgreSQL: make sure every row exists,
        # then add to all of them at once. (An upsert cannot do it in one: Django's
        # update_conflicts sets the column to the inserted value, it cannot add to it.)
        BayesToken.objects.bulk_create(
            [BayesToken(domain_id=domain_id, token=token, seen_at=now) for token in ids],
            ignore_conflicts=True,
        )
        tokens.update(**{column: F(column) + 1, "seen_at": now})
        BayesCorpus.objects.filter(domain_id=domain_id).update(**{corpus_column: F(corpus_column) + 1})
        return
    # Floors at 0: a message learnt before the tokenizer changed may not give back
    # exactly the tokens it added, and a count must never go negative.
    tokens.update(**{column: Greatest(F(column) - 1, Value(0))})
    tokens.filter(spam=0, ham=0).delete()
    BayesCorpus.objects.filter(domain_id=domain_id).update(
        **{corpus_column: Greatest(F(corpus_column) - 1, Value(0))}
    )


def _learn_message(*, domain_id: int, message_id: int, ids: list[int], is_spam: bool) -> bool:
    """Learn one message, or move it to the other class. Call under _store_lock."""
    previous = BayesTraining.objects.filter(domain_id=domain_id, message_id=message_id).first()
    if previous is not None and previous.is_spam == is_spam:
        return False
    if previous is None:
        BayesTraining.objects.create(domain_id=domain_id, message_id=message_id, is_spam=is_spam)
    else:
        _count(domain_id=domain_id, ids=ids, is_spam=previous.is_spam, delta=-1)
        BayesTraining.objects.filter(pk=previous.pk).update(is_spam=is_spam, trained_at=timezone.now())
    _count(domain_id=domain_id, ids=ids, is_spam=is_spam, delta=1)
    return True


def _message_token_ids(message: Message) -> list[int]:
    """Raises NotFoundError (code content_missing) when the blob is gone."""
    try:
        raw = blob_store().read(message.blob_sha256)
    except BlobNotFound:
        raise NotFoundError(
            "The message's content is gone, so it cannot be learnt from.", code="content_missing"
        ) from None
    return token_ids(raw_tokens(raw))


def bayes_train_message(*, domain_id: int, message: Message, is_spam: bool) -> bool:
    """Teach the domain's store that `message` is spam (or ham). Idempotent: learning it
    again as the same class changes nothing (False); as the other class, it is unlearnt
    first (moved). Returns whether the store changed. Raises NotFoundError
    (content_missing) when the message's blob is gone."""
    if BayesTraining.objects.filter(domain_id=domain_id, message_id=message.pk, is_spam=is_spam).exists():
        return False  # the common repeat: no need to read and tokenize the blob
    ids = _message_token_ids(message)
    with transaction.atomic():
        _store_lock(domain_id)
        return _learn_message(domain_id=domain_id, message_id=message.pk, ids=ids, is_spam=is_spam)


def bayes_train_raw(*, domain_id: int, raw: bytes, is_spam: bool) -> None:
    """Teach the store one message given as bytes, with no message row (corpora for tests
    and benchmarks, imported archives). Not idempotent: each call counts once more."""
    ids = token_ids(raw_tokens(raw))
    with transaction.atomic():
        _store_lock(domain_id)
        _count(domain_id=domain_id, ids=ids, is_spam=is_spam, delta=1)


# --- Asking the store -------------------------------------------------------------------------
#
# Scanning asks every message, so these reads are plain SQL: building the equivalent ORM
# queries (a 1000-id IN list above all) costs several times what SQLite or PostgreSQL
# then take to answer them. Writes above stay with the ORM.


def _sql_names(model: type, *fields: str) -> tuple[str, ...]:
    quote = connection.ops.quote_name
    return (quote(model._meta.db_table), *(quote(model._meta.get_field(f).column) for f in fields))


def _store_counts(domain_id: int) -> tuple[int, int]:
    """(spam learnt, ham learnt) of the domain's store; (0, 0) before it learnt anything."""
    table, domain, spam, ham = _sql_names(BayesCorpus, "domain", "spam_count", "ham_count")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {spam}, {ham} FROM {table} WHERE {domain} = %s", [domain_id])  # noqa: S608
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


def _token_counts(domain_id: int, ids: list[int]) -> list[tuple[int, int]]:
    """(spam, ham) of each of `ids` the domain's store knows."""
    if not ids:
        return []
    table, domain, token, spam, ham = _sql_names(BayesToken, "domain", "token", "spam", "ham")
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {spam}, {ham} FROM {table} WHERE {domain} = %s AND {token} IN ({marks})",  # noqa: S608
            [domain_id, *ids],
        )
        return cursor.fetchall()


def _probability(*, domain_id: int, context: ScanContext, spam_learnt: int, ham_learnt: int) -> float | None:
    if spam_learnt < MIN_SPAM_LEARNT or ham_learnt < MIN_HAM_LEARNT:
        return None
    known = _token_counts(domain_id, token_ids(message_tokens(context)))
    probability, _ = combine(token_probability(spam, ham, spam_learnt, ham_learnt) for spam, ham in known)
    return probability


def bayes_classify(*, domain_id: int, context: ScanContext) -> tuple[float | None, int, int]:
    """(spam probability 0..1, spam learnt, ham learnt) from the domain's store; the
    probability is None until the store has learnt enough of both. Two queries; raises
    Unscannable / StageTimeout from the tokenizer as a stage would."""
    spam_learnt, ham_learnt = _store_counts(domain_id)
    probability = _probability(
        domain_id=domain_id, context=context, spam_learnt=spam_learnt, ham_learnt=ham_learnt
    )
    return probability, spam_learnt, ham_learnt


@dataclass(frozen=True)
class BayesScan:
    enabled: bool  # the domain's policy (server default: on)
    probability: float | None  # None when turned off or not trained enough
    spam_learnt: int
    ham_learnt: int


def bayes_scan(*, domain_id: int, context: ScanContext) -> BayesScan:
    """What the scan stage needs, in two queries: whether the domain's policy has the
    classifier on (the policy's bayes_enabled, the server default without a policy row)
    and, when it is, bayes_classify's answer. Raises as bayes_classify does."""
    policy_table, policy_domain, enabled = _sql_names(DomainPolicy, "domain", "bayes_enabled")
    corpus_table, corpus_domain, spam, ham = _sql_names(BayesCorpus, "domain", "spam_count", "ham_count")
    # Scalar subqueries: NULL where the domain has no policy row or no store yet.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT {enabled} FROM {policy_table} WHERE {policy_domain} = %s), "  # noqa: S608
            f"(SELECT {spam} FROM {corpus_table} WHERE {corpus_domain} = %s), "
            f"(SELECT {ham} FROM {corpus_table} WHERE {corpus_domain} = %s)",
            [domain_id, domain_id, domain_id],
        )
        is_enabled, spam_learnt, ham_learnt = cursor.fetchone()
    if is_enabled is None:
        is_enabled = server_policy().bayes_enabled
    spam_learnt, ham_learnt = spam_learnt or 0, ham_learnt or 0
    if not is_enabled:
        return BayesScan(enabled=False, probability=None, spam_learnt=spam_learnt, ham_learnt=ham_learnt)
    probability = _probability(
        domain_id=domain_id, context=context, spam_learnt=spam_learnt, ham_learnt=ham_learnt
    )
    return BayesScan(enabled=True, probability=probability, spam_learnt=spam_learnt, ham_learnt=ham_learnt)


def bayes_prune(*, domain_id: int | None = None, older_than_days: int = 180) -> int:
    """Delete the tokens that appeared in only one learnt message and were not learnt
    again for `older_than_days` (one domain's store, or every store). Such tokens are
    most of a store and weigh almost nothing (Robinson's prior keeps them near 0.5).
    Returns how many were deleted."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    if domain_id is not None:
        domain_ids = [domain_id]
    else:
        domain_ids = list(BayesCorpus.objects.order_by("domain_id").values_list("domain_id", flat=True))
    single = Q(spam=0, ham__lte=1) | Q(ham=0, spam__lte=1)
    removed = 0
    for store in domain_ids:
        # Under the store's lock: a training between our DELETE's snapshot and its
        # increment would otherwise add to a row that is about to go.
        with transaction.atomic():
            BayesCorpus.objects.select_for_update().filter(domain_id=store).first()
            removed += BayesToken.objects.filter(single, domain_id=store, seen_at__lt=cutoff).delete()[0]
    return removed


# --- "Report spam / not spam" ----------------------------------------------------------------------


@dataclass(frozen=True)
class SpamReportOutcome:
    trained: int  # messages a store learnt (or moved to the other class)
    moved: int  # mail items moved to Junk, or back to the INBOX


def spam_report(
    *, actor: User, mail_item_ids: list[int], is_spam: bool, request: HttpRequest | None = None
) -> SpamReportOutcome:
    """A user says filed mail is spam (or is not): each message teaches the store of its
    mailbox's domain, and moves to that mailbox's Junk folder (or to its INBOX).

    Only mail the actor may see counts (their own mailboxes; a domain admin's domains;
    a superadmin's everything): if any id is outside that, NotFoundError and nothing
    changes. Repeating a report changes nothing. Mail whose content is gone is moved but
    not learnt. Audited per mailbox."""
    wanted = list(dict.fromkeys(mail_item_ids))
    items = list(
        MailItem.objects.visible_to(actor)
        .filter(pk__in=wanted)
        .select_related("message", "mailbox", "folder")
        .order_by("pk")
    )
    missing = sorted(set(wanted) - {item.pk for item in items})
    if missing:
        raise NotFoundError(
            "No such message.", fields={"messages": [f"No such message: {', '.join(map(str, missing))}."]}
        )

    # Read and tokenize before the transaction: blob reads are slow next to the writes,
    # and a store's lock is held only while counting.
    done = set(
        BayesTraining.objects.filter(
            message_id__in={item.message_id for item in items}, is_spam=is_spam
        ).values_list("domain_id", "message_id")
    )
    ids_of: dict[int, list[int] | None] = {}
    for item in items:
        if (item.mailbox.domain_id, item.message_id) in done or item.message_id in ids_of:
            continue
        try:
            ids_of[item.message_id] = _message_token_ids(item.message)
        except NotFoundError:
            logger.warning("spam report: content of message %s is gone", item.message_id)
            ids_of[item.message_id] = None

    target_use = Folder.SpecialUse.JUNK if is_spam else Folder.SpecialUse.INBOX
    targets = {
        mailbox_id: (folder_id, name)
        for mailbox_id, folder_id, name in Folder.objects.filter(
            mailbox_id__in={item.mailbox_id for item in items}, special_use=target_use
        ).values_list("mailbox_id", "id", "name")
    }
    trained = moved = 0
    by_mailbox: dict[int, tuple[Mailbox, list[int]]] = {}
    with transaction.atomic():
        for domain_id in sorted({item.mailbox.domain_id for item in items}):
            _store_lock(domain_id)
        for item in items:
            ids = ids_of.get(item.message_id)
            if ids is not None and _learn_message(
                domain_id=item.mailbox.domain_id, message_id=item.message_id, ids=ids, is_spam=is_spam
            ):
                trained += 1
            target = targets.get(item.mailbox_id)
            # A mailbox without that folder (a client deleted it) keeps the message where it is.
            if target is not None and target[0] != item.folder_id:
                mail_item_move(actor=actor, item=item, folder_name=target[1])
                moved += 1
            by_mailbox.setdefault(item.mailbox_id, (item.mailbox, []))[1].append(item.pk)
        for mailbox, item_ids in by_mailbox.values():
            audit(
                "threats.spam_report",
                actor=actor,
                target=mailbox,
                request=request,
                changes={"as": "spam" if is_spam else "ham", "mail_items": item_ids},
                domain_id=mailbox.domain_id,
            )
    return SpamReportOutcome(trained=trained, moved=moved)
