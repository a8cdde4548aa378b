"""Preflight as a registered analysis: when ``crosspatch preflight --out RUN_DIR`` wrote
``preflight.json`` into a run directory, the run's ``summary.json`` carries its checks and both
reports a Preflight section. Light: imports no model code."""

from __future__ import annotations

from ..core.registry import AnalysisPlugin, Section, SummaryContext, Table, register_analysis

PREFLIGHT_FILE = "preflight.json"


def _summarize(rows: list[dict], ctx: SummaryContext, options) -> dict | None:
    if ctx.run_dir is None or not (ctx.run_dir / PREFLIGHT_FILE).exists():
        return None
    from ..store.files import read_checked_document

    document = read_checked_document(ctx.run_dir / PREFLIGHT_FILE)
    return {"passed": document["passed"], "inputs": document["inputs"],
            "checks": [{k: c[k] for k in ("name", "status", "summary", "causes")} for c in document["checks"]]}


def render_preflight(block: dict) -> Section | None:
    if not block:
        return None
    inputs = block["inputs"]
    what = ", ".join(f"{k} {inputs[k]}" for k in ("adapter", "merged") if inputs.get(k))
    return Section("Preflight", [f"crosspatch preflight of {what} against base {inputs['base']}: "
                                 f"{'every check passed' if block['passed'] else 'a check FAILED'} "
                                 "(preflight.md in this directory has the details)."],
                   [Table(["check", "status", "finding"], [[c["name"], c["status"], c["summary"]] for c in block["checks"]])])


PLUGIN = register_analysis(AnalysisPlugin(
    "preflight", _summarize, render=render_preflight, default=True, records=None,
    order=240,
    description="adapter, merge and generation checks (crosspatch preflight --out RUN_DIR)"))
