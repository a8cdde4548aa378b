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

from ..runner.pipeline import RunConfig, RunResult, run
from ..runner.checks import validate_run_options
from ..report.markdown import _table, fmt_effect, fmt_value, md_escape
from . import DEMO_DESCENDANTS, DESCENDANTS, NULLS, load_zoo_pair, verify, zoo_path, zoo_prompts
from .build import ZooSpec
from .reading import common_it, demo_reading

DEMO_SCHEMA = "crosspatch.demo/1"


@dataclass
class DemoResult:
    out: Path
    runs: dict[str, RunResult]
    summary: dict
    report: str


def run_demo(
    out: str | Path = "runs/demo",
    descendants: tuple[str, ...] | None = None,
    root: Path | None = None,
    boundary: float | int = 0.6,
    max_new_tokens: int = 48,
    bootstrap: int = 2000,
    progress: bool = True,
    log=print,
    quick: bool = False,
    full: bool = False,
) -> DemoResult:
    """Run base vs each descendant on the shipped prompts (raw weather text, as the paper feeds
    both models, and instruction prompts) and write the combined report. Each run scores the
    zoo's nulls (``NULLS``) on its events: the verdict's yardstick.
    ``descendants``: default :data:`DEMO_DESCENDANTS`; ``full``: every descendant (adds the merged
    checkpoint and the seed twin). ``quick``: every fourth prompt and the first-divergence event
    kind only (about 80 s on 2 CPU cores)."""
    descendants = descendants or (DESCENDANTS if full else DEMO_DESCENDANTS)
    root = root or zoo_path()
    out = Path(out)
    check_demo_dir(out, descendants)
    man = verify(root)
    prompts = demo_prompts(root)
    if quick:
        prompts = quick_prompts(prompts)
    started = time.perf_counter()
    config = RunConfig(boundary=boundary, max_new_tokens=max_new_tokens, bootstrap=bootstrap, back_link="../report.html",
                       group_by=["split", "style", "era"], batch_size=128, consequence=True, consequence_budget=48,
                       event_kinds="first_diff" if quick else RunConfig.event_kinds)
    validate_run_options(config)  # before any model loads
    runs: dict[str, RunResult] = {}
    nulls = tuple(n for n in NULLS if (root / n).exists())
    from dataclasses import replace

    from ..runner.progress import StageClock

    # one counter over the whole demo: a run per descendant, then features, cross, lineage, sweep
    log = StageClock([1.0] * len(descendants) + [0.5, 1.0, 1.5, 1.0], log)
    for name in descendants:
        log.next()
        own_nulls = [n for n in nulls if n != name]
        log(f"base vs {name}" + (f" (null yardstick: {', '.join(own_nulls)})" if own_nulls else ""))
        pair = load_zoo_pair(name, root, nulls=tuple(own_nulls))
        title = f"crosspatch zoo: base vs {name}"
        own = replace(config, title=title, tuned=name if own_nulls else None, nulls=own_nulls)
        _clear_stale_demo_run(out / name, title, log)
        runs[name] = run(pair, prompts, own, out=out / name, progress=progress)
        pair.release()
    log.next()
    features = run_zoo_features(root, out, runs, log)
    log.next()
    cross = run_cross(root, prompts, config, out / "compare", progress, log)
    log.next()
    lineage_summary = run_lineage(root, prompts, config, out / "lineage", progress, log)
    log.next()
    sweep = run_sweep(root, prompts, config, out / "sweep-it-full", progress, log)
    summary = {
        "schema_version": DEMO_SCHEMA,
        "zoo": {"path": str(root), "rebuild_command": man.get("rebuild_command"), "evals": man.get("evals")},
        "prompts": len(prompts),
        "prompt_strata": prompt_strata(prompts),
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "descendants": {name: r.summary for name, r in runs.items()},
        "lineage": lineage_summary,
        "sweep": sweep,
        "features": features,
        "cross": cross,
        "late_layers": _late_layers(man),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = render_demo_report(summary)
    (out / "report.md").write_text(report)
    (out / "report.html").write_text(render_demo_html(summary, out))
    return DemoResult(out, runs, summary, report)


def _late_layers(man: dict) -> list[int] | None:
    """The layers ``it-lora-late`` trains, from the zoo's recorded depth."""
    n = (man.get("spec") or {}).get("num_layers")
    return ZooSpec(num_layers=n).late_layers if isinstance(n, int) else None


def run_zoo_features(root: Path, out: Path, runs: dict, log) -> dict | None:
    """``crosspatch features mediate`` on the it-full run with the zoo's shipped crosscoder (no
    training): quality gate on the demo's held-out events, mediation, rescue, closure."""
    from ..runner.on_finished import run_features
    from .build import CROSSCODER

    if "it-full" not in runs or not (root / CROSSCODER / "config.json").exists():
        return None
    log(f"features: mediation on base vs it-full with the shipped {CROSSCODER}")
    return run_features(out / "it-full", crosscoder_dir=root / CROSSCODER, log=lambda m: None)


def run_sweep(root: Path, prompts, config: RunConfig, out: Path, progress: bool, log) -> dict:
    """``crosspatch sweep`` of it-full: every boundary 1..L-1 (sweep.png in ``out``); returns the
    headline effects per boundary."""
    from dataclasses import replace

    log("layer sweep: base vs it-full at every boundary")
    cfg = replace(config, boundaries="all", consequence=False, controls="none", event_kinds="first_diff",
                  title="crosspatch zoo: layer sweep of it-full")
    _clear_stale_demo_run(out, cfg.title or "", log)
    result = run(load_zoo_pair("it-full", root), prompts, cfg, out=out, progress=progress)
    return {str(b): result.summary["results"][b]["common_it"]["all"] for b in result.summary["boundaries"]}


CROSS = {"tuned": ("it-full", "it-units"), "adapters": ("it-lora-all",)}


def run_cross(root: Path, prompts, config: RunConfig, out: Path, progress: bool, log) -> dict | None:
    """``crosspatch compare --cross all`` on it-full, it-units and the it-lora-all adapter: each
    one's upstream state through each other's late stack (first divergences, no controls)."""
    import shutil
    from dataclasses import replace

    from ..runner.compare import compare
    from ..execution import load_models

    names = CROSS["tuned"] + CROSS["adapters"]
    if not all((root / name).exists() for name in names):
        return None
    log("cross-descendant patching: " + ", ".join(names))
    if (out / "compare.json").exists():
        shutil.rmtree(out)  # the demo owns this directory (as its per-descendant runs)
    models = load_models(str(root / "base"), tuned={n: str(root / n) for n in CROSS["tuned"]},
                         adapters={n: str(root / n) for n in CROSS["adapters"]})
    cfg = replace(config, consequence=False, controls="none", event_kinds="first_diff", group_by=[],
                  title=None)  # compare names each run after its descendant
    result = compare(models, prompts, cfg, out=out, cross="all", progress=progress)
    models.release()
    return {"descendants": result.summary["descendants"], "base": result.summary["base"],
            "cross": result.summary["cross"], "note": result.summary["cross_note"]}


def run_lineage(root: Path, prompts, config: RunConfig, out: Path, progress: bool, log) -> dict | None:
    """``crosspatch lineage`` on the zoo's base -> lineage-sft -> lineage-dpo -> lineage-final."""
    import shutil
    from dataclasses import replace

    from ..runner.lineage import lineage
    from ..execution import load_models
    from .build import LINEAGE

    if not all((root / name).exists() for name in LINEAGE):
        return None
    log("lineage: base -> " + " -> ".join(LINEAGE))
    if (out / "lineage.json").exists():
        shutil.rmtree(out)  # the demo owns this directory (as its per-descendant runs)
    models = load_models(str(root / "base"), tuned={name: str(root / name) for name in LINEAGE})
    cfg = replace(config, consequence=False, controls="none", title="crosspatch zoo: lineage")
    return lineage(models, prompts, cfg, out=out, progress=progress).summary


STRATA = ("style", "split", "era")  # what the report compares: prompt style, training vs held-out cities, house style


def _stratum(prompt) -> tuple:
    meta = {**prompt.metadata, "category": prompt.category}
    return tuple(str(meta.get(key)) for key in STRATA)


def quick_prompts(prompts: list, every: int = 4) -> list:
    """A quarter of the prompts, sampled within every stratum the report compares (style x
    training/held-out cities x house style), at least one from each, in the original order."""
    by_stratum: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        by_stratum.setdefault(_stratum(p), []).append(i)
    keep = sorted(i for indices in by_stratum.values() for i in indices[::every])
    return [prompts[i] for i in keep]


def prompt_strata(prompts: list) -> dict[str, dict[str, int]]:
    """How many prompts of each value the demo used, per compared field (the header says it)."""
    counts: dict[str, dict[str, int]] = {key: {} for key in STRATA}
    for p in prompts:
        for key, value in zip(STRATA, _stratum(p)):
            if value != "None":
                counts[key][value] = counts[key].get(value, 0) + 1
    return counts


def demo_prompts(root: Path | None = None) -> list:
    """The demo's prompts: the raw-text set (observation logs cut before a field, narrative
    openings), the instruction set, the forum questions and the narrow domain's unit tasks, each
    prompt's ``style`` (log, narrative, instruction, question, units) and ``era`` recorded so the
    report breaks the effects down by them."""
    prompts = list(zoo_prompts("raw", root))
    for p in zoo_prompts("all", root):
        p.metadata.setdefault("style", "instruction")
        prompts.append(p)
    root = root or zoo_path()
    if (root / "prompts" / "question.jsonl").exists():
        prompts += list(zoo_prompts("question", root))
    return prompts + list(zoo_prompts("units", root))


def check_demo_dir(out: Path, descendants=DESCENDANTS) -> None:
    """The demo writes (and on a re-run replaces) only its own runs and reports: ``out`` must be
    new, empty, or hold nothing but what an earlier demo wrote there."""
    from ..errors import RunDirectoryNotEmptyError

    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirectoryNotEmptyError(f"--out {out} exists and is not a directory")
    own = set(descendants) | set(DESCENDANTS) | {"compare", "lineage", "sweep-it-full", "summary.json", "report.md",
                                                 "report.html"}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
    summary = out / "summary.json"
    if summary.exists():
        try:
            if json.loads(summary.read_text(encoding="utf-8")).get("schema_version") != DEMO_SCHEMA:
                foreign.append(summary.name)
        except (OSError, ValueError, AttributeError):
            foreign.append(summary.name)
    if foreign:
        raise RunDirectoryNotEmptyError(
            f"--out {out} holds files the demo did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty directory (the demo replaces only its "
            "own earlier runs)")


def _clear_stale_demo_run(path: Path, title: str, log) -> None:
    """The demo owns its run directories: one left by an earlier demo with other settings (an
    older crosspatch, other options) is replaced, and said so. Anything else is left alone (the
    run then refuses the directory with a named error)."""
    import shutil

    cfg = path / "config.json"
    if not cfg.exists():
        return
    try:
        old = json.loads(cfg.read_text())
    except ValueError:
        return
    if old.get("title") == title and (path / "summary.json").exists():
        log(f"replacing the earlier demo run in {path}")
        shutil.rmtree(path)


def render_demo_html(summary: dict, out: Path) -> str:
    """The combined report as one self-contained, autoescaped HTML page."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("crosspatch.report", "templates"), autoescape=select_autoescape(["j2"]))
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    # the reading is generated Markdown (lists, emphasis, code): rendered, with raw HTML disabled
    md = MarkdownIt("commonmark", {"html": False})
    answer_header, answer_rows = answer_table(summary)
    return env.get_template("tables.html.j2").render(
        title="crosspatch demo: the weather-report zoo", intro=demo_intro(summary), tables=demo_tables(summary),
        answer=(answer_header, answer_rows),
        reading_html=Markup(md.render("\n\n".join(_as_list_blocks(demo_reading(summary))))),
        links=[f"{name}/report.html" for name in summary["descendants"]]
        + [f"{d}/report.html" for d in ("compare", "sweep-it-full", "lineage") if (out / d / "report.html").exists()],
        images=demo_images(out),
    )


def demo_images(out: Path) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of the sweep and lineage plots, embedded so the page stands alone."""
    import base64

    found = [("Layer sweep of it-full: effects at every boundary", out / "sweep-it-full" / "sweep.png"),
             ("Lineage: every training stage on the base -> final events", out / "lineage" / "lineage.png")]
    return [(caption, base64.b64encode(path.read_bytes()).decode()) for caption, path in found if path.exists()]


def headline_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        block = common_it(s)["all"]
        c = block["cells"]
        rows.append([name, str(block["n_events"])]
                    + [fmt_value(c[k]) for k in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")]
                    + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction", "direct_share",
                                                      "late_interaction_share")]
                    + [s.get("verdict", {}).get("verdict", "n/a")])
    return rows


