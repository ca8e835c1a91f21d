"""The benchmark's report: the latency table and what scanning costs, from rows as the
runner fills them."""

from __future__ import annotations

from apps.relay.bench.loadgen import nearest_rank
from apps.relay.bench.report import LatencyRow, Report, Row


def report_with_rows() -> Report:
    report = Report(settings={})
    report.rows = [
        Row("Postfix", "anchor", "loadgen", 100, e2e_per_s=900.0),
        Row("A3Mailer", "embedded", "loadgen", 100, e2e_per_s=45.0),
        Row("A3Mailer", "unscanned", "loadgen", 100, e2e_per_s=75.0),
    ]
    report.latency = [
        LatencyRow("Postfix", "anchor", 100, p50_ms=10.0, p95_ms=14.0, max_ms=20.0),
        LatencyRow("A3Mailer", "embedded", 100, p50_ms=35.0, p95_ms=50.0, max_ms=80.0),
        LatencyRow("A3Mailer", "unscanned", 100, p50_ms=25.0, p95_ms=40.0, max_ms=60.0),
    ]
    report.add_ratios()
    return report


def test_latency_rows_are_compared_with_postfix():
    report = report_with_rows()
    assert [row.p50_vs_postfix for row in report.latency] == [1.0, 3.5, 2.5]


def test_markdown_has_the_latency_table_and_the_cost_of_scanning():
    text = report_with_rows().markdown()
    assert "| A3Mailer | embedded | 100 | 35.0 | 50.0 | 80.0 | 3.50 |" in text
    assert "scanning adds 10.0 ms to the p50 delivery latency" in text
    assert "embedded inbound runs at 60% of its unscanned end-to-end rate" in text


def test_no_cost_of_scanning_without_an_unscanned_run():
    report = report_with_rows()
    report.latency = [row for row in report.latency if row.mode != "unscanned"]
    report.rows = [row for row in report.rows if row.mode != "unscanned"]
    assert "scanning adds" not in report.markdown()


def test_nearest_rank():
    assert nearest_rank([], 50) is None
    assert nearest_rank([3.0, 1.0, 2.0], 50) == 2.0
    assert nearest_rank([float(n) for n in range(1, 101)], 95) == 95.0
