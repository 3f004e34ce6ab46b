"""The Results tab's forest plot: per pair of models, the win rate of one over the other with its 95 % interval,
0.5 (chance) marked, as an inline SVG (no plotting library, no file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH, ROW_HEIGHT, LABEL_WIDTH, MARGIN = 760, 34, 330, 24


def forest_plot(sections: Sequence[tuple[str, Sequence[Mapping]]], min_comparisons: int = 0) -> str:
    """An SVG forest plot of ``annotate.verdict.pair_win_rates`` rows, grouped by ``sections`` ((title, pairs), e.g.
    human rankings, the automatic ranker); a pair in fewer than ``min_comparisons`` comparisons is left out, as the
    public tables hide its numbers. Empty when no pair is left."""
    rows: list[tuple[str, Mapping | None]] = []
    for title, pairs in sections:
        shown = [pair for pair in pairs if pair["comparisons"] >= min_comparisons]
        if shown:
            rows.append((title, None))
            rows += [(f"{pair['model']} over {pair['opponent']} ({pair['comparisons']} comparisons)", pair)
                     for pair in shown]
    if not rows:
        return ""
    plot_width = WIDTH - LABEL_WIDTH - MARGIN
    height = ROW_HEIGHT * (len(rows) + 1) + MARGIN

    def x(rate: float) -> float:
        return LABEL_WIDTH + rate * plot_width

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img" '
             f'aria-label="win rate per pair of models with 95 % intervals" font-family="sans-serif" font-size="13">',
             f'<line x1="{x(0.5):.1f}" y1="4" x2="{x(0.5):.1f}" y2="{height - MARGIN:.0f}" stroke="#888" '
             'stroke-dasharray="4 3"/>',
             f'<text x="{x(0.5):.1f}" y="{height - 6}" text-anchor="middle" fill="#555">0.5 (chance)</text>']
    for rate in (0.0, 1.0):
        parts.append(f'<text x="{x(rate):.1f}" y="{height - 6}" text-anchor="middle" fill="#555">{rate:g}</text>')
    for row, (label, pair) in enumerate(rows):
        y = ROW_HEIGHT * (row + 1)
        if pair is None:
            parts.append(f'<text x="4" y="{y}" font-weight="bold">{escape(label)}</text>')
            continue
        low, high = pair["win_rate_interval"]
        above = low > 0.5
        colour = "#1f6feb" if above else "#666"
        parts += [f'<text x="14" y="{y + 4}">{escape(label)}</text>',
                  f'<line x1="{x(low):.1f}" y1="{y}" x2="{x(high):.1f}" y2="{y}" stroke="{colour}" stroke-width="3"/>',
                  f'<circle cx="{x(pair["win_rate"]):.1f}" cy="{y}" r="5" fill="{colour}">'
                  f'<title>{pair["win_rate"]:.3f} [{low:.3f}, {high:.3f}]</title></circle>']
    parts.append("</svg>")
    return "".join(parts)
