"""Server-rendered SVG charts of a function's figures over time (no script, no library).

Counts (calls, errors, cold starts) are bars, latencies (p50, p99) a line with a dot per bucket
that had calls (a bucket without calls has no latency: the line breaks there). Each bucket is a
`<g>` whose `<title>` says its time span and value, which a browser shows on hover. The y axis
runs from 0 to a round number at or above the largest value; the x axis is labelled with
times in UTC. Every text in the SVG is escaped here: the result is Markup a template inserts
as it is.
"""
from __future__ import annotations

import math
import time

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 26
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

# (data-metric, the series' key, heading, unit, kind)
METRICS = (("calls", "calls", "Calls", "calls", "bars"),
           ("errors", "errors", "Errors", "errors", "bars"),
           ("p50", "p50", "p50 latency", "ms", "line"),
           ("p99", "p99", "p99 latency", "ms", "line"),
           ("cold", "coldStarts", "Cold starts", "cold starts", "bars"))

EMPTY = Markup('<p class="chart-empty">No figures to chart.</p>')


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10 * power


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k" if value % 1000 == 0 else f"{value:,.0f}"
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _clock(epoch: float, seconds: bool = False) -> str:
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.gmtime(epoch))


def _span_text(start: float, step: float) -> str:
    end = start + step
    day = time.strftime("%Y-%m-%d", time.gmtime(start))
    return f"{day} {_clock(start)}–{_clock(end)} UTC"


def _value_text(value, unit: str) -> str:
    if value is None:
        return "no calls"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{int(value)} {unit}"


def chart(series: list[dict], metric: str, key: str, heading: str, unit: str, kind: str,
          span: float, until: float) -> Markup:
    """One chart as an `<svg class="chart" data-metric=...>` element."""
    n = len(series)
    if n == 0:
        return EMPTY
    step = span / n
    values = [row.get(key) for row in series]
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    top = nice_ceiling(max(numbers, default=0.0))
    slot = PLOT_W / n

    def x_of(i: int) -> float:
        return LEFT + i * slot

    def y_of(v: float) -> float:
        return TOP + PLOT_H - (v / top) * PLOT_H

    parts = [f'<svg class="chart chart-{escape(kind)}" data-metric="{escape(metric)}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-label="{escape(heading)} over the last {escape(_span_name(span))}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<title>{escape(heading)} over the last {escape(_span_name(span))} '
             f'({escape(unit)}; peak {escape(_value_text(max(numbers, default=None), unit))})'
             '</title>']
    # Grid and y labels: 0, half, top.
    for fraction in (0.0, 0.5, 1.0):
        if kind == "bars" and (top * fraction) % 1:
            continue   # counts are whole: no "0.5 calls" line
        y = y_of(top * fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="y-label" x="{LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(_number(top * fraction))}'
                     f'{" ms" if unit == "ms" and fraction else ""}</text>')
    # X labels: the start, the middle and the end of the range, in UTC.
    start = until - span
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        x = LEFT + fraction * PLOT_W
        parts.append(f'<text class="x-label" x="{x:.1f}" y="{HEIGHT - 8}" '
                     f'text-anchor="{anchor}">{escape(_clock(start + fraction * span))}'
                     f'{" UTC" if fraction == 1.0 else ""}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP + PLOT_H}" x2="{WIDTH - RIGHT}" '
                 f'y2="{TOP + PLOT_H}"/>')
    if kind == "line":
        # One polyline per run of buckets that had calls.
        run: list[str] = []
        runs = []
        for i, v in enumerate(values):
            if isinstance(v, (int, float)):
                run.append(f"{x_of(i) + slot / 2:.1f},{y_of(float(v)):.1f}")
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        for points in runs:
            parts.append(f'<polyline class="line" fill="none" stroke="currentColor" '
                         f'points="{" ".join(points)}"/>')
    for i, (row, v) in enumerate(zip(series, values)):
        bucket_start = float(row.get("start", start + i * step))
        title = (f"<title>{escape(_span_text(bucket_start, step))}: "
                 f"{escape(_value_text(v, unit))}</title>")
        # A full-height, invisible hit area: every bucket's title shows on hover, empty ones too.
        hit = (f'<rect class="hit" x="{x_of(i):.1f}" y="{TOP}" width="{slot:.2f}" '
               f'height="{PLOT_H}" fill="transparent"/>')
        if kind == "bars":
            height = (float(v) / top) * PLOT_H if isinstance(v, (int, float)) else 0.0
            mark = (f'<rect class="bar" x="{x_of(i) + slot * 0.1:.1f}" '
                    f'y="{TOP + PLOT_H - height:.1f}" width="{slot * 0.8:.2f}" '
                    f'height="{height:.1f}"/>') if height > 0 else ""
        else:
            mark = (f'<circle class="dot" cx="{x_of(i) + slot / 2:.1f}" '
                    f'cy="{y_of(float(v)):.1f}" r="2.2"/>'
                    if isinstance(v, (int, float)) else "")
        parts.append(f'<g class="bucket">{title}{hit}{mark}</g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _span_name(span: float) -> str:
    return "day" if span >= 24 * 3600 else "hour" if span >= 3600 else f"{span:.0f} s"


def function_charts(series: list[dict], span: float, until: float) -> list[dict]:
    """The five charts of a function's page: [{"metric", "heading", "svg"}]."""
    return [{"metric": metric, "heading": heading,
             "svg": chart(series, metric, key, heading, unit, kind, span, until)}
            for metric, key, heading, unit, kind in METRICS]