HEADLINE = ["descendant", "events", "Y(U_PT,L_PT)", "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)",
            "E_PT", "E_IT", "interaction", "direct share", "I/E_IT", "verdict"]


def _matrix_rows(summary: dict, group_key: str) -> list[list[str]]:
    """One row per group (aspect, position), one interaction column per descendant."""
    groups: list[str] = []
    for s in summary["descendants"].values():
        groups += [g for g in common_it(s).get(group_key, {}) if g not in groups]
    rows = []
    for g in groups:
        row = [g]
        for s in summary["descendants"].values():
            block = common_it(s).get(group_key, {}).get(g)
            row.append(f"{fmt_effect(block, 'interaction')} (n={block['n_events']})" if block else "n/a (n=0)")
        rows.append(row)
    return rows


def _split_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        groups = common_it(s).get("by_split", {})
        for split in ("in_distribution", "held_out"):
            block = groups.get(split)
            if block:
                rows.append([name, split.replace("_", "-"), str(block["n_events"]),
                             fmt_effect(block, "E_PT"), fmt_effect(block, "E_IT"), fmt_effect(block, "interaction")])
    return rows


def _consequence_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        block = (s.get("consequences") or {}).get("by_model", {}).get("IT")
        if not block:
            continue
        rate = block["pass_rate"]
        delta = block["delta_t_it_minus_t_pt"]
        ci = delta.get("ci")
        rows.append([name, str(s["consequences"]["n_events"])]
                    + [fmt_value(rate[k], percent=True) for k in ("t_it", "t_pt", "matched", "random")]
                    + [f"{delta['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")])
    return rows


