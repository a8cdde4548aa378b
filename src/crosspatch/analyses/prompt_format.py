"""Prompt format (DESIGN 4, "prompt choice decides the events"): are the first-divergence events
mostly decisions about formatting? An instruction-formatted prompt fed to a base that never saw
the format makes the base end the document or open a header at once, and every event is then
``</s>`` against a header at the first generated token: the cells measure how each model treats
the prompt's format, not what the fine-tune learned. The paper feeds raw prompts.

The row's value is the share of events that are that signature: a formatting token
(``FORMAT``: whitespace, punctuation, markup, special and end-of-text tokens, ``--format-tokens``)
on either side at the first generated token. Formatting disagreements later in a continuation
are common between a base and an instruct model on raw prompts (the reason for the
``first_nonformat_diff`` kind) and are not the trap. It warns above :data:`MAX_SHARE`, naming
the most common token pair, and points at the ``first_nonformat_diff`` event kind. A caveat,
never a change of grade: formatting can be what a fine-tune is about."""

from __future__ import annotations

from collections import Counter

from ..core.registry import AnalysisPlugin, SummaryContext, control_row, register_analysis
from ..core.tokens import FORMAT

MAX_SHARE = 0.5
MIN_EVENTS = 5  # fewer events say nothing about a distribution


def _is_format(record) -> bool:
    return FORMAT in (record.t_pt_category, record.t_it_category)


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    first = ctx.first
    n = len(first)
    threshold = f"share <= {MAX_SHARE}"
    if n < MIN_EVENTS:
        return control_row("prompt_format", "info", None, f"fewer than {MIN_EVENTS} events", threshold, n=n)
    if all(r.t_pt_category is None and r.t_it_category is None for r in first):
        return control_row("prompt_format", "info", None, "the run recorded no token categories", threshold, n=n)
    formatting = [r for r in first if _is_format(r)]
    at_start = [r for r in formatting if r.position == 0]
    share = len(at_start) / n
    text = (f"{len(at_start)} of {n} event(s) are formatting decisions at the first generated token "
            f"({len(formatting)} have a formatting token on one side)")
    details: dict = {"formatting": len(formatting), "at_first_token": len(at_start)}
    if share > MAX_SHARE:
        from .event_kinds import requested_event_kinds  # (imports the execution layer: only when it is read)

        (t_pt, t_it), count = Counter((r.t_pt_text, r.t_it_text) for r in at_start).most_common(1)[0]
        details["most_common_pair"] = {"t_pt": t_pt, "t_it": t_it, "count": count}
        text += (f" (most often {t_pt!r} vs {t_it!r}, {count}): the prompts' format may decide the events "
                 "rather than what the fine-tune learned (a base given an instruction format ends the document "
                 "or opens a header at once; the paper feeds raw prompts); "
                 + ("the first_nonformat_diff event kind's block skips them"
                    if "first_nonformat_diff" in requested_event_kinds(ctx.options.get("event_kinds"))
                    else "--event-kinds first_nonformat_diff scores the first disagreement that skips them"))
    return control_row("prompt_format", "warn" if share > MAX_SHARE else "pass", share, text, threshold, n=n,
                       **details)


PLUGIN = register_analysis(AnalysisPlugin(
    "prompt_format", summarize, role="control", default=True,
    order=80,
    description="first-divergence events that are mostly formatting decisions (the prompts' format)"))
