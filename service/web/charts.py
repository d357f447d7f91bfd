"""Daily bar charts as inline SVG geometry, drawn by templates/_chart.html: readable without
JavaScript, styled by classes (dark mode, and no inline style the Content-Security-Policy would
block), each day a focusable group whose label says its exact values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from .filters import duration, grouped, usd

if TYPE_CHECKING:
    from ..activity import Activity

WIDTH = 640
HEIGHT = 180
_PLOT_TOP = 12
_PLOT_BOTTOM = 152  # leaves room for the date labels
_LEFT = 8
_RIGHT = 8


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str


@dataclass
class Column:
    label: str  # what a screen reader and the hover title say: the date and every value
    bars: list[Bar] = field(default_factory=list)
    x: float = 0.0
    width: float = 0.0


@dataclass
class Chart:
    id: str
    title: str
    total: str  # the range's total, formatted
    columns: list[Column]
    ticks: list[tuple[float, str]]  # (x, date label) under the plot
    max_label: str
    legend: list[tuple[str, str]]  # (css class, name)
    width: int = WIDTH
    height: int = HEIGHT
    baseline: float = _PLOT_BOTTOM


def bar_chart(chart_id: str, title: str, dates: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]],
              fmt: Callable[[float], str]) -> Chart:
    """Stacked bars, one column a day; ``series`` is (css class, name, value per day)."""
    days = len(dates)
    step = (WIDTH - _LEFT - _RIGHT) / max(days, 1)
    gap = min(step * 0.25, 6.0)
    sums = [sum(values[i] for _, _, values in series) for i in range(days)]
    top = max(sums, default=0) or 1
    scale = (_PLOT_BOTTOM - _PLOT_TOP) / top
    columns = []
    for i, date in enumerate(dates):
        x = _LEFT + i * step + gap / 2
        parts = [f"{name} {fmt(values[i])}" for _, name, values in series] if len(series) > 1 else []
        label = f"{date}: {fmt(sums[i])}" + (f" ({', '.join(parts)})" if parts else "")
        column = Column(label, x=round(x, 2), width=round(step - gap, 2))
        y = float(_PLOT_BOTTOM)
        for css, _, values in series:
            h = values[i] * scale
            if h > 0:
                y -= h
                column.bars.append(Bar(round(x, 2), round(y, 2), round(step - gap, 2), round(max(h, 0.75), 2), css))
        columns.append(column)
    every = max(1, round(days / 6))
    ticks = [(round(_LEFT + i * step + step / 2, 2), dates[i][5:]) for i in range(0, days, every)]
    return Chart(chart_id, title, fmt(sum(sums)), columns, ticks, fmt(top if any(sums) else 0),
                 [(css, name) for css, name, _ in series] if len(series) > 1 else [])


def activity_charts(result: Activity, cost: bool) -> list[Chart]:
    """/activity's daily charts (also an operator's view of it)."""
    dates = [d.date for d in result.days]
    days = result.days
    charts = [
        bar_chart("tokens", "Tokens", dates, [
            ("s-input", "input", [d.tokens.input for d in days]),
            ("s-output", "output", [d.tokens.output for d in days]),
            ("s-cache-read", "cache read", [d.tokens.cache_read for d in days]),
            ("s-cache-write", "cache write", [d.tokens.cache_creation for d in days])], lambda v: grouped(int(v))),
    ]
    if cost:
        charts.append(bar_chart("cost", "Estimated cost", dates, [("s-cost", "cost", [d.cost_usd for d in days])], usd))
    charts += [
        bar_chart("prompts", "Prompts", dates, [("s-prompts", "prompts", [d.prompts for d in days])],
                  lambda v: grouped(int(v))),
        bar_chart("sessions", "Sessions", dates, [("s-sessions", "sessions", [d.sessions for d in days])],
                  lambda v: grouped(int(v))),
        bar_chart("active", "Active time", dates, [("s-active", "active", [d.active_seconds for d in days])],
                  duration),
    ]
    return charts
