"""Repeated prompts: do some events come from prompts that repeat another prompt's tokens (the same
text under another id, a dataset with duplicates)? Greedy decoding gives every repeat the same
event and the same cells, and the prompt-cluster bootstrap counts it as an independent prompt,
so the intervals the verdict reads are narrower than the data supports. Nothing is dropped (each
id is a prompt the user gave); the row warns, names a few repeats, and the verdict's sentence
carries the caveat. A caveat, never a change of grade: a few repeats among many prompts move an
interval little, and the row says how many there are.

The prompt's tokens are read from each record's ``prefix_ids`` (the prompt and the shared
generated tokens before the event), and an image prompt's image from the record's ``image`` field,
so the row needs no pass and works on any stored run that recorded them."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from ..core.registry import AnalysisPlugin, SummaryContext, control_row, register_analysis


def find_repeats(keyed: Iterable[tuple[str, Hashable]]) -> list[tuple[str, str]]:
    """``(prompt id, the earlier prompt id it repeats)`` for each ``(prompt id, key)`` whose key
    (the prompt's tokens, say) an earlier one had; also what ``--dry-run`` reports before a run."""
    seen: dict[Hashable, str] = {}
    repeats: list[tuple[str, str]] = []
    for prompt_id, key in keyed:
        if key in seen:
            repeats.append((prompt_id, seen[key]))
        else:
            seen[key] = prompt_id
    return repeats


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    first = ctx.first
    n = len(first)
    threshold = "no prompt repeats another's tokens"
    if not n:
        return control_row("repeated_prompts", "info", None, "no events", threshold, n=0)
    if any(r.prefix_ids is None for r in first):
        return control_row("repeated_prompts", "info", None, "the run recorded no prompt tokens", threshold, n=n)
    # an image prompt repeats another only with its image too (one question asked of many images is no repeat)
    repeats = find_repeats((r.prompt_id, (tuple(r.prefix_ids[: r.prompt_len]), r.extra.get("image"))) for r in first)
    if not repeats:
        return control_row("repeated_prompts", "pass", 0.0, f"the {n} event(s) come from {n} distinct prompts",
                           threshold, n=n, repeats=0)
    shown = ", ".join(f"{a} = {b}" for a, b in repeats[:3]) + (", ..." if len(repeats) > 3 else "")
    text = (f"{len(repeats)} of {n} event(s) come from prompts that repeat another prompt's tokens ({shown}): each "
            "repeat gets the same event and cells, and the intervals count it as an independent prompt, so they are "
            "narrower than the data supports; drop the repeats")
    return control_row("repeated_prompts", "warn", len(repeats) / n, text, threshold, n=n, repeats=len(repeats),
                       examples=[{"prompt_id": a, "repeats": b} for a, b in repeats[:10]])


PLUGIN = register_analysis(AnalysisPlugin(
    "repeated_prompts", summarize, role="control", default=True,
    order=90,
    description="events from prompts that repeat another prompt's tokens (duplicates counted as independent)"))
