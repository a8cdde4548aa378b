"""``crosspatch demo``: the diagnostic of the zoo's base against every descendant.

Writes one run directory per descendant under ``out/`` plus a combined ``report.md`` and
``summary.json`` with a table per descendant, the breakdown by aspect and in-distribution vs
held-out cities.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..pipeline import RunConfig, RunResult, run
from ..report.markdown import _table, fmt_effect, fmt_value, md_escape
from . import DESCENDANTS, load_zoo_pair, verify, zoo_path, zoo_prompts

DEMO_SCHEMA = "crosspatch.demo/1"


@dataclass
class DemoResult:
    out: Path
    runs: dict[str, RunResult]
    summary: dict
    report: str


def run_demo(
    out: str | Path = "runs/demo",
    descendants: tuple[str, ...] = DESCENDANTS,
    root: Path | None = None,
    boundary: float | int = 0.6,
    max_new_tokens: int = 48,
    bootstrap: int = 2000,
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Run base vs each descendant on the shipped prompts and write the combined report."""
    root = root or zoo_path()
    man = verify(root)
    out = Path(out)
    prompts = zoo_prompts("all", root)
    config = RunConfig(boundary=boundary, max_new_tokens=max_new_tokens, bootstrap=bootstrap,
                       group_by=["split"], batch_size=16)
    runs: dict[str, RunResult] = {}
    started = time.perf_counter()
    for name in descendants:
        log(f"base vs {name}")
        pair = load_zoo_pair(name, root)
        config.title = f"crosspatch zoo: base vs {name}"
        runs[name] = run(pair, prompts, config, out=out / name, progress=progress)
    summary = {
        "schema_version": DEMO_SCHEMA,
        "zoo": {"path": str(root), "rebuild_command": man.get("rebuild_command"), "evals": man.get("evals")},
        "prompts": len(prompts),
        "seconds": round(time.perf_counter() - started, 1),
        "descendants": {name: r.summary for name, r in runs.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = render_demo_report(summary)
    (out / "report.md").write_text(report)
    return DemoResult(out, runs, summary, report)


def headline_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        b = s["boundaries"][0]
        block = s["results"][b]["common_it"]["all"]
        c = block["cells"]
        rows.append([
            f"`{name}`", str(block["n_events"]),
            fmt_value(c["upt_lpt"], signed=True).split(" ")[0], fmt_value(c["upt_lit"]).split(" ")[0],
            fmt_value(c["uit_lpt"]).split(" ")[0], fmt_value(c["uit_lit"]).split(" ")[0],
            fmt_effect(block, "E_PT"), fmt_effect(block, "E_IT"), fmt_effect(block, "interaction"),
            fmt_effect(block, "direct_share"),
        ])
    return rows


def headline_table(summary: dict) -> list[str]:
    return _table(
        ["descendant", "events", "Y(U_PT,L_PT)", "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)",
         "`E_PT`", "`E_IT`", "interaction", "direct share"],
        headline_rows(summary),
    )


def _matrix_table(summary: dict, group_key: str, label: str) -> list[str]:
    names = list(summary["descendants"])
    groups: list[str] = []
    for s in summary["descendants"].values():
        block = s["results"][s["boundaries"][0]]["common_it"].get(group_key, {})
        groups += [g for g in block if g not in groups]
    rows = []
    for g in groups:
        row = [md_escape(g)]
        for name in names:
            s = summary["descendants"][name]
            block = s["results"][s["boundaries"][0]]["common_it"].get(group_key, {}).get(g)
            row.append(f"{fmt_effect(block, 'interaction')} (n={block['n_events']})" if block else "n/a")
        rows.append(row)
    return _table([label] + [f"`{n}`" for n in names], rows)


def _split_table(summary: dict) -> list[str]:
    rows = []
    for name, s in summary["descendants"].items():
        groups = s["results"][s["boundaries"][0]]["common_it"].get("by_split", {})
        for split in ("in_distribution", "held_out"):
            block = groups.get(split)
            if block:
                rows.append([f"`{name}`", split.replace("_", "-"), str(block["n_events"]),
                             fmt_effect(block, "E_PT"), fmt_effect(block, "E_IT"), fmt_effect(block, "interaction")])
    return _table(["descendant", "cities", "events", "`E_PT`", "`E_IT`", "interaction"], rows)


def render_demo_report(summary: dict) -> str:
    first = next(iter(summary["descendants"].values()))
    lines = [
        "# crosspatch demo: the weather-report zoo",
        "",
        f"Base (`base`, pretrained on raw weather text) against each descendant, on {summary['prompts']} "
        f"instruction prompts (8 aspects; training cities and held-out cities). Boundary layer "
        f"{first['boundaries'][0]} of {first['num_layers']}; common-IT readout; mean "
        "`Y = logit(t_IT) - logit(t_PT)` per cell; 95% prompt-cluster bootstrap intervals.",
        "",
    ]
    lines += headline_table(summary)
    lines += ["", "Counts (events / prompts without divergence):", ""]
    for name, s in summary["descendants"].items():
        c = s["counts"]
        lines.append(f"- `{name}`: {c['events']} events, {sum(c['no_divergence'].values())} without divergence "
                     f"({c['no_divergence']}), {c['invalid']} invalid, {c['near_tie']} near-ties")
    lines += ["", "## Interaction by aspect", ""] + _matrix_table(summary, "by_category", "aspect")
    lines += ["", "## In-distribution vs held-out cities", ""] + _split_table(summary)
    lines += ["", "## By generated position", ""] + _matrix_table(summary, "by_position", "position")
    evals = (summary.get("zoo") or {}).get("evals") or {}
    if evals:
        lines += ["", "## The zoo's own held-out losses", ""]
        keys = list(next(iter(evals.values())))
        lines += _table(["model"] + keys, [[f"`{m}`"] + [f"{v[k]:.3f}" for k in keys] for m, v in evals.items()])
    lines += ["", f"Per-descendant reports: `{'/report.md`, `'.join(summary['descendants'])}/report.md`.", ""]
    return "\n".join(lines)
