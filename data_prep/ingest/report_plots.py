"""Small inline SVG bar charts for the audit page: no scripts, no fonts, a fixed size whatever the data.

Each chart is one ``<svg>`` element with a ``<title>`` per bar (the exact count on hover), so the page stays
self-contained and its size does not grow with the number of frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart_svg", "histogram_bins"]


def histogram_bins(values: dict[int, int], edges: Sequence[int]) -> list[int]:
    """Counts of ``{value: count}`` in ``[edges[i], edges[i+1])``; the last bin is open-ended.

    Args:
        values: value -> how many times it occurred (values below ``edges[0]`` are ignored).
        edges: increasing left edges, ``len(edges)`` bins.
    """
    counts = [0] * len(edges)
    for value, count in values.items():
        if value < edges[0]:
            continue
        index = len(edges) - 1
        for i in range(1, len(edges)):
            if value < edges[i]:
                index = i - 1
                break
        counts[index] += count
    return counts


def bar_chart_svg(
    labels: Sequence[str],
    counts: Sequence[int],
    *,
    title: str,
    x_label: str,
    width: int = 420,
    height: int = 170,
    label_every: int = 1,
) -> str:
    """A vertical bar chart as an inline ``<svg>`` string.

    Args:
        labels: one label per bar (x axis; every ``label_every``-th is drawn, all are in the hover titles).
        counts: non-negative bar heights, same length as ``labels``.
        title: accessible name of the chart (``aria-label`` and ``<title>``).
        x_label: text under the x axis.
        width, height: size in CSS pixels.
    """
    if len(labels) != len(counts):
        raise ValueError(f"{len(labels)} labels for {len(counts)} counts")
    left, right, top, bottom = 44, 8, 8, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts, default=0) or 1
    n = max(len(counts), 1)
    step = plot_w / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#555"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" font-size="10">{peak:,}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10">0</text>',
    ]
    for i, (label, count) in enumerate(zip(labels, counts)):
        bar_h = plot_h * count / peak
        x = left + i * step
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(step - 1, 1):.1f}" '
            f'height="{bar_h:.1f}" fill="#3a6ea5"><title>{escape(label)}: {count:,}</title></rect>'
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 12}" text-anchor="middle" font-size="9">'
                f"{escape(label)}</text>"
            )
    middle = left + plot_w / 2
    parts.append(
        f'<text x="{middle:.1f}" y="{height - 4}" text-anchor="middle" font-size="10">{escape(x_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
