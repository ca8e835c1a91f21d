import time
from email import policy
from email.message import EmailMessage

import pytest

from apps.threats.models import ContentRule
from apps.threats.pipeline import ScanContext, pipeline_run
from apps.threats.stages.content import content_rule_pattern_problem, gtube_stage, rules_stage
from tests.threats import mailgen

pytestmark = pytest.mark.django_db


def run(raw: bytes, *, stages, domain_ids=()):
    return pipeline_run(ScanContext(raw=raw, recipient_domain_ids=list(domain_ids)), stages=stages)


def rule(name, target, pattern, score, **extra):
    return ContentRule.objects.create(name=name, target=target, pattern=pattern, score=score, **extra)


# --- GTUBE --------------------------------------------------------------------------------


def test_gtube_in_the_body_is_spam():
    result = run(mailgen.plain(body=f"Testing.\n{mailgen.gtube()}\n"), stages=[gtube_stage])

    assert result.category == "spam"
    assert result.score >= 1000
    assert "GTUBE test pattern: the standard test for spam filters" in result.reasons


def test_gtube_in_a_base64_text_part_is_found_after_decoding():
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = "carol@example.org"
    message["Subject"] = "encoded"
    message.set_content(f"Hello\n{mailgen.gtube()}\n", cte="base64")
    raw = message.as_bytes()
    assert mailgen.gtube().encode() not in raw

    result = run(raw, stages=[gtube_stage])

    assert result.category == "spam"
    assert result.score >= 1000


def test_gtube_only_in_the_subject_does_not_count():
    result = run(mailgen.plain(subject=mailgen.gtube(), body="hello\n"), stages=[gtube_stage])

    assert result.category == ""
    assert result.score == 0


def test_ordinary_mail_has_no_gtube_finding():
    result = run(mailgen.plain(), stages=[gtube_stage])

    assert (result.category, result.score, result.reasons) == ("", 0, [])


# --- Content rules ------------------------------------------------------------------------


def test_body_rule_adds_its_score():
    rule("Cheap pills", ContentRule.Target.BODY, r"cheap\s+pills", 3.5)

    result = run(mailgen.plain(body="Buy CHEAP   pills today\n"), stages=[rules_stage])

    assert result.score == 3.5
    assert result.reasons == ["Rule Cheap pills matched"]


def test_subject_rule_matches_the_decoded_subject_only():
    rule("Lottery subject", ContentRule.Target.SUBJECT, r"^you (have )?won", 2)

    hit = run(mailgen.plain(subject="You have won a prize"), stages=[rules_stage])
    miss = run(mailgen.plain(subject="Hello", body="you won\n"), stages=[rules_stage])

    assert hit.reasons == ["Rule Lottery subject matched"]
    assert hit.score == 2
    assert miss.score == 0


def test_header_rule_reads_the_named_header():
    rule("Bulk mailer", ContentRule.Target.HEADER, r"MassMailer \d", 4, header_name="X-Mailer")

    hit = run(mailgen.plain(headers={"X-Mailer": "MassMailer 9.1"}), stages=[rules_stage])
    other_header = run(mailgen.plain(headers={"X-Other": "MassMailer 9.1"}), stages=[rules_stage])

    assert hit.score == 4
    assert other_header.score == 0


def test_several_rules_add_up_and_negative_scores_subtract():
    rule("Invoice", ContentRule.Target.BODY, "invoice", 2)
    rule("Known partner", ContentRule.Target.HEADER, r"@partner\.example", -5, header_name="From")

    result = run(mailgen.plain(body="Your invoice\n", sender="ann@partner.example"), stages=[rules_stage])

    assert result.score == -3
    assert sorted(result.reasons) == ["Rule Invoice matched", "Rule Known partner matched"]


def test_rules_apply_server_wide_and_for_the_recipient_domain_only(domain_a, domain_b):
    rule("Everyone", ContentRule.Target.BODY, "offer", 1)
    rule("Alpha only", ContentRule.Target.BODY, "offer", 2, domain=domain_a)
    rule("Beta only", ContentRule.Target.BODY, "offer", 4, domain=domain_b)
    rule("Switched off", ContentRule.Target.BODY, "offer", 8, is_active=False)
    raw = mailgen.plain(body="A special offer\n")

    for_alpha = run(raw, stages=[rules_stage], domain_ids=[domain_a.pk])
    for_nobody = run(raw, stages=[rules_stage])

    assert for_alpha.score == 3
    assert sorted(for_alpha.reasons) == ["Rule Alpha only matched", "Rule Everyone matched"]
    assert for_nobody.score == 1


def test_rules_are_case_insensitive_unless_the_pattern_says_otherwise():
    rule("Any case", ContentRule.Target.BODY, "urgent", 1)
    rule("Exact case", ContentRule.Target.BODY, "(?-i)URGENT", 2)

    lower = run(mailgen.plain(body="urgent reply\n"), stages=[rules_stage])
    upper = run(mailgen.plain(body="URGENT reply\n"), stages=[rules_stage])

    assert lower.score == 1
    assert upper.score == 3


def test_an_edited_pattern_takes_effect():
    edited = rule("Edited", ContentRule.Target.BODY, "alpha", 1)
    raw = mailgen.plain(body="alpha\n")
    assert run(raw, stages=[rules_stage]).score == 1

    edited.pattern = "omega"
    edited.save()

    assert run(raw, stages=[rules_stage]).score == 0


def test_a_catastrophic_pattern_times_out_and_is_skipped_quickly():
    runaway = rule("Runaway", ContentRule.Target.BODY, r"(a|aa)+$", 50)
    rule("Fine", ContentRule.Target.BODY, "hello", 1)
    raw = mailgen.plain(body="hello " + "a" * 5000 + "b\n")

    started = time.monotonic()
    result = run(raw, stages=[rules_stage])
    elapsed = time.monotonic() - started

    assert elapsed < 3
    assert result.score == 1
    assert result.reasons == ["Rule Fine matched"]
    assert result.failed_stages == []
    assert result.stages[0]["data"]["timed_out"] == [runaway.pk]


def test_an_invalid_stored_pattern_is_skipped():
    rule("Broken", ContentRule.Target.BODY, "(unclosed", 5)
    rule("Fine", ContentRule.Target.BODY, "hello", 1)

    result = run(mailgen.plain(body="hello (unclosed\n"), stages=[rules_stage])

    assert result.score == 1
    assert result.failed_stages == []


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"cheap\s+pills", None),
        (r"(?-i)URGENT", None),
        ("", "The pattern is empty."),
        ("(unclosed", "not a valid regular expression"),
        ("a*", "matches empty text"),
        ("x" * 1001, "longer than 1000 characters"),
    ],
)
def test_content_rule_pattern_problem(pattern, problem):
    found = content_rule_pattern_problem(pattern)

    if problem is None:
        assert found is None
    else:
        assert problem in found
