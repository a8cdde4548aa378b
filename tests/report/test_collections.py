"""The compare and lineage pages' tables (report/collections.py)."""

from __future__ import annotations

from crosspatch.report.collections import LINEAGE_COLUMNS, lineage_rows


def _stage(p_value):
    stat = {"mean": 0.5, "ci": [0.25, 0.75]}
    return {"events": 40, "native_shift": stat, "share_of_final_shift": {"mean": 90.0, "ci": [80.0, 99.0]},
            "interaction_final_readout": stat, "share_of_final_interaction": None, "top1_agreement_with_final": 0.8,
            "E_PT": stat, "E_IT": stat, "interaction": stat, "label_swap": {"p_value": p_value}}


def test_a_lineage_stage_prints_its_label_swap_p_value_never_as_zero():
    """A drawn sign-flip p-value is at least 1/(draws + 1): 1e-4 prints as p=0.0001, not p=0.000
    (which reads as impossible)."""
    summary = {"stages": ["sft", "dpo", "rft"],
               "by_stage": {"sft": _stage(9.999000099990002e-05), "dpo": _stage(0.5), "rft": _stage(None)}}
    null = LINEAGE_COLUMNS.index("label-swap null")
    assert [row[null] for row in lineage_rows(summary)] == ["p=0.0001", "p=0.5", "n/a"]
