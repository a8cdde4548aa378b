"""How both reports print a number: signed two decimals or whole percents, and never a negative
zero (a value that rounds to zero is printed as zero, whatever the sign of its last bits)."""

from __future__ import annotations

import pytest

from crosspatch.core.verdict import fmt_stat
from crosspatch.report.markdown import fmt_percent, fmt_value


@pytest.mark.parametrize("stat, percent, printed", [
    # it-lora-late's share of the demo: the bootstrap's lower end a rounding error below zero
    ({"mean": 1e-12, "ci": [-3e-9, 2e-9]}, True, "0% [0%, 0%]"),
    ({"mean": -0.001, "ci": [-0.004, 0.3]}, False, "+0.00 [+0.00, +0.30]"),
    ({"mean": -0.2, "ci": [-2.346, 1.0]}, False, "-0.20 [-2.35, +1.00]"),
    ({"mean": -0.86, "ci": [-1.01, -0.72]}, True, "-86% [-101%, -72%]"),
])
def test_numbers_print_alike_in_the_verdict_and_the_tables_without_a_negative_zero(stat, percent, printed):
    assert fmt_stat(stat, percent=percent) == fmt_value(stat, percent=percent) == printed


def test_a_statistic_in_percent_prints_without_a_negative_zero():
    assert fmt_percent({"mean": -0.2, "ci": [-0.4, 3.5]}) == "0% [0%, 4%]"
    assert fmt_value({"mean": -0.004, "ci": None}, signed=False) == "0.00"


def test_the_demo_reading_quotes_a_share_as_the_tables_do():
    from crosspatch.zoo.reading import _share_text

    share = {"mean": 1e-12, "ci": [-3e-9, 2e-9]}  # it-lora-late: the same late stack on both upstream states
    assert _share_text({"numbers": {"late_interaction_share": share}}) == " (I/E_IT 0% [0%, 0%])"


def test_a_run_without_bootstrap_resamples_claims_no_intervals_on_any_page(tmp_path):
    """With ``--bootstrap 0`` every number is a bare mean, yet the console's column read "mean
    [95% CI]", report.md's cells "with 95% prompt-cluster bootstrap intervals", the HTML's
    forest plots "effects with 95% CIs" and the sweep "95% bootstrap CI". Each now says there are
    none; a run with resamples still says 95%."""
    import json

    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "pair")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n"
                               for i, text in enumerate(["Rain in Boston", "Snow over Denver", "Fog at dawn"])))
    res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                   str(prompts), "--out", str(tmp_path / "r"), "--max-new-tokens", "6",
                                   "--boundaries", "1,2", "--bootstrap", "0", "--controls", "none"])
    assert res.exit_code == 0, res.output
    assert "95%" not in res.output and "mean (no intervals)" in res.output
    pages = {name: (tmp_path / "r" / name).read_text() for name in ("report.md", "report.html")}
    assert "bootstrap intervals" not in pages["report.md"] and "without intervals" in pages["report.md"]
    assert "effects with 95% CIs" not in pages["report.html"] and "effects (no intervals" in pages["report.html"]
    assert "95% bootstrap CI" not in (tmp_path / "r" / "sweep.svg").read_text()

    from crosspatch.report.collections import compare_intervals

    with_ci = {"effects": {"E_PT": {"mean": 0.1, "ci": [0.0, 0.2]}}, "cells": {}}
    bare = {"effects": {"E_PT": {"mean": 0.1, "ci": None}}, "cells": {}}
    assert compare_intervals({"rows": {"a": with_ci, "b": bare}}) == "95% prompt-cluster intervals"
    assert compare_intervals({"rows": {"b": bare}}).startswith("no intervals (no bootstrap resamples")
