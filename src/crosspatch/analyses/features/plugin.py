"""The feature study as a registered analysis: its block of ``summary.json`` is the study's
``features/mediate.json`` (``crosspatch features mediate``), else ``features/train.json``
(``features train``: the crosscoder and its gate), else a run's ``features/features.json`` from
before the two were kept apart; the block names the other results kept (``other_results``). Its
report section: the quality gate, mediation curve, rescue and closure. Light: imports no model
code."""

from __future__ import annotations

import json

from ...core.registry import AnalysisPlugin, Section, SummaryContext, Table, register_analysis

RESULT_FILES = ("features/mediate.json", "features/train.json", "features/features.json")  # first found is shown


def _summarize(rows: list[dict], ctx: SummaryContext, options) -> dict | None:
    if ctx.run_dir is None:
        return None
    found = [name for name in RESULT_FILES if (ctx.run_dir / name).exists()]
    if not found:
        return None
    block = json.loads((ctx.run_dir / found[0]).read_text(encoding="utf-8"))
    others = [name.rsplit("/", 1)[-1].removesuffix(".json") for name in found[1:]]
    if others:
        block["other_results"] = others
    return block


def _drop(v) -> str:
    return "n/a" if v is None else f"{v['interaction_drop']:+.3f}" + ("" if v["share"] is None else f" ({100 * v['share']:.0f}%)")


def render_features(feat: dict) -> Section | None:
    """Crosscoder quality gate, mediation curve, rescue and closure."""
    if not feat:
        return None
    from ...report.plots import features_svgs

    section = Section("Sparse final-MLP features")
    gate = feat.get("quality_gate")
    if gate:
        ve = ", ".join(f"layer {layer}: PT {v['pt']:.2f} / IT {v['it']:.2f}" for layer, v in gate["variance_explained"].items())
        section.paragraphs.append(
            f"Crosscoder ({feat['source']}, {feat['n_latents']} latents, k = {feat['k']}, MLP layers "
            f"{', '.join(map(str, feat['layers']))}): quality gate {'passed' if gate['passed'] else 'FAILED'}: "
            f"held-out variance explained {ve}; mean L0 {gate['mean_l0']:.1f} (target {gate['target_k']}); "
            f"{100 * gate['alive_in_range_share']:.0f}% of latents fire on 1-20% of tokens.")
    if feat.get("note"):
        section.paragraphs.append(feat["note"])
    if feat.get("other_results"):
        section.paragraphs.append(f"Shown: the {feat.get('result', 'latest')} result; also kept in features/: "
                                  + ", ".join(f"{name}.json" for name in feat["other_results"]) + ".")
    study = feat.get("study") or {}
    if study.get("mediation"):
        rows = [[k, _drop(g.get("top")), _drop(g.get("matched_random")), _drop(g.get("top_active")),
                 f"{g['top']['upstream_dependence']:+.3f}"] for k, g in study["mediation"].items()]
        section.paragraphs.append(
            f"Mediation on {study['n_heldout']} held-out events (ranked on {study['n_train']}): interaction drop when "
            "the IT-branch decoder contribution of k latents is removed from both L_IT cells.")
        section.tables.append(Table(["k", "top-ranked", "matched random", "top active", "upstream dependence (top)"],
                                    rows))
    if study.get("rescue"):
        rows = [[k, *[("n/a" if g[n]["fraction_of_missing"] is None else f"{100 * g[n]['fraction_of_missing']:.0f}%")
                      + f" ({g[n]['logit_gain']:+.3f})" for n in ("top", "random")]] for k, g in study["rescue"].items()]
        section.paragraphs.append("Rescue: top-k latents of (U_IT, L_IT) patched into (U_PT, L_IT), as a share of "
                                  "the missing margin.")
        section.tables.append(Table(["k", "top-ranked", "random"], rows))
    closure = feat.get("closure") or {}
    if closure.get("by_rank"):
        rows = [[r] + [("n/a" if g[n]["closure"] is None else f"{100 * g[n]['closure']:.0f}%")
                       for n in ("pca", "gaussian", "random_subspace", "sign_flipped")]
                for r, g in closure["by_rank"].items()]
        section.paragraphs.append("Structured closure: held-out boundary shifts projected on the top-r principal "
                                  "components of the train shifts, added to U_PT through L_IT (share of the missing "
                                  "margin).")
        section.tables.append(Table(["rank r", "PCA", "Gaussian", "random subspace", "sign-flipped"], rows))
    section.figures = features_svgs(feat)
    return section


PLUGIN = register_analysis(AnalysisPlugin(
    "features", _summarize, render=render_features, default=True, records=None,
    order=220,
    description="crosscoder mediation of the interaction (crosspatch features)"))
