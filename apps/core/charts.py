"""Daily bar charts laid out for server-rendered SVG: positions as attributes, never
styles (the CSP refuses inline styles). Several series stack in one bar, in the order
given."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from django.utils import timezone

SLOT = 20  # horizontal space per day
BAR_WIDTH = 14
PLOT_HEIGHT = 120
TOP = 10
AXIS_LABELS = 20  # below the plot, for the first and last day


@dataclass(frozen=True)
class Segment:
    series: str
    value: int
    y: int
    height: int


@dataclass(frozen=True)
class Bar:
    day: date
    x: int
    segments: list[Segment]

    @property
    def value(self) -> int:
        return sum(segment.value for segment in self.segments)


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    bar_width: int
    maximum: int  # the tallest bar's value
    totals: dict[str, int] = field(default_factory=dict)  # per series, over all days

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def baseline(self) -> int:
        return self.height - AXIS_LABELS


def daily_chart(series: dict[str, dict[date, int]], *, days: int, today: date | None = None) -> Chart:
    """One bar per day for the last `days` days up to `today`, each series a segment
    stacked on the previous ones. Values per series are keyed by day; missing days are 0."""
    today = today or timezone.localdate()
    first = today - timedelta(days=days - 1)
    per_day = [
        [(name, int(values.get(first + timedelta(days=index)) or 0)) for name, values in series.items()]
        for index in range(days)
    ]
    maximum = max((sum(value for _, value in day) for day in per_day), default=0)
    bars = []
    for index, day_values in enumerate(per_day):
        segments, below = [], 0
        for name, value in day_values:
            height = round(PLOT_HEIGHT * value / maximum) if maximum else 0
            if value and height < 2:
                height = 2  # a small value stays visible next to a huge one
            below += height
            segments.append(Segment(series=name, value=value, y=TOP + PLOT_HEIGHT - below, height=height))
        bars.append(Bar(day=first + timedelta(days=index), x=index * SLOT + 3, segments=segments))
    return Chart(
        bars=bars,
        width=days * SLOT,
        height=TOP + PLOT_HEIGHT + AXIS_LABELS,
        bar_width=BAR_WIDTH,
        maximum=maximum,
        totals={name: sum(v for d in per_day for n, v in d if n == name) for name in series},
    )
