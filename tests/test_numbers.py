"""How reports print numbers (``core.numbers``): exactly as Python's format rounds, but never a
negative zero, so an interval around an exact zero reads ``+0.00 [+0.00, +0.00]``."""

from __future__ import annotations

import math
import random

from crosspatch.core.numbers import percent_text, signed_text
from crosspatch.core.verdict import fmt_stat
from crosspatch.report.markdown import fmt_percent, fmt_value


def test_numbers_print_as_format_rounds_them_but_never_as_a_negative_zero():
    rng = random.Random(0)
    for _ in range(20000):
        v = rng.uniform(-3, 3) * 10 ** rng.randint(-5, 1)
        assert signed_text(v) == f"{v:+.2f}".replace("-0.00", "+0.00")
        assert signed_text(v, 3) == f"{v:+.3f}".replace("-0.000", "+0.000")
        assert percent_text(v) == f"{100 * v:.0f}%".replace("-0%", "0%")
    assert (signed_text(-1e-9), signed_text(-0.0), signed_text(-0.005), percent_text(-0.004)) == ("+0.00", "+0.00",
                                                                                                  "-0.01", "0%")
    assert percent_text(-86.4, scale=1) == "-86%" and percent_text(-0.2, scale=1) == "0%"
    assert percent_text(math.nan) == "nan%" and signed_text(math.inf) == "+inf"


def test_an_interval_around_an_exact_zero_prints_without_negative_zeros():
    """A late-only adapter's interaction is zero up to float rounding (-1e-9 .. +1e-9)."""
    stat = {"mean": -3e-10, "ci": [-2e-9, 1e-9]}
    assert fmt_value(stat) == fmt_stat(stat) == "+0.00 [+0.00, +0.00]"
    assert fmt_value(stat, percent=True) == fmt_stat(stat, percent=True) == "0% [0%, 0%]"
    assert fmt_percent({"mean": -0.3, "ci": [-0.4, 12.6]}) == "0% [0%, 13%]"
