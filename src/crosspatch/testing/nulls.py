"""The false-positive rate of the verdict on harmless descendants (docs/verdict.md): synthetic
nulls of a tiny fine-tune, each scored against the base as if it were the descendant, with
further synthetic nulls of itself as the yardstick. A "claim" is a verdict that says the
interaction exists (``upstream-dependent`` or ``partly-upstream-dependent``); the gate's default
policy fails on those."""

from __future__ import annotations

from collections import Counter


def null_false_positives(count: int = 50, prompts: int = 16, yardstick: int = 2, seed: int = 0,
                         bootstrap: int = 500, scale: float = 2.0) -> dict:
    """Score ``count`` synthetic null descendants; returns the verdict counts, the number of
    interaction claims and their share (with and without the null-calibration control)."""
    from ..core.verdict import INTERACTION_CLAIMS, decide
    from ..execution import pair_from_models
    from ..execution.nulls import synthetic_null
    from ..runner.pipeline import run
    from .tiny import char_tokenizer, perturb_layers, tiny_model

    base = tiny_model("llama")
    tuned = perturb_layers(base, [0, 1, 2, 3], scale, seed=4)  # a fine-tune that changes every layer
    texts = [{"id": f"n{k}", "prompt": f"Forecast {k}: wind {k % 7} mph, rain", "category": "c"} for k in range(prompts)]
    verdicts, uncalibrated = Counter(), Counter()
    for k in range(count):
        null = synthetic_null(base, tuned, seed=seed * 10_000 + k + 1)
        result = run(pair_from_models(base, null, char_tokenizer()), texts, boundary=2, max_new_tokens=8,
                     bootstrap=bootstrap, progress=False, event_kinds="first_diff", synthetic_nulls=yardstick,
                     seed=seed + k)
        assert result.verdict is not None  # every finished run has one
        verdicts[result.verdict["verdict"]] += 1
        rows = [r for r in result.summary["controls"] if r["control"] != "null_calibration"]
        b = result.verdict["boundary"]
        uncalibrated[decide(result.summary["results"][str(b)]["common_it"]["all"], rows,
                            None, result.summary["counts"])["verdict"]] += 1
    claims = sum(verdicts[v] for v in INTERACTION_CLAIMS)
    raw = sum(uncalibrated[v] for v in INTERACTION_CLAIMS)
    return {"nulls": count, "prompts": prompts, "yardstick_nulls": yardstick, "verdicts": dict(verdicts),
            "claims": claims, "false_positive_rate": claims / count,
            "without_null_calibration": {"verdicts": dict(uncalibrated), "claims": raw, "false_positive_rate": raw / count}}
