"""The demo's reading is written from the numbers: each sentence follows the sign, interval and
group sizes it quotes (synthetic summaries, so every branch is exercised)."""

from __future__ import annotations

from crosspatch.zoo.reading import demo_reading, sign_word


def _stat(mean, lo=None, hi=None):
    return {"mean": mean, "ci": None if lo is None else [lo, hi]}


def _block(e_pt, e_it, inter, n=40, share=None):
    effects = {"E_PT": _stat(*e_pt), "E_IT": _stat(*e_it), "interaction": _stat(*inter),
               "direct_share": _stat(*(share or (e_pt[0] / e_it[0], None, None)))}
    return {"n_events": n, "n_prompts": n, "effects": effects, "cells": {}}


def _run(block, verdict="portable", **groups):
    return {"boundaries": ["4"], "results": {"4": {"common_it": {"all": block, **groups}}},
            "verdict": {"verdict": verdict}}


def _summary(it_full, **more):
    return {"descendants": {"it-full": it_full, **more}}


def test_sign_words_follow_the_interval():
    assert sign_word(_stat(1.0, 0.2, 1.8)) == "positive"
    assert sign_word(_stat(-1.0, -1.8, -0.2)) == "negative"
    assert sign_word(_stat(0.5, -0.1, 1.1)) == "indistinguishable from zero"
    assert sign_word(None) == "not estimable"


def test_the_instruction_tuning_sentence_follows_the_interaction_sign():
    pos = demo_reading(_summary(_run(_block((0.8, 0.5, 1.1), (2.4, 2.0, 2.8), (1.6, 1.1, 2.1)))))[0]
    neg = demo_reading(_summary(_run(_block((3.0, 2.5, 3.5), (1.0, 0.8, 1.2), (-2.0, -2.5, -1.5)))))[0]
    assert "As in the paper" in pos and "+1.60 [+1.10, +2.10]" in pos
    assert "Unlike the paper" in neg and "-2.00" in neg


def test_breakdowns_name_the_extreme_groups_and_skip_small_ones():
    styles = {"log": _block((1, None, None), (1.2, None, None), (0.2, 0.1, 0.3), n=30),
              "instruction": _block((3, None, None), (1, None, None), (-2.0, -2.4, -1.6), n=30),
              "tiny": _block((1, None, None), (9, None, None), (8.0, None, None), n=2)}
    text = " ".join(demo_reading(_summary(_run(_block((1, 0, 2), (1, 0, 2), (0, -1, 1)), by_style=styles))))
    assert "from -2.00 [-2.40, -1.60] on instruction prompts to +0.20 [+0.10, +0.30] on log prompts" in text
    assert "tiny" not in text


def test_the_late_only_check_and_the_advice_follow_the_runs():
    def reading(late_run, layers):
        full = _run(_block((1, 0, 2), (1, 0, 2), (0, -1, 1)))
        return "\n".join(demo_reading({**_summary(full, **{"it-lora-late": late_run}), "late_layers": layers}))

    late = _run(_block((5, 4, 6), (5, 4, 6), (0.0, 0.0, 0.0)), verdict="upstream-dependent")
    text = reading(late, [4, 5])
    assert "the check holds" in text
    assert "- it-lora-late: the whole interval of the interaction share lies above the policy's upper bound" in text
    broken = _run(_block((5, 4, 6), (5, 4, 6), (0.3, 0.2, 0.4)))
    text = reading(broken, [4, 5])
    assert "THE CHECK FAILS" in text
    # a late-only adapter below the boundary is not a check at all
    text = reading(broken, [2, 3])
    assert "check" not in text


def test_the_narrow_domain_contrast_needs_separated_intervals():
    full = _run(_block((3, 2, 4), (1, 0.8, 1.2), (-2, -3, -1), share=(0.5, 0.4, 0.6)))
    units = _run(_block((3, 2, 4), (1, 0.8, 1.2), (-2, -3, -1), share=(0.9, 0.8, 1.0)))
    close = _run(_block((3, 2, 4), (1, 0.8, 1.2), (-2, -3, -1), share=(0.55, 0.45, 0.7)))
    assert "more portable" in "\n".join(demo_reading(_summary(full, **{"it-units": units})))
    assert "about as portable" in "\n".join(demo_reading(_summary(full, **{"it-units": close})))


def _features(top_share, top_dep, random_dep, passed=True):
    def entry(share, dep):
        return {"share": share, "upstream_dependence": dep, "drop_uit_lit": dep, "drop_upt_lit": 0.0,
                "interaction_drop": dep}
    return {"n_latents": 256, "quality_gate": {"passed": passed, "mean_l0": 8.1, "target_k": 8},
            "study": {"mediation": {"10": {"top": entry(top_share, top_dep), "matched_random": entry(0.01, random_dep)},
                                    "200": {"top": entry(0.95, top_dep), "matched_random": entry(0.02, random_dep)}}}}


