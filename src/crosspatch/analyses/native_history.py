"""Native history (DESIGN 1.5): native PT and IT greedy histories to horizons 4, 8, 16; where the
two models disagree next, the four cells; reported per side and horizon, aggregated by prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.analysis import Analysis, EventSet, decoded_past, late_passes
from ..core.cells import CellsConfig, CrossPatch
from ..core.divergence import DivergenceEvent
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from ..execution import Capture, Decode, Executor, Program
from ..models.vocab import NON_FINITE, masked_argmax
from .common import cell_records, cell_rows, interaction_block

HORIZONS = (4, 8, 16)


@dataclass
class NativeHistory(Analysis):
    """Native PT and IT greedy histories of each prompt to ``horizons`` tokens; where the two
    models disagree on the next token, the four cells (kinds ``native_PT_h8``, ...)."""

    boundary: int
    horizons: tuple[int, ...] = HORIZONS
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "control_native_history"

    def tokens_past_prompt(self) -> int:
        return max(self.horizons)

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Both models decoded to the longest horizon, then at each horizon of each history both
        models' states and two late passes, over prompts + up to that horizon."""
        candidates = 2 * len(self.horizons)
        per_sequence = 2 + candidates * (2 + late_passes(2, self.boundary, num_layers))
        return per_sequence * decoded_past(max(self.horizons), budget)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        b, prompts = self.boundary, evset.prompts
        native = yield [Decode(evset.base, prompts, max(self.horizons)), Decode(evset.tuned, prompts, max(self.horizons))]
        eos = ex.models.eos_ids
        candidates = []
        for label, conts in (("PT", native[0]), ("IT", native[1])):
            for e, p, cont in zip(evset.events, prompts, conts):
                for h in self.horizons:
                    if len(cont) >= h and not any(t in eos for t in cont[:h]):
                        candidates.append((e, f"native_{label}_h{h}", p + cont[:h]))
        if not candidates:
            return []
        seqs = [c[2] for c in candidates]
        cap_pt, cap_it = yield [Capture(evset.base, seqs, [b]), Capture(evset.tuned, seqs, [b])]
        pick_pt = masked_argmax(ex.readout(evset.base, torch.stack([c.final for c in cap_pt])), ex.models.real_vocab)
        pick_it = masked_argmax(ex.readout(evset.tuned, torch.stack([c.final for c in cap_it])), ex.models.real_vocab)
        events, natural = [], {}
        for k, (e, kind, seq) in enumerate(candidates):
            if int(pick_pt[k]) != int(pick_it[k]) and NON_FINITE not in (int(pick_pt[k]), int(pick_it[k])):
                ev = DivergenceEvent(e.prompt_id, e.category, e.prompt_len, len(seq) - e.prompt_len, seq,
                                     int(pick_pt[k]), int(pick_it[k]), kind)
                events.append(ev)
                natural[ev.key] = {evset.base: cap_pt[k], evset.tuned: cap_it[k]}
        if not events:
            return []
        scored = yield from CrossPatch([b], self.cells).program(ex, EventSet(events, evset.base, evset.tuned, natural))
        return cell_rows(scored)


def build(options, plan: PlanContext) -> NativeHistory:
    return NativeHistory(plan.headline, HORIZONS, plan.cells)


def _prompt_mean(recs) -> float | None:
    """Mean over prompts of each prompt's mean interaction (each prompt weighs the same)."""
    by_prompt: dict[str, list[float]] = {}
    for r in recs:
        if r.valid:
            by_prompt.setdefault(r.prompt_id, []).append(r.effects()["interaction"])
    return float(np.mean([np.mean(v) for v in by_prompt.values()])) if by_prompt else None


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    recs = cell_records(rows)
    block = interaction_block(recs, ctx.bootstrap("control_native_history"))
    by_h = {str(h): {"n": len(sub), "interaction": _prompt_mean(sub)}
            for h, sub in ((h, [r for r in recs if r.kind.endswith(f"_h{h}")]) for h in HORIZONS)}
    by_side = {}
    for side in ("PT", "IT"):
        sub = [r for r in recs if r.kind.startswith(f"native_{side}_")]
        ci = interaction_block(sub, ctx.bootstrap(f"control_native_history/{side}"))
        by_side[side] = {"n": len(sub), "n_prompts": len({r.prompt_id for r in sub}), "interaction": _prompt_mean(sub),
                         "ci": ci["ci"]}
    return control_row("native_history", "info", block["mean"],
                       "interaction where native histories lead to a disagreement", None, block["ci"], block["n"],
                       by_horizon=by_h, by_side=by_side)


PLUGIN = register_analysis(AnalysisPlugin(
    "native_history", summarize, build=build, role="control",
    order=110,
    description="native PT and IT histories to horizons 4, 8, 16"))
