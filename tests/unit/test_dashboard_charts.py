"""The dashboard's SVG charts (sora.gateway.dashboard.charts): scale, gaps, titles."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from sora.gateway.dashboard import charts

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("value,ceiling", [(0, 1), (0.3, 0.5), (1, 1), (3, 5), (7, 10),
                                           (12, 20), (24, 25), (26, 50), (999, 1000)])
def test_nice_ceiling(value, ceiling):
    assert charts.nice_ceiling(value) == pytest.approx(ceiling)


def series(values, key):
    return [{"start": 1000.0 + 60 * i, "calls": 0, "errors": 0, "p50": None, "p99": None,
             "coldStarts": 0, key: v} for i, v in enumerate(values)]


def test_bars_have_one_group_with_a_title_per_bucket_and_scale_to_the_peak():
    svg = charts.chart(series([0, 5, 10, 0], "calls"), "calls", "calls", "Calls", "calls",
                       "bars", 240, 1240)
    root = ET.fromstring(str(svg))   # well-formed XML
    assert root.get("data-metric") == "calls" and "chart" in root.get("class")
    groups = root.findall(f"{SVG}g")
    assert len(groups) == 4
    titles = [g.find(f"{SVG}title").text for g in groups]
    assert titles[1].endswith(": 5 calls") and titles[0].endswith(": 0 calls")
    bars = [g.find(f"{SVG}rect[@class='bar']") for g in groups]
    assert bars[0] is None and bars[3] is None   # nothing drawn for 0
    assert float(bars[2].get("height")) == pytest.approx(charts.PLOT_H)
    assert float(bars[1].get("height")) == pytest.approx(charts.PLOT_H / 2)


def test_a_latency_line_breaks_where_a_bucket_had_no_calls():
    svg = str(charts.chart(series([10.0, 12.0, None, 8.0, 9.0, None], "p50"), "p50", "p50",
                           "p50", "ms", "line", 360, 1360))
    root = ET.fromstring(svg)
    lines = root.findall(f"{SVG}polyline")
    assert [len(line.get("points").split()) for line in lines] == [2, 2]
    assert len(root.findall(f".//{SVG}circle")) == 4
    assert svg.count("no calls") == 2


def test_no_series_is_a_note_not_a_chart():
    assert charts.chart([], "calls", "calls", "Calls", "calls", "bars", 3600, 0) == \
        charts.EMPTY


def test_function_charts_are_the_five_metrics():
    made = charts.function_charts(series([1] * 60, "calls"), 3600, 4600)
    assert [c["metric"] for c in made] == ["calls", "errors", "p50", "p99", "cold"]
    for c in made:
        assert re.match(r'<svg class="chart', str(c["svg"]))