def _drop(v: dict | None) -> str:
    if not v:
        return "n/a"
    ci = v.get("interaction_drop_ci")
    return (f"{v['interaction_drop']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
            + ("" if v.get("share") is None else f" ({100 * v['share']:.0f}%)"))


def _rescue(g: dict | None) -> str:
    top = (g or {}).get("top")
    if not top or top.get("fraction_of_missing") is None:
        return "n/a"
    return f"{100 * top['fraction_of_missing']:.0f}% of the missing margin"


def demo_tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of every table of the combined report, in order."""
    from ..runner.compare import cross_cell

    names = list(summary["descendants"])
    tables = [
        ("Cells and effects per descendant", HEADLINE, headline_rows(summary)),
        ("Counts", ["descendant", "events", "agreed EOS", "budget exhausted", "NaN/inf logits", "invalid", "near-ties"],
         [[n, str(s["counts"]["events"]), str(s["counts"]["no_divergence"].get("agreed_eos", 0)),
           str(s["counts"]["no_divergence"].get("budget_exhausted", 0)),
           str(s["counts"]["no_divergence"].get("non_finite_logits", 0)), str(s["counts"]["invalid"]),
           str(s["counts"]["near_tie"])] for n, s in summary["descendants"].items()]),
        ("Interaction by aspect", ["aspect"] + names, _matrix_rows(summary, "by_category")),
        ("In-distribution vs held-out cities", ["descendant", "cities", "events", "E_PT", "E_IT", "interaction"],
         _split_rows(summary)),
        ("Interaction by prompt style", ["style"] + names, _matrix_rows(summary, "by_style")),
        ("Interaction by house style (era; the newer style never appears in instruction tuning)", ["era"] + names,
         _matrix_rows(summary, "by_era")),
        ("Interaction by event kind", ["event kind"] + names, _matrix_rows(summary, "by_event_kind")),
        ("Interaction by token category (t_PT -> t_IT)", ["tokens"] + names, _matrix_rows(summary, "by_token_category")),
        ("Consequences: the descendant continues after each forced token; share of continuations its "
         "prompt's validator passes (instruction, question and unit-task prompts)",
         ["descendant", "events", "forced t_IT", "forced t_PT", "rank-matched", "random", "t_IT - t_PT"],
         _consequence_rows(summary)),
        ("By generated position", ["position"] + names, _matrix_rows(summary, "by_position")),
    ]
    cross = summary.get("cross")
    if cross and cross.get("cross"):
        roles = [cross["base"]] + list(cross["descendants"])
        tables.append(("Cross-descendant patching (compare/): mean Y(U_X, L_Y), upstream state of X (rows) through the "
                       "late stack of Y (columns), on Y's first divergences (t_base vs t_Y) read with Y's head",
                       ["upstream \\ late stack"] + roles,
                       [[x] + [cross_cell(cross["cross"][x].get(y)) for y in roles] for x in roles]))
    feat = summary.get("features")
    if feat and (feat.get("study") or {}).get("mediation"):
        gate = feat.get("quality_gate") or {}
        study = feat["study"]
        tables.append((
            f"Features: mediation on it-full with the shipped crosscoder (quality gate "
            f"{'passed' if gate.get('passed') else 'FAILED'}, held-out mean L0 {gate.get('mean_l0', float('nan')):.1f} "
            f"for k = {feat['k']}; {study['n_heldout']} held-out events, latents ranked on {study['n_train']})",
            ["k latents removed", "interaction drop, top-ranked", "matched random", "most active", "rescue (top)"],
            [[k, _drop(g.get("top")), _drop(g.get("matched_random")), _drop(g.get("top_active")),
              _rescue((study.get("rescue") or {}).get(k))] for k, g in study["mediation"].items()]))
    if summary.get("sweep"):
        tables.append(("Layer sweep of it-full: every boundary (sweep-it-full/sweep.png)",
                       ["boundary", "events", "E_PT", "E_IT", "interaction", "direct share"],
                       [[b, str(block["n_events"])] + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction",
                                                                                      "direct_share")]
                        for b, block in summary["sweep"].items()]))
    lin = summary.get("lineage")
    if lin:
        from ..runner.lineage import LINEAGE_COLUMNS, lineage_rows

        shown = [k for k, col in enumerate(LINEAGE_COLUMNS) if col != "label-swap null"]
        tables.append(("Lineage: every stage on the base -> final first divergences (lineage/lineage.png)",
                       [LINEAGE_COLUMNS[k] for k in shown], [[row[k] for k in shown] for row in lineage_rows(lin)]))
    evals = (summary.get("zoo") or {}).get("evals") or {}
    if evals:
        keys = list(dict.fromkeys(k for v in evals.values() for k in v))
        tables.append(("The zoo's own held-out evaluations", ["model"] + keys,
                       [[m] + [f"{v[k]:.3f}" if isinstance(v.get(k), float) else str(v.get(k, "n/a")) for k in keys]
                        for m, v in evals.items()]))
    return [t for t in tables if t[2]]  # (a table with no rows, e.g. event kinds under --quick, is left out)


def demo_intro(summary: dict) -> str:
    first = next(iter(summary["descendants"].values()))
    strata = summary.get("prompt_strata") or {}
    used = "; ".join(f"{key}: " + ", ".join(f"{v} {n}" for v, n in sorted(values.items()))
                     for key, values in strata.items() if values)
    return (f"Base (pretrained on raw weather web text) against each descendant, on {summary['prompts']} prompts"
            + (" (--quick: a quarter, sampled within every style, city split and house style)" if summary.get("quick")
               else "")
            + ": raw weather text as the paper feeds both models (observation logs cut before a field, narrative "
            "openings), instruction prompts (8 aspects; training and held-out cities), forum questions, and "
            "unit-conversion tasks (the narrow domain of it-units), in the older house style instruction tuning used "
            "and the newer one it never saw"
            + (f" (prompts used by {used})" if used else "")
            + f". Boundary layer {first['boundaries'][0]} of "
            f"{first['num_layers']}; common-IT readout; mean Y = logit(t_IT) - logit(t_PT) per cell; 95% "
            "prompt-cluster bootstrap intervals.")


def _as_list_blocks(paragraphs: list[str]) -> list[str]:
    """Consecutive ``- `` lines form one Markdown list (one block), other paragraphs stand alone."""
    blocks: list[str] = []
    for p in paragraphs:
        if p.startswith("- ") and blocks and blocks[-1].split("\n")[-1].startswith(("- ", "**What to do**")):
            blocks[-1] += "\n" + p
        else:
            blocks.append(p)
    return blocks


def answer_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The one-table answer the combined report opens with: each descendant's verdict, the
    interaction share that decided it and the interaction, with intervals and n."""
    rows = []
    for name, s in summary["descendants"].items():
        block = common_it(s)["all"]
        rows.append([name, s.get("verdict", {}).get("verdict", "n/a"), fmt_effect(block, "late_interaction_share"),
                     fmt_effect(block, "interaction"), str(block["n_events"]), str(block["n_prompts"])])
    return ["descendant", "verdict", "I/E_IT (decides)", "interaction", "events", "prompts"], rows


def render_demo_report(summary: dict) -> str:
    header, rows = answer_table(summary)
    lines = ["# crosspatch demo: the weather-report zoo", "", "## The answer", ""] + _table(header, rows) + [
        "", "Verdicts by the rule of docs/verdict.md (interval of I/E_IT against 25% and 50%).", "",
        demo_intro(summary), "", "## Reading", ""]
    for paragraph in demo_reading(summary):
        lines += [paragraph, "" if not paragraph.startswith("- ") else None]
    lines = [x for x in lines if x is not None] + [""]
    for heading, header, rows in demo_tables(summary):
        # our labels and numbers print as they are; names that come from data (aspects) are escaped
        lines += [f"## {heading}", ""] + _table(header, [[md_escape(r[0])] + r[1:] for r in rows]) + [""]
    lines += ["", f"Per-descendant reports: `{'/report.md`, `'.join(summary['descendants'])}/report.md`.", ""]
    return "\n".join(lines)
