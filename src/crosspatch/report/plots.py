"""Plots rendered from a stored summary (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from ..core.records import readout_label
from .markdown import WHY_NO_INTERVALS_SHORT
from .mdtext import visible_controls

CURVES = (("E_PT", "PT-upstream late effect E_PT", "#1f77b4"),
          ("E_IT", "IT-upstream late effect E_IT", "#d62728"),
          ("interaction", "interaction I = E_IT - E_PT", "#2ca02c"))


def legend(ax, **kwargs) -> None:
    """A legend when something on ``ax`` is labelled (a run without events has nothing to name:
    matplotlib would warn instead)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(**kwargs)


def save_figure(fig, path: Path, **kwargs) -> Path:
    """``fig`` saved whole to ``path`` (its format from the suffix; an SVG without a date, so that
    the same data draws the same file) or not at all (:func:`crosspatch.store.write_whole`)."""
    from ..store import write_whole

    fmt = path.suffix.lstrip(".")
    metadata = {"Date": None} if fmt == "svg" else None
    return write_whole(path, lambda tmp: fig.savefig(tmp, format=fmt, metadata=metadata, **kwargs))


def sweep_series(summary: dict, readout: str = "common_it") -> dict[str, list]:
    """Per-boundary means and CIs of E_PT, E_IT and the interaction (boundaries ascending)."""
    bounds = sorted(int(b) for b in summary["boundaries"])
    series: dict[str, list] = {"boundary": bounds}
    for key, _, _ in CURVES:
        stats = [summary["results"][str(b)][readout]["all"]["effects"][key] for b in bounds]
        series[key] = [s["mean"] for s in stats]
        series[key + "_ci"] = [s["ci"] for s in stats]
    return series


def _draw_sweep(ax, summary: dict, readout: str) -> bool:
    """The three curves with their 95% CI bands on ``ax``, over whole boundary layers, with the
    zero line, the axis labels and the legend (the same for the PNG/SVG files and the HTML).
    Returns whether any band was drawn (none without bootstrap resamples)."""
    from matplotlib.ticker import MaxNLocator

    s = sweep_series(summary, readout)
    banded = False
    for key, label, color in CURVES:
        xs = [b for b, m in zip(s["boundary"], s[key]) if m is not None]
        ys = [m for m in s[key] if m is not None]
        ax.plot(xs, ys, marker="o", label=label, color=color)
        band = [(b, ci) for b, ci in zip(s["boundary"], s[key + "_ci"]) if ci and None not in ci]
        if band:
            banded = True
            ax.fill_between([b for b, _ in band], [ci[0] for _, ci in band], [ci[1] for _, ci in band],
                            color=color, alpha=0.18, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # boundaries are layers: no 1.5
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"boundary layer b (of {summary.get('num_layers')})")
    ax.set_ylabel("logit(t_IT) - logit(t_PT)")
    legend(ax, fontsize=8)
    return banded


