"""The contract every analysis plug-in gets checked against for free (in the manner of PEFT's
``PeftCommonTester``): :func:`check_analyses` runs registered analyses on a tiny base, its LoRA
adapter and the merged LoRA, under every residency (``both``, ``sequential``, ``adapter``), as
two shards merged, after an interrupted run resumed, and optionally on the Ray engine, and checks:

- identical records under every residency and engine (float values within ``tolerance``; the
  adapter against the merged checkpoint within the merge's rounding);
- the analysis object pickles (it travels to Ray actors and shard jobs);
- the summary block (or Controls row) is JSON and the same for the merged shards, the resumed run
  and the uninterrupted run;
- the report section renders into report.md and report.html.

Use it on your own plug-in: ``check_analysis("my_analysis", tmp_path)``; any failure is an
``AssertionError`` naming the analysis and what differed.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any, Literal

from ..store.files import json_value

PROMPTS = [
    {"id": f"c{k}", "prompt": text, "category": cat, "validator": {"type": "regex", "pattern": "[a-z]"}}
    for k, (text, cat) in enumerate([
        ("Rain in Boston", "precipitation"), ("Forecast for Denver, wind from the west:", "wind"), ("Sky", "sky"),
        ("Temperature high 71F, low", "temperature"), ("Humidity near 80% in Miami", "humidity"),
        ("Visibility", "visibility"), ("Snow totals for Buffalo", "precipitation"), ("Gusts up to", "wind"),
    ])
]
MERGE_TOLERANCE = 1e-4  # float32: merged W + BA against x@W + x@A@B differ by rounding only
SETTINGS = dict(boundary=2, max_new_tokens=8, bootstrap=200, progress=False)


def save_tiny_lora(root, seed: int = 3, bias: Literal["none", "all", "lora_only"] = "none", modules_to_save=None,
                   target_modules=None, added_tokens: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """A tiny base, a LoRA adapter on it (non-zero, scaled up so it changes decisions) and the
    merged LoRA, saved as ``root/base``, ``root/adapter``, ``root/merged`` (``bias``,
    ``modules_to_save`` and ``target_modules`` as PEFT's ``LoraConfig`` takes them). With
    ``added_tokens``, the adapter was trained after those special tokens were added and the
    embeddings grown (a chat format's tokens, TRL's ``setup_chat_format``): the adapter and the
    merged model keep that tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model

    from .tiny import char_tokenizer, tiny_model

    root = Path(root)
    tok = char_tokenizer()
    base = tiny_model("llama")
    base.save_pretrained(str(root / "base"))
    tok.save_pretrained(str(root / "base"))
    model = tiny_model("llama")
    if added_tokens:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(root / "base"))
        tok.add_special_tokens({"additional_special_tokens": list(added_tokens)})
        model.resize_token_embeddings(model.config.vocab_size + len(added_tokens), mean_resizing=False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, bias=bias,
                                                  modules_to_save=modules_to_save,
                                                  target_modules=target_modules or ["q_proj", "v_proj", "up_proj",
                                                                                    "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(3.0)
    peft_model.save_pretrained(str(root / "adapter"))
    if added_tokens:
        tok.save_pretrained(str(root / "adapter"))
    merged = peft_model.merge_and_unload()  # pyright: ignore[reportCallIssue] - a PeftModel method
    merged.save_pretrained(str(root / "merged"))  # pyright: ignore[reportCallIssue] - a PreTrainedModel
    tok.save_pretrained(str(root / "merged"))
    return root / "base", root / "adapter", root / "merged"


def _close(a, b, tol: float, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for k, (x, y) in enumerate(zip(a, b)):
            _close(x, y, tol, f"{where}[{k}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), f"{where}: {a!r} != {b!r}"
        else:
            assert abs(a - b) <= tol * max(1.0, abs(a)), f"{where}: {a!r} != {b!r} (tolerance {tol})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _rows(result, plugin) -> list[dict]:
    """The plug-in's records; for one without a records file, the run's 2x2 records (where an
    analysis that scores more events with the 2x2, as event kinds do, puts its records)."""
    found = result.analyses.get(plugin.records, []) if plugin.records is not None else result.records
    rows = [r.to_record() if hasattr(r, "to_record") else r for r in found]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=json_value)[:400] if "key" not in r else r["key"])


def _block(summary: dict, plugin):
    if plugin.role == "control":
        return next((r for r in summary["controls"] if r["control"] == plugin.name), None)
    return summary.get(plugin.summary_key)


def _options(plugins) -> dict:
    controls = [p.name for p in plugins if p.role == "control"]
    return dict(controls=controls or "none", analyses=[p.name for p in plugins if p.role == "analysis"],
                consequence=any(p.name == "consequence" for p in plugins), consequence_budget=4)


def check_analyses(names, workdir, ray: bool = False, tolerance: float = 1e-5,
                   analysis_options: dict | None = None) -> dict[str, dict]:
    """Check the registered analyses ``names`` together (one set of runs serves all of them), with
    ``analysis_options`` ({name: {option: value}}) where the tiny models need other settings;
    returns, per name, what was compared. Raises AssertionError on the first breach."""
    from ..core.registry import get_analysis
    from ..execution import load_pair
    from ..runner.pipeline import RunConfig, chunk_plan, merge_runs, run
    from ..store import EVENTS_FILE

    workdir = Path(workdir)
    plugins = [get_analysis(n) for n in names]
    base, adapter, merged = save_tiny_lora(workdir / "models")
    opts = {**SETTINGS, **_options(plugins), "analysis_options": dict(analysis_options or {})}
    config = RunConfig(**{k: v for k, v in opts.items() if k != "progress"})
    plan = chunk_plan(config, [2], 4, validators={p["id"]: None for p in PROMPTS})
    pickle.loads(pickle.dumps(plan))  # every built analysis travels to Ray actors and shard jobs

    runs = {}
    loads: list[tuple[str, dict[str, Any]]] = [("both", dict(tuned=str(merged))), ("sequential", dict(tuned=str(merged))),
                                               ("adapter", dict(adapter=str(adapter)))]
    for residency, kwargs in loads:
        models = load_pair(str(base), residency=residency, **kwargs)
        runs[residency] = run(models, PROMPTS, out=workdir / f"run-{residency}", **opts)
    if ray:
        runs["ray"] = run(load_pair(str(base), tuned=str(merged)), PROMPTS, out=workdir / "run-ray", engine="ray",
                          workers=2, **opts)
    shards = [run(load_pair(str(base), tuned=str(merged)), PROMPTS, out=workdir / f"shard-{i}", shard=f"{i}/2", **opts)
              for i in range(2)]
    merged_run = merge_runs([s.run_dir for s in shards if s.run_dir is not None], workdir / "merged-shards")

    # an interrupted run: the last prompt's records and the summary are lost; the same command resumes
    interrupted = workdir / "run-interrupted"
    run(load_pair(str(base), tuned=str(merged)), PROMPTS, out=interrupted, **opts)
    last = PROMPTS[-1]["id"]
    lines = (interrupted / EVENTS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (interrupted / EVENTS_FILE).write_text("".join(x for x in lines if json.loads(x)["prompt_id"] != last), encoding="utf-8")
    (interrupted / "summary.json").unlink()
    resumed = run(load_pair(str(base), tuned=str(merged)), PROMPTS, out=interrupted, **opts)

    report = {}
    for plugin in plugins:
        where = f"analysis {plugin.name!r}"
        both = _rows(runs["both"], plugin)
        for name, other in runs.items():
            tol = MERGE_TOLERANCE if name == "adapter" else tolerance
            _close(_rows(other, plugin), both, tol, f"{where}: records under {name} vs both")
        block = _block(runs["both"].summary, plugin)
        json.dumps(block, allow_nan=False)  # a summary block is plain JSON
        _close(_block(merged_run.summary, plugin), block, 1e-4, f"{where}: merged shards vs one run")
        _close(_block(resumed.summary, plugin), block, 1e-4, f"{where}: resumed vs uninterrupted run")
        md = (runs["both"].run_dir / "report.md").read_text(encoding="utf-8")
        html = (runs["both"].run_dir / "report.html").read_text(encoding="utf-8")
        if plugin.role == "control":
            shown = plugin.name.replace("_", "-")
            assert shown in md and shown in html, f"{where}: no Controls row in the reports"
        elif block and plugin.render is not None:
            section = plugin.render(block)
            if section is not None:
                from html import escape

                assert section.title in md.replace("\\", ""), f"{where}: no section in report.md"
                assert escape(section.title) in html, f"{where}: no section in report.html"
        report[plugin.name] = {"rows": len(both), "block": block is not None,
                               "residencies": sorted(runs)}
    return report


def check_analysis(name: str, workdir, ray: bool = False, tolerance: float = 1e-5, options: dict | None = None) -> dict:
    """:func:`check_analyses` for one registered analysis (``options``: its options)."""
    return check_analyses([name], workdir, ray, tolerance, {name: options} if options else None)[name]
