"""How every report, sentence and table prints a number: a signed value (``+1.23``) and a percent
(``36%``), rounded as Python's format rounds, and never a negative zero (a value that rounds to
zero prints ``+0.00`` or ``0%``, whichever side of zero it lies: an interval around an exact zero,
such as a late-only adapter's interaction, reads ``+0.00 [+0.00, +0.00]``, not ``-0.00 [-0.00,
+0.00]``)."""

from __future__ import annotations

import math

__all__ = ["percent_text", "signed_text"]


def signed_text(value: float, digits: int = 2) -> str:
    """``value`` with its sign and ``digits`` decimals; one that rounds to zero is ``+0.00``."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def percent_text(value: float, scale: float = 100) -> str:
    """``value`` (a fraction; ``scale=1`` for a value already in percent) as a whole percent; one
    that rounds to zero is ``0%`` (NaN and infinities print as Python prints them)."""
    scaled = scale * value
    return f"{round(scaled) + 0:d}%" if math.isfinite(scaled) else f"{scaled:.0f}%"