def plot_sweep(summary: dict, out_dir: str | Path, readout: str = "common_it") -> list[Path]:
    """Write ``sweep.png`` and ``sweep.svg``: the three curves with 95% CI bands (the title says
    when there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    banded = _draw_sweep(ax, summary, readout)
    ax.set_title(f"Layer sweep ({readout_label(readout)} readout, "
                 f"{'95% bootstrap CI' if banded else 'no intervals: ' + WHY_NO_INTERVALS_SHORT})")
    fig.tight_layout()
    out_dir = Path(out_dir)
    paths = [out_dir / "sweep.png", out_dir / "sweep.svg"]
    for path in paths:
        save_figure(fig, path)
    plt.close(fig)
    return paths


def _small_plot_svg(fig, ax, xlabel: str, ylabel: str, title: str) -> str:
    """Axis labels, a small title and legend, then the inline SVG (the feature-study plots)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    legend(ax, fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def _svg(fig) -> str:
    """An inline SVG of ``fig`` (text drawn as paths: no font or markup reaches the page)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _label(text) -> str:
    """Model or prompt text as an SVG label, of bounded length, its control characters shown as
    symbols (``_text`` escapes it)."""
    text = visible_controls(str(text))
    return text if len(text) <= 40 else text[:39] + "…"


def matplotlib_label(text) -> str:
    """Model or prompt text as a matplotlib label: no mathtext (a '$' pair is no formula, a '$\\'
    no parse error at saving), bounded length."""
    return _label(text).replace("\\", "\\\\").replace("$", "\\$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "path"
    return plt


def _diverging(value: float, vmax: float) -> str:
    """A blue-white-red colour for ``value`` in [-vmax, vmax] (RdBu reversed)."""
    t = max(-1.0, min(1.0, value / vmax)) if vmax else 0.0
    end = (178, 24, 43) if t > 0 else (33, 102, 172)
    r, g, b = (round(255 + (c - 255) * abs(t)) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def cells_heatmap_svg(block: dict, title: str) -> str:
    """The 2x2 of mean Y (upstream rows, late-stack columns) as a heatmap (SVG)."""
    import math

    c = block["cells"]
    grid = [[c["upt_lpt"]["mean"], c["upt_lit"]["mean"]], [c["uit_lpt"]["mean"], c["uit_lit"]["mean"]]]
    finite = [abs(v) for row in grid for v in row if v is not None and math.isfinite(v)]
    vmax = max(finite) if finite else 1.0
    left, top, cell = 60.0, 30.0, 90.0
    width = max(left + 2 * cell + 20, 7.0 * len(title) + 20)  # room for the whole title (bold 11 px, ~7 px a character)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{top + 2 * cell + 36:.0f}" '
           f'viewBox="0 0 {width:.0f} {top + 2 * cell + 36:.0f}" role="img">',
           _text(width / 2, 16, title, size=11, anchor="middle", weight="bold")]
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ok = v is not None and math.isfinite(v)
            x0, y0 = left + j * cell, top + i * cell
            out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                       f'fill="{_diverging(v, vmax) if ok and v is not None else "#eeeeee"}" stroke="#444" stroke-width="0.5"/>')
            dark = ok and v is not None and abs(v) > 0.55 * vmax
            out.append(_text(x0 + cell / 2, y0 + cell / 2 + 5, f"{v:+.2f}" if ok else "n/a", size=14, anchor="middle",
                             color="white" if dark else "black"))
    out += [_text(left + cell / 2, top + 2 * cell + 18, "L_PT", anchor="middle"),
            _text(left + 1.5 * cell, top + 2 * cell + 18, "L_IT", anchor="middle"),
            _text(left - 8, top + cell / 2 + 4, "U_PT", anchor="end"),
            _text(left - 8, top + 1.5 * cell + 4, "U_IT", anchor="end"), "</svg>"]
    return "".join(out)


# -- the run report's two small charts, written as SVG directly: a report is rendered on every run
# and on every resummary, and drawing them with matplotlib cost seconds per report (its import
# included). Every text is escaped; nothing but these shapes reaches the page.
def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    import math

    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        lo, hi = (lo - 1.0, lo + 1.0) if math.isfinite(lo) else (-1.0, 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [first + k * step for k in range(int(math.ceil((hi - first) / step)) + 1)]
    return [round(t, 10) for t in ticks]


def _text(x: float, y: float, text: str, size: int = 11, anchor: str = "start", color: str = "#222",
          weight: str = "normal") -> str:
    from html import escape

    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}" '
            f'font-weight="{weight}" font-family="sans-serif">{escape(visible_controls(str(text)))}</text>')


def _tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-9 else "0"


def forest_svg(rows: list[tuple[str, dict]], title: str) -> str:
    """E_PT, E_IT and the interaction with 95% intervals, one line of three per group (SVG)."""
    stats = [(label, key, name, color, block["effects"][key]) for label, block in rows for key, name, color in CURVES]
    values = [0.0]
    for *_, stat in stats:
        if stat.get("mean") is not None:
            values.append(stat["mean"])
            ci = stat.get("ci")
            if ci and None not in ci:
                values += list(ci)
    ticks = _nice_ticks(min(values), max(values))
    lo, hi = ticks[0], ticks[-1]
    left, width, top, row, gap = 230.0, 380.0, 46.0, 15.0, 9.0
    height = top + len(stats) * row + gap * len(rows) + 40

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * width

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {left + width + 20:.0f} {height:.0f}" role="img">',
           _text((left + width) / 2, 16, title, size=12, anchor="middle", weight="bold")]
    for k, (_, name, color) in enumerate(CURVES):  # legend
        lx = 12 + k * (left + width) / 3
        out += [f'<circle cx="{lx:.1f}" cy="30" r="4" fill="{color}"/>', _text(lx + 8, 34, name, size=9)]
    y = top
    for n, (label, key, _, color, stat) in enumerate(stats):
        if n and n % len(CURVES) == 0:
            y += gap
        cy = y + row / 2
        out.append(_text(left - 8, cy + 4, f"{_label(label)}: {key}", size=10, anchor="end"))
        mean, ci = stat.get("mean"), stat.get("ci")
        if mean is not None:
            if ci and None not in ci:
                out += [f'<line x1="{x(ci[0]):.1f}" y1="{cy:.1f}" x2="{x(ci[1]):.1f}" y2="{cy:.1f}" stroke="{color}" '
                        'stroke-width="1.5"/>']
                out += [f'<line x1="{x(v):.1f}" y1="{cy - 4:.1f}" x2="{x(v):.1f}" y2="{cy + 4:.1f}" stroke="{color}"/>'
                        for v in ci]
            out.append(f'<circle cx="{x(mean):.1f}" cy="{cy:.1f}" r="4" fill="{color}"/>')
        else:
            out.append(_text(left + 4, cy + 4, "n/a", size=9, color="#888"))
        y += row
    axis = y + 6
    out.append(f'<line x1="{x(0.0):.1f}" y1="{top - 4:.1f}" x2="{x(0.0):.1f}" y2="{axis:.1f}" stroke="grey" '
               'stroke-width="0.8"/>')
    out.append(f'<line x1="{left:.1f}" y1="{axis:.1f}" x2="{left + width:.1f}" y2="{axis:.1f}" stroke="#444"/>')
    for t in ticks:
        out += [f'<line x1="{x(t):.1f}" y1="{axis:.1f}" x2="{x(t):.1f}" y2="{axis + 4:.1f}" stroke="#444"/>',
                _text(x(t), axis + 16, _tick(t), size=9, anchor="middle")]
    out += [_text(left + width / 2, axis + 30, "logits", size=10, anchor="middle"), "</svg>"]
    return "".join(out)


def histogram_svg(values: list[float], title: str) -> str:
    """Per-event interactions as a histogram (SVG)."""
    import numpy as np

    finite = np.array([v for v in values if v == v and abs(v) != float("inf")], dtype=float)
    left, width, top, height = 50.0, 440.0, 28.0, 170.0
    out_w, out_h = left + width + 20, top + height + 46
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{out_w:.0f}" height="{out_h:.0f}" '
           f'viewBox="0 0 {out_w:.0f} {out_h:.0f}" role="img">',
           _text(left + width / 2, 16, title, size=11, anchor="middle", weight="bold")]
    if len(finite):
        counts, edges = np.histogram(finite, bins=min(40, max(5, len(finite) // 3)))
    else:
        counts, edges = np.zeros(1, dtype=int), np.array([-1.0, 1.0])
    ticks = _nice_ticks(float(min(edges[0], 0.0)), float(max(edges[-1], 0.0)))
    lo, hi = ticks[0], ticks[-1]
    peak = max(int(counts.max()), 1)
    y_ticks = [t for t in _nice_ticks(0.0, float(peak), 4) if t == int(t)]
    top_count = max(y_ticks[-1], peak)

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * width

    def y(c: float) -> float:
        return top + height - c / top_count * height

    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        if count:
            out.append(f'<rect x="{x(a):.1f}" y="{y(count):.1f}" width="{max(x(b) - x(a) - 0.5, 0.5):.1f}" '
                       f'height="{top + height - y(count):.1f}" fill="#2ca02c" fill-opacity="0.8"/>')
    base = top + height
    out += [f'<line x1="{x(0.0):.1f}" y1="{top:.1f}" x2="{x(0.0):.1f}" y2="{base:.1f}" stroke="grey" stroke-width="0.8"/>',
            f'<line x1="{left:.1f}" y1="{base:.1f}" x2="{left + width:.1f}" y2="{base:.1f}" stroke="#444"/>',
            f'<line x1="{left:.1f}" y1="{top:.1f}" x2="{left:.1f}" y2="{base:.1f}" stroke="#444"/>']
    for t in ticks:
        out += [f'<line x1="{x(t):.1f}" y1="{base:.1f}" x2="{x(t):.1f}" y2="{base + 4:.1f}" stroke="#444"/>',
                _text(x(t), base + 16, _tick(t), size=9, anchor="middle")]
    for t in y_ticks:
        out += [f'<line x1="{left - 4:.1f}" y1="{y(t):.1f}" x2="{left:.1f}" y2="{y(t):.1f}" stroke="#444"/>',
                _text(left - 7, y(t) + 3, f"{int(t)}", size=9, anchor="end")]
    out += [_text(left + width / 2, base + 32, "per-event interaction (logits)", size=10, anchor="middle"),
            f'<g transform="rotate(-90 14 {top + height / 2:.1f})">'
            + _text(14, top + height / 2, "events", size=10, anchor="middle") + "</g>", "</svg>"]
    return "".join(out)


def sweep_svg(summary: dict, readout: str = "common_it") -> str:
    """The layer sweep (several boundaries) as inline SVG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    _draw_sweep(ax, summary, readout)
    fig.tight_layout()
    return _svg(fig)


def features_svgs(feat: dict) -> list[str]:
    """Mediation curve with its control sets, rescue bars, closure against rank (inline SVGs)."""
    plt = _pyplot()
    out = []
    study = feat.get("study") or {}
    curve = study.get("mediation") or {}
    if curve:
        ks = sorted(curve, key=int)
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        for name, color in (("top", "#d62728"), ("matched_random", "#7f7f7f"), ("top_active", "#1f77b4")):
            ax.plot([int(k) for k in ks], [curve[k][name]["interaction_drop"] for k in ks], marker="o", color=color,
                    label=name.replace("_", " "))
        ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.8)
        out.append(_small_plot_svg(fig, ax, "latents ablated (k)", "interaction drop (logits)", "mediation: IT-branch decoder ablated in both L_IT cells"))
    rescue = study.get("rescue") or {}
    if rescue:
        ks = sorted(rescue, key=int)
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        width = 0.38
        for j, (name, color) in enumerate((("top", "#d62728"), ("random", "#7f7f7f"))):
            ax.bar([i + (j - 0.5) * width for i in range(len(ks))], [rescue[k][name]["logit_gain"] for k in ks],
                   width, color=color, label=name)
        ax.set_xticks(range(len(ks)), ks)
        out.append(_small_plot_svg(fig, ax, "latents patched (k)", "logit gain in (U_PT, L_IT)", "rescue"))
    closure = (feat.get("closure") or {}).get("by_rank") or {}
    if closure:
        ranks = sorted(closure, key=int)
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        for name, color in (("pca", "#2ca02c"), ("gaussian", "#7f7f7f"), ("random_subspace", "#1f77b4"),
                            ("sign_flipped", "#d62728")):
            ax.plot([int(r) for r in ranks], [closure[r][name]["gain"] for r in ranks], marker="o", color=color,
                    label=name.replace("_", " "))
        ax.set_xscale("log", base=2)
        ax.axhline(0, color="grey", lw=0.8)
        out.append(_small_plot_svg(fig, ax, "rank r", "logit gain in (U_PT, L_IT)", "structured closure of the boundary shift"))
    return out
