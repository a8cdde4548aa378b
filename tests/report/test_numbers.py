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
