"""Server-side SVG charts for the admin dashboard: no script, no external library, no inline
style (the portal's CSP forbids it; presentation attributes only).

Every chart is 360 user units wide and scales to its container (`width="100%"`, a viewBox), so
at a 390 px phone width one unit is about one CSS pixel and 12-unit text stays readable. Labels
sit above their bars rather than beside them, so long rule names need no horizontal room. Each
chart is an `img` with a title and a description; the page shows the same numbers in a table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

from stepguard.web.render import N_

Say = Callable[[str], str]  # a page's translator (the identity: English)

WIDTH = 360
FONT = 12
PALETTE = {"allow": "#1d6b3a", "step_up": "#1346c2", "deny": "#b3261e", "login": "#6b4fbb",
           "would": "#8a6100", "started": "#1346c2", "passed": "#1d6b3a", "other": "#5f6673"}
# Legend words for the series names the dashboard draws (others are shown as they are).
LEGEND = {"allow": N_("allow"), "step_up": N_("step up"), "deny": N_("deny"),
          "started": N_("started"), "passed": N_("passed")}
NO_DATA = N_("no data")
EMPTY = N_("No data in the period")


def _same(text: str) -> str:
    return text


def _svg(title: str, description: str, height: float, body: str, ident: str) -> Markup:
    # every text piece below and in `body` is escaped or a formatted number
    return Markup(  # noqa: S704
        f'<svg class="chart" role="img" aria-labelledby="{ident}-t {ident}-d" width="100%" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" preserveAspectRatio="xMinYMin meet" '
        f'font-family="system-ui, sans-serif" font-size="{FONT}">'
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">'
        f'{escape(description)}</desc>{body}</svg>')


def _describe(items: Sequence[tuple[str, float]], say: Say) -> str:
    return "; ".join(f"{label}: {value:g}" for label, value in items) or say(NO_DATA)


def _word(name: str, say: Say) -> str:
    return say(LEGEND.get(name, name.replace("_", " ")))


def bars(title: str, items: Sequence[tuple[str, float]], *, ident: str,
         colour: str = PALETTE["other"], say: Say = _same) -> Markup:
    """Horizontal bars, one per item, the label above each bar and the value at its end."""
    top = max((v for _, v in items), default=0) or 1
    row, body = 34, []
    for i, (label, value) in enumerate(items):
        y = i * row
        width = max(1.0, (WIDTH - 60) * value / top)
        body.append(f'<text x="0" y="{y + FONT}" fill="currentColor">{escape(label)}</text>'
                    f'<rect x="0" y="{y + 16}" width="{width:.1f}" height="12" rx="2" '
                    f'fill="{colour}"/><text x="{width + 6:.1f}" y="{y + 27}" '
                    f'fill="currentColor">{value:g}</text>')
    if not items:
        body.append(f'<text x="0" y="{FONT + 4}" fill="currentColor">'
                    f'{escape(say(EMPTY))}</text>')
    return _svg(title, _describe(items, say), max(row, row * len(items)), "".join(body), ident)


def paired(title: str, groups: Sequence[tuple[str, float, float]], names: tuple[str, str], *,
           ident: str, say: Say = _same) -> Markup:
    """Two bars per group (e.g. step-ups started and passed per factor), with a legend."""
    top = max((max(a, b) for _, a, b in groups), default=0) or 1
    row, body = 46, [_legend(names, 0, say)]
    colours = (PALETTE.get(names[0], "#1346c2"), PALETTE.get(names[1], "#1d6b3a"))
    for i, (label, a, b) in enumerate(groups):
        y = 24 + i * row
        body.append(f'<text x="0" y="{y + FONT}" fill="currentColor">{escape(label)}</text>')
        for j, value in enumerate((a, b)):
            width = max(1.0, (WIDTH - 60) * value / top)
            body.append(f'<rect x="0" y="{y + 16 + j * 13}" width="{width:.1f}" height="11" '
                        f'rx="2" fill="{colours[j]}"/><text x="{width + 6:.1f}" '
                        f'y="{y + 26 + j * 13}" fill="currentColor">{value:g}</text>')
    first, second = (_word(n, say) for n in names)
    items = [(f"{label} {first}", a) for label, a, _ in groups] + [
        (f"{label} {second}", b) for label, _, b in groups]
    return _svg(title, _describe(items, say), 24 + row * max(1, len(groups)), "".join(body), ident)


def stacked(title: str, buckets: Sequence[str], series: Mapping[str, Sequence[float]], *,
            ident: str, say: Say = _same) -> Markup:
    """Vertical stacked bars over time buckets, a legend above, every few bucket labels below."""
    names = list(series)
    totals = [sum(series[n][i] for n in names) for i in range(len(buckets))]
    top = max(totals, default=0) or 1
    plot_h, left, legend_h = 150.0, 34.0, 20 * ((len(names) + 2) // 3)
    step = (WIDTH - left) / max(1, len(buckets))
    body = [_legend(tuple(names), 0, say),
            f'<text x="0" y="{legend_h + FONT}" fill="currentColor">{top:g}</text>',
            f'<line x1="{left}" y1="{legend_h + plot_h}" x2="{WIDTH}" y2="{legend_h + plot_h}" '
            'stroke="currentColor" stroke-width="1"/>']
    for i, label in enumerate(buckets):
        y = legend_h + plot_h
        for name in names:
            height = plot_h * series[name][i] / top
            if height > 0:
                y -= height
                body.append(f'<rect x="{left + i * step + 1:.1f}" y="{y:.1f}" '
                            f'width="{max(1.0, step - 2):.1f}" height="{height:.1f}" '
                            f'fill="{PALETTE.get(name, PALETTE["other"])}"/>')
        every = max(1, len(buckets) // 4)
        if i % every == 0:
            body.append(f'<text x="{left + i * step:.1f}" y="{legend_h + plot_h + 16}" '
                        f'fill="currentColor">{escape(label)}</text>')
    items = [(f"{label} {_word(n, say)}", series[n][i]) for i, label in enumerate(buckets)
             for n in names if series[n][i]]
    return _svg(title, _describe(items, say), legend_h + plot_h + 22, "".join(body), ident)


def _legend(names: Sequence[str], y: float, say: Say) -> str:
    parts = []
    for i, name in enumerate(names):
        x, row = (i % 3) * 120, y + (i // 3) * 20
        parts.append(f'<rect x="{x}" y="{row + 2}" width="12" height="12" '
                     f'fill="{PALETTE.get(name, PALETTE["other"])}"/>'
                     f'<text x="{x + 16}" y="{row + 12}" fill="currentColor">'
                     f'{escape(_word(name, say))}</text>')
    return "".join(parts)
