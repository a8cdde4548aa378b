"""Plots rendered from a stored summary (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

CURVES = (("E_PT", "PT-upstream late effect E_PT", "#1f77b4"),
          ("E_IT", "IT-upstream late effect E_IT", "#d62728"),
          ("interaction", "interaction I = E_IT - E_PT", "#2ca02c"))


def legend(ax, **kwargs) -> None:
    """A legend when something on ``ax`` is labelled (a run without events has nothing to name:
    matplotlib would warn instead)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(**kwargs)

def sweep_series(summary: dict, readout: str = "common_it") -> dict[str, list]:
    """Per-boundary means and CIs of E_PT, E_IT and the interaction (boundaries ascending)."""
    bounds = sorted(int(b) for b in summary["boundaries"])
    series: dict[str, list] = {"boundary": bounds}
    for key, _, _ in CURVES:
        stats = [summary["results"][str(b)][readout]["all"]["effects"][key] for b in bounds]
        series[key] = [s["mean"] for s in stats]
        series[key + "_ci"] = [s["ci"] for s in stats]
    return series


def _draw_sweep(ax, s: dict) -> None:
    """The three curves with their 95% CI bands on ``ax``."""
    for key, label, color in CURVES:
        xs = [b for b, m in zip(s["boundary"], s[key]) if m is not None]
        ys = [m for m in s[key] if m is not None]
        ax.plot(xs, ys, marker="o", label=label, color=color)
        band = [(b, ci) for b, ci in zip(s["boundary"], s[key + "_ci"]) if ci and None not in ci]
        if band:
            ax.fill_between([b for b, _ in band], [ci[0] for _, ci in band], [ci[1] for _, ci in band],
                            color=color, alpha=0.18, linewidth=0)


def plot_sweep(summary: dict, out_dir: str | Path, readout: str = "common_it") -> list[Path]:
    """Write ``sweep.png`` and ``sweep.svg``: the three curves with 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    _draw_sweep(ax, sweep_series(summary, readout))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"boundary layer b (of {summary.get('num_layers')})")
    ax.set_ylabel("logit(t_IT) - logit(t_PT)")
    ax.set_title(f"Layer sweep ({readout.replace('_', '-')} readout, 95% bootstrap CI)")
    legend(ax, fontsize=8)
    fig.tight_layout()
    out_dir = Path(out_dir)
    paths = [out_dir / "sweep.png", out_dir / "sweep.svg"]
    for path in paths:
        fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
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
    """Model or prompt text as a plot label: no mathtext, bounded length."""
    text = str(text).replace("\\", "\\\\").replace("$", "\\$")
    return text if len(text) <= 40 else text[:39] + "…"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "path"
    return plt


def cells_heatmap_svg(block: dict, title: str) -> str:
    """The 2x2 of mean Y (upstream rows, late-stack columns) as a heatmap."""
    import numpy as np

    plt = _pyplot()
    c = block["cells"]
    grid = np.array([[c["upt_lpt"]["mean"], c["upt_lit"]["mean"]], [c["uit_lpt"]["mean"], c["uit_lit"]["mean"]]],
                    dtype=float)
    fig, ax = plt.subplots(figsize=(3.8, 3.2))
    vmax = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    ax.imshow(grid, cmap="RdBu_r", vmin=-vmax or -1, vmax=vmax or 1)
    for i in range(2):
        for j in range(2):
            dark = np.isfinite(grid[i, j]) and abs(grid[i, j]) > 0.55 * (vmax or 1)
            ax.text(j, i, "n/a" if not np.isfinite(grid[i, j]) else f"{grid[i, j]:+.2f}", ha="center", va="center",
                    fontsize=12, color="white" if dark else "black")
    ax.set_xticks([0, 1], ["L_PT", "L_IT"])
    ax.set_yticks([0, 1], ["U_PT", "U_IT"])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def forest_svg(rows: list[tuple[str, dict]], title: str) -> str:
    """E_PT, E_IT and the interaction with 95% intervals, one line of three per group."""
    plt = _pyplot()
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n * 3 + 1.0))
    y = 0
    ticks, labels = [], []
    for label, block in rows:
        for key, name, color in CURVES:
            stat = block["effects"][key]
            if stat["mean"] is not None:
                ci = stat.get("ci")
                err = [[stat["mean"] - ci[0]], [ci[1] - stat["mean"]]] if ci and None not in ci else None
                ax.errorbar(stat["mean"], y, xerr=err, fmt="o", color=color, capsize=3,
                            label=name if label == rows[0][0] else None)
            ticks.append(y)
            labels.append(f"{_label(label)}: {key}")
            y -= 1
        y -= 0.6
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("logits")
    ax.set_title(title, fontsize=9)
    legend(ax, fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


def histogram_svg(values: list[float], title: str) -> str:
    """Per-event interactions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if finite:
        ax.hist(finite, bins=min(40, max(5, len(finite) // 3)), color="#2ca02c", alpha=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("per-event interaction (logits)")
    ax.set_ylabel("events")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def sweep_svg(summary: dict, readout: str = "common_it") -> str:
    """The layer sweep (several boundaries) as inline SVG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    _draw_sweep(ax, sweep_series(summary, readout))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"boundary layer b (of {summary.get('num_layers')})")
    ax.set_ylabel("logit(t_IT) - logit(t_PT)")
    legend(ax, fontsize=8)
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