def test_the_features_finding_follows_the_shares_of_small_sets_and_the_random_control():
    base = _summary(_run(_block((1, 0, 2), (2, 1, 3), (1, 0.5, 1.5))))
    strong = "\n".join(demo_reading({**base, "features": _features(0.6, 0.6, 0.01)}))
    assert "passes its quality gate" in strong and "at most 10 of 256 latents carry half or more" in strong
    # the change in Y, signed as Y moves (a drop of 0.6 lowers it; it never "lowers Y by -x")
    assert "changes Y by -0.60 on the descendant's upstream state and by +0.00 on the base's" in strong
    # 200 latents are not a small set: a 95% share there does not make the finding
    weak = "\n".join(demo_reading({**base, "features": _features(0.05, 0.6, 0.01, passed=False)}))
    assert "FAILS" in weak and "no small feature set" in weak
    noise = "\n".join(demo_reading({**base, "features": _features(0.6, 0.1, 0.08)}))
    assert "no better than random" in noise


def test_the_cross_descendant_sentence_reports_the_recovered_share_of_the_gap():
    def cross(units_y):
        m = {"base": {"it-full": {"mean": -2.0}}, "it-full": {"it-full": {"mean": 4.0}},
             "it-units": {"it-full": {"mean": units_y}}}
        return {"base": "base", "descendants": ["it-full", "it-units"], "cross": m}
    base = _summary(_run(_block((1, 0, 2), (2, 1, 3), (1, 0.5, 1.5))))
    shared = "\n".join(demo_reading({**base, "cross": cross(2.5)}))
    assert "recover 75% (it-units)" in shared and "largely shared" in shared
    specific = "\n".join(demo_reading({**base, "cross": cross(-1.0)}))
    assert "recover 17% (it-units)" in specific and "specific to its own early layers" in specific


def test_each_verdict_gets_a_sentence_that_says_whether_the_recipe_meant_it():
    fragile = _run(_block((0.3, 0.1, 0.5), (2.5, 2.0, 3.0), (2.2, 1.8, 2.6)), verdict="upstream-dependent")
    late = _run(_block((1.0, 0.8, 1.2), (1.1, 0.9, 1.3), (0.1, -0.1, 0.3)), verdict="partly-upstream-dependent")
    text = "\n".join(demo_reading(_summary(_run(_block((1, 0, 2), (1, 0, 2), (0, -1, 1))),
                                           **{"it-lora-fragile": fragile, "it-lora-late": late})))
    assert "- **it-lora-fragile** came out upstream-dependent — as built: its late LoRA was trained to read" in text
    assert "+2.50 [+2.00, +3.00] on its own upstream state and +0.30 [+0.10, +0.50] on the base's" in text
    assert "- **it-lora-late** came out partly-upstream-dependent — not the portable its recipe aims at" in text
    assert "- **it-full** came out portable: every layer was tuned together" in text  # no intended verdict


def test_the_preflight_and_vision_sentences_follow_their_results():
    caught = {"adapter": "it-lora-noop", "merged": None, "what_is_wrong": "changes nothing", "passed": False,
              "checks": {"adapter-active": "fail"}, "causes": {"adapter-active": ["every LoRA B matrix is zero"]}}
    missed = {"adapter": "it-lora-all", "merged": "it-merged-broken", "what_is_wrong": "merged twice", "passed": True,
              "checks": {"adapter-vs-merged": "pass"}, "causes": {}}
    vision = {"models": ["vl-base", "vl-it"], "effects": _block((0.5, 0.2, 0.8), (2.0, 1.5, 2.5), (1.5, 1.0, 2.0), n=30)}
    summary = {**_summary(_run(_block((1, 0, 2), (1, 0, 2), (0, -1, 1)))),
               "preflight": {"a": caught, "b": missed}, "vision": vision}
    text = "\n".join(demo_reading(summary))
    assert "**Preflight caught** it-lora-noop (changes nothing): adapter-active failed — every LoRA B matrix is zero." in text
    assert "**Preflight MISSED** it-lora-all with it-merged-broken (merged twice): every check passed." in text
    assert "**Vision-language pair** (vl-base vs vl-it, 30 events" in text and "the interaction is positive" in text


def test_the_consequences_sentence_says_how_many_continuations_the_budget_cut():
    from crosspatch.zoo.reading import consequences

    block = {"pass_rate": {"t_it": _stat(0.5), "t_pt": _stat(0.25)}, "delta_t_it_minus_t_pt": _stat(0.25, 0.1, 0.4)}
    whole = consequences({"descendants": {"it-full": {"consequences": {"by_model": {"IT": block}}}}})[0]
    cut = consequences({"descendants": {"it-full": {"consequences": {"by_model": {
        "IT": dict(block, unended={"n": 7, "of": 40})}}}}})[0]
    assert "matters for the answer's correctness." in whole and "budget" not in whole
    assert cut.startswith(whole[:-1]) and "7 of 40 continuations stopped at the budget" in cut
