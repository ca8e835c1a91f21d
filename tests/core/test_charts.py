from datetime import date, timedelta

from apps.core.charts import AXIS_LABELS, PLOT_HEIGHT, TOP, daily_chart

TODAY = date(2026, 11, 22)


def test_one_bar_per_day_ending_today_with_missing_days_zero():
    chart = daily_chart({"a": {TODAY: 3, TODAY - timedelta(days=2): 1}}, days=7, today=TODAY)
    assert [bar.day for bar in chart.bars] == [TODAY - timedelta(days=6 - i) for i in range(7)]
    assert [bar.value for bar in chart.bars] == [0, 0, 0, 0, 1, 0, 3]
    assert chart.maximum == 3 and chart.totals == {"a": 4} and chart.total == 4
    assert chart.baseline == chart.height - AXIS_LABELS == TOP + PLOT_HEIGHT


def test_series_stack_from_the_baseline_in_order():
    chart = daily_chart({"low": {TODAY: 30}, "high": {TODAY: 90}}, days=1, today=TODAY)
    low, high = chart.bars[0].segments
    assert (low.series, low.height, low.y + low.height) == ("low", 30, chart.baseline)
    assert (high.series, high.height, high.y + high.height) == ("high", 90, low.y)
    assert high.y == TOP  # the tallest bar fills the plot


def test_a_tiny_value_stays_visible_and_an_empty_chart_has_no_heights():
    chart = daily_chart({"a": {TODAY: 1, TODAY - timedelta(days=1): 10_000}}, days=2, today=TODAY)
    assert chart.bars[1].segments[0].height == 2
    empty = daily_chart({"a": {}}, days=3, today=TODAY)
    assert empty.maximum == 0 and all(s.height == 0 for b in empty.bars for s in b.segments)
