"""Near-ties (DESIGN 4): events whose top-1/top-2 margin is small enough for low precision to
move the divergence; with ``--verify-fp32`` the row says how many moved."""

from __future__ import annotations

from ..core.registry import AnalysisPlugin, SummaryContext, control_row, register_analysis

MAX_SHARE = 0.10


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    first = ctx.first
    threshold = ctx.options.get("near_tie_threshold", 0.05)
    n = len(first)
    ties = sum(r.near_tie for r in first)
    share = ties / n if n else None
    ok = share is not None and share <= MAX_SHARE
    row = control_row("near_ties", "pass" if ok else "warn", share,
                      f"{ties} of {n} event(s) have a top-1/top-2 margin under {threshold} logits"
                      + ("" if ok else "; in float32 a margin this small is a genuine near-tie" if ctx.dtype == "float32"
                         else "; consider --dtype float32 or --verify-fp32"),
                      f"share <= {MAX_SHARE}", n=n, near_ties=ties)
    fp32 = ctx.extra.get("fp32_verification")
    if fp32:
        row["details"]["fp32_verification"] = fp32
        if fp32["checked"]:
            row["summary"] += f"; re-run in float32: {fp32['moved']} of {fp32['checked']} moved"
    return row


PLUGIN = register_analysis(AnalysisPlugin(
    "near_ties", summarize, role="control", default=True,
    order=70,
    description="events decided by a small top-1/top-2 margin"))
