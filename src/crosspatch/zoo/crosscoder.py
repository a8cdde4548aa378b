"""The zoo's crosscoder (``crosscoder-it-full``): a paired crosscoder of ``base`` and ``it-full``
trained at build time on the first divergences of prompts from the demo's generators (other seeds)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from . import data as wx
from .build import CROSSCODER, ZooSpec, write_card


def crosscoder_prompts(spec: ZooSpec) -> list[dict]:
    """Prompts the zoo's crosscoder is trained on: the demo's four generators (raw text, instruction,
    question, unit tasks) with seeds of their own, so the demo's events are never training data."""
    s, n = spec.seed + 100, spec.crosscoder_prompts_per_aspect
    return (wx.raw_prompt_set(s, per_aspect=n) + wx.prompt_set(s + 1, per_aspect=n)
            + wx.raw_prompt_set(s + 2, per_aspect=max(1, n // 2), styles=("question",))
            + wx.unit_prompt_set(s + 3, per_task=n))


def build_crosscoder(out: Path, spec: ZooSpec, log=print) -> dict:
    """Train and ship the zoo's paired crosscoder of base vs it-full (``out/crosscoder-it-full``):
    a run of the pair on :func:`crosscoder_prompts`, then ``features train`` on its events
    (prompt-split train half; the other half is the quality gate's held-out data). Returns the
    gate and sizes for the card."""
    from ..runner.on_finished import run_features
    from ..runner.pipeline import RunConfig, run
    from . import load_zoo_pair

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        prompts = crosscoder_prompts(spec)
        run(load_zoo_pair("it-full", out), prompts, RunConfig(
            max_new_tokens=48, batch_size=32, bootstrap=0, controls="none", event_kinds="first_diff",
            title="crosscoder training events"), out=run_dir, progress=False)
        result = run_features(run_dir, n_layers=spec.crosscoder_layers, n_latents=spec.crosscoder_latents,
                              k=spec.crosscoder_k, steps=spec.crosscoder_steps, train_only=True, log=log)
        target = out / CROSSCODER
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(run_dir / "features" / "crosscoder", target)
    gate = result["quality_gate"] or {}
    info = {"pair": "base vs it-full", "boundary": result["boundary"], "MLP layers": result["layers"],
            "latents": result["n_latents"], "k": result["k"], "training prompts": len(prompts),
            "held-out quality gate passed": gate.get("passed"), "held-out mean L0": round(gate.get("mean_l0", 0), 2),
            "held-out variance explained": json.dumps({layer: {b: round(v, 3) for b, v in ve.items()}
                                                       for layer, ve in (gate.get("variance_explained") or {}).items()}),
            "held-out latents firing on 1-20% of tokens": round(gate.get("alive_in_range_share", 0), 3)}
    write_card(target, CROSSCODER, (
        f"Paired BatchTopK crosscoder (crosspatch.analyses.features) of `base` and `it-full`: both models' outputs of the "
        f"last {spec.crosscoder_layers} MLPs over the first-divergence prefixes of {len(prompts)} prompts drawn from "
        f"the demo's generators with other seeds (train half by prompt), {spec.crosscoder_steps} steps. Use it with "
        f"`crosspatch features mediate RUN --crosscoder {CROSSCODER}` on a base vs it-full run."), info)
    return info
