"""Server-rendered SVG charts for the operator's page: no script, no CDN, no build step (the page must work
offline and under a ``default-src 'none'`` policy). Pure functions: data in, escaped SVG markup out.

Each chart is a stacked bar chart over time buckets, with its largest value on the y axis, the first and last
bucket's times on the x axis, a ``<title>`` per bar (a browser shows it on hover) and the series' totals in a
legend; the ``<svg>`` carries ``data-series`` (JSON of each series' values) so tests and scripts read exactly
what is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

WIDTH, HEIGHT = 360, 120
LEFT, RIGHT, TOP, BOTTOM = 34, 6, 8, 20


@dataclass(frozen=True, slots=True)
class Series:
    """One stacked layer: its name, its colour (CSS), a value per bucket."""

    name: str
    color: str
    values: Sequence[int]


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _short(n: float) -> str:
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return f"{n:.0f}"


def stacked_bars(element_id: str, title: str, starts: Sequence[datetime], series: Sequence[Series], step: float) -> str:
    """A chart of ``series`` stacked per bucket (bucket ``i`` starts at ``starts[i]`` and lasts ``step``
    seconds), as a ``<figure>`` with the SVG and a legend of totals. Pure."""
    n = len(starts)
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    peak = max(totals, default=0)
    scale = max(peak, 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    bar_w = max(slot * 0.8, 1.0)
    parts = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#8c959f"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}" stroke="#eaeef2"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="axis">{_e(_short(peak))}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" class="axis">0</text>',
    ]
    for i in range(n):
        x = LEFT + i * slot + (slot - bar_w) / 2
        y = float(TOP + plot_h)
        tip = [f"{starts[i]:%H:%M} UTC"] + [f"{s.name}: {s.values[i]:,}" for s in series]
        rects = []
        for s in series:
            v = s.values[i]
            if v <= 0:
                continue
            h = plot_h * v / scale
            y -= h
            rects.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{_e(s.color)}"/>')
        if rects:
            parts.append(f"<g><title>{_e(' · '.join(tip))}</title>{''.join(rects)}</g>")
    if n:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 5}" class="axis">{_e(f"{starts[0]:%H:%M}")}</text>')
        parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 5}" text-anchor="end" class="axis">now</text>')
    data = json.dumps({s.name: list(s.values) for s in series}, separators=(",", ":"))
    legend = " ".join(
        f'<span class="key"><i style="background:{_e(s.color)}"></i>{_e(s.name)} '
        f'<b data-total="{sum(s.values)}">{sum(s.values):,}</b></span>'
        for s in series
    )
    label = f"{title}: " + ", ".join(f"{s.name} {sum(s.values):,}" for s in series)
    return (
        f'<figure class="chart"><figcaption>{_e(title)}</figcaption>'
        f'<svg id="{_e(element_id)}" data-series="{_e(data)}" data-step="{step:g}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{_e(label)}">{"".join(parts)}</svg>'
        f'<div class="legend">{legend}</div></figure>'
    )
