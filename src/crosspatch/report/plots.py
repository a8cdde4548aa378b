"""Plots rendered from a stored summary (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

CURVES = (("E_PT", "PT-upstream late effect E_PT", "#1f77b4"),
          ("E_IT", "IT-upstream late effect E_IT", "#d62728"),
          ("interaction", "interaction I = E_IT - E_PT", "#2ca02c"))


def sweep_series(summary: dict, readout: str = "common_it") -> dict[str, list]:
    """Per-boundary means and CIs of E_PT, E_IT and the interaction (boundaries ascending)."""
    bounds = sorted(int(b) for b in summary["boundaries"])
    series: dict[str, list] = {"boundary": bounds}
    for key, _, _ in CURVES:
        stats = [summary["results"][str(b)][readout]["all"]["effects"][key] for b in bounds]
        series[key] = [s["mean"] for s in stats]
        series[key + "_ci"] = [s["ci"] for s in stats]
    return series


def plot_sweep(summary: dict, out_dir: str | Path, readout: str = "common_it") -> list[Path]:
    """Write ``sweep.png`` and ``sweep.svg``: the three curves with 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sweep_series(summary, readout)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, label, color in CURVES:
        xs = [b for b, m in zip(s["boundary"], s[key]) if m is not None]
        ys = [m for m in s[key] if m is not None]
        ax.plot(xs, ys, marker="o", label=label, color=color)
        band = [(b, ci) for b, ci in zip(s["boundary"], s[key + "_ci"]) if ci and None not in ci]
        if band:
            ax.fill_between([b for b, _ in band], [ci[0] for _, ci in band], [ci[1] for _, ci in band],
                            color=color, alpha=0.18, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"boundary layer b (of {summary.get('num_layers')})")
    ax.set_ylabel("logit(t_IT) - logit(t_PT)")
    ax.set_title(f"Layer sweep ({readout.replace('_', '-')} readout, 95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir = Path(out_dir)
    paths = [out_dir / "sweep.png", out_dir / "sweep.svg"]
    for path in paths:
        fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths
