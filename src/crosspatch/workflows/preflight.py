"""``crosspatch preflight``: is an adapter active, does its merge agree with it, do the models
still generate sensibly, and did the fine-tune learn its domain, before anyone merges or ships.

Checks (each ``pass``, ``warn``, ``fail`` or ``skip``, with its numbers and, for a failure, the
likely causes it could tell apart):

- ``adapter-active`` (with ``adapter``): per module of the adapter the effective ``ΔW`` (PEFT's
  own ``get_delta_weight``: ``B A`` times the scaling), its Frobenius norm, relative to the base
  weight's, the rank and the scaling; ``modules_to_save`` and bias. Then how far the logits move
  from the base over the adapter's own greedy continuations (max and mean absolute difference,
  mean KL(base || adapter), top-1 agreement) and on how many prompts the greedy output changes.
  The adapter "changes nothing" when every ``ΔW`` is zero or when no logit moves by more than
  ``min_logit_change`` and no greedy output changes; a failure names which.
- ``merged-changes`` (with ``merged``): the same logit movement for the merged checkpoint.
- ``adapter-vs-merged`` (with both): logit agreement of the merged checkpoint with the adapter
  over the adapter's continuations, against dtype-aware tolerances (:data:`TOLERANCES`), and the
  first generated position where their greedy decodes differ, with both margins: a disagreement
  whose two margins add up to no more than twice the max-abs tolerance is rounding; a larger one
  is a confident disagreement (a bad merge).
- ``generation-health``: per model, empty outputs, repetition loops (the share of repeated
  n-grams in an output at least ``loop_threshold``), outputs that never reach EOS within the
  budget, and special or chat-template tokens leaking into the text. A descendant fails where
  its rate exceeds the policy's maximum and the base's own rate (a base model may loop).
- ``domain-learning`` (with ``domain_text``): per-token NLL of every model on held-out domain
  text; a descendant that does not lower it is a warning (a failure with
  ``require_domain_gain``): an instruction tune may raise raw-text NLL and still be fine.

The result passes when no check fails; ``crosspatch preflight`` exits 0 or 1 like ``gate``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..core.registry import Section, Table
from ..errors import OptionError, PromptFileError, RunSettingsMismatchError
from ..inputs.prompts import prompts_label
from ..models.options import plain_scalar
from ..models.own_forward import without_autocast
from ..store import check_out_path
from .output import WORKFLOW_ROWS
from .preflight_checks import _changes_check, _domain_check, _first_divergences, _health_check, _merge_check, _precision
from .preflight_measures import Agreement, _chunks, _logits, _prompt_texts, adapter_weight_report, read_domain_text
from .preflight_policy import KIND, SCHEMA, Check, PreflightPolicy, PreflightResult


def preflight_inputs(base: str, adapter: str | None, merged: str | None, prompts, domain_text, max_new_tokens: int,
                     policy: PreflightPolicy, options) -> dict:
    return {"base": str(base), "adapter": str(adapter) if adapter else None, "merged": str(merged) if merged else None,
            "prompts": prompts_label(prompts),
            "domain_text": str(domain_text) if domain_text else None, "max_new_tokens": max_new_tokens,
            "policy": dataclasses.asdict(policy), "dtype": options.dtype}


def _merge_dtype(merge_in_memory: str | None, adapter, merged) -> str | None:
    """``--merge-in-memory``'s dtype by its canonical name (None: not asked); it needs an adapter
    and no merged checkpoint."""
    if merge_in_memory is None:
        return None
    from ..models.loading import DTYPES, dtype_name

    dtype = dtype_name(str(merge_in_memory))
    if adapter is None or merged is not None:
        raise OptionError("--merge-in-memory merges --adapter in memory: give --adapter and no --merged")
    if dtype not in DTYPES:
        raise OptionError(f"--merge-in-memory must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return dtype


def check_run_dir_models(out: str | Path | None, base: str, descendants: list[str]) -> None:
    """A preflight written into a crosspatch run directory becomes a section of that run's
    reports: it must check the run's own models (its base, and one of its descendants), or the
    run's report would carry another pair's checks. Runs of models given in memory record no
    paths; nothing can be compared there."""
    from ..runner.checks import path_key
    from ..store import RunStore

    store = RunStore(out) if out is not None and Path(out).is_dir() else None
    if store is None or not store.is_run():
        return
    spec = store.config().get("load_spec")
    if not isinstance(spec, dict) or not spec.get("base"):
        return
    run_descendants = [*(spec.get("tuned") or {}).values(), *(spec.get("adapters") or {}).values()]
    if path_key(base) != path_key(spec["base"]) or \
            not {path_key(d) for d in descendants} & {path_key(d) for d in run_descendants}:
        raise RunSettingsMismatchError(
            f"{out} holds a run of {spec['base']} vs {', '.join(map(str, run_descendants))}: a preflight of "
            f"{', '.join(descendants)} on {base} would be a section of that run's reports; preflight that run's "
            "own models there, or choose another --out")


@without_autocast()  # whatever a caller computes in: its autocast would move the weights' sums
def preflight(base: str, adapter: str | None = None, merged: str | None = None, prompts=None,
              domain_text: str | Path | None = None, out: str | Path | None = None,
              policy: PreflightPolicy | dict | str | Path | None = None,
              max_new_tokens: int = 32, options=None, progress=None, merge_in_memory: str | None = None,
              **load_overrides) -> PreflightResult:
    """Preflight an adapter and/or a merged checkpoint against its base (see the module
    docstring). Inputs are validated before any model loads; ``out`` (a new directory, or a
    crosspatch run directory to add a section to its reports) receives ``preflight.json``,
    ``preflight.md`` and ``preflight.html``; an ``out`` that already holds this preflight of the
    same inputs is read back without loading anything. ``policy``: a PreflightPolicy, a dict of its
    fields, or a YAML/JSON file of them (as ``--policy``). ``merge_in_memory`` ("float32",
    "bfloat16", "float16"; with ``adapter`` and no ``merged``): merge the adapter with PEFT
    (``merge_and_unload`` on a copy) and round the merged weights to that dtype, to see what such
    a merge would compute before writing one (holds a second copy of the model)."""
    from ..execution import load_models
    from ..execution.roles import model_path_arg
    from ..models.adapters import check_adapter_files
    from ..models.loading import LoadOptions, validate_load_options
    from ..models.paths import check_model_path
    from .output import progress_function

    if "tuned" in load_overrides:  # (splice's and run's name for a full fine-tune)
        raise OptionError("preflight checks adapter= and/or merged=: give a full fine-tuned checkpoint as merged=, "
                          "not tuned=")
    policy = PreflightPolicy.given(policy)
    options = LoadOptions.with_overrides(options, **load_overrides)
    validate_load_options(options)
    progress = progress_function(progress)
    if out is not None:
        check_out_path(out)
    if adapter is None and merged is None:
        raise OptionError("preflight needs --adapter and/or --merged (a descendant to check against --base)")
    base = model_path_arg(base, "the base")
    adapter = model_path_arg(adapter, "adapter") if adapter is not None else None
    merged = model_path_arg(merged, "merged") if merged is not None else None
    merge_in_memory = _merge_dtype(merge_in_memory, adapter, merged)
    max_new_tokens = plain_scalar(max_new_tokens)  # (a numpy integer too)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    check_model_path(str(base), "base", revision=options.revision)
    if adapter is not None:
        check_model_path(str(adapter), "tuned", adapter=True)
        check_adapter_files(str(adapter), options.allow_pickle, str(base))
    if merged is not None:
        check_model_path(str(merged), "--merged", revision=options.revision)
    prompt_ids, texts, source = _prompt_texts(prompts)
    domain = read_domain_text(domain_text) if domain_text is not None else None
    inputs = preflight_inputs(base, adapter, merged, prompts, domain_text, max_new_tokens, policy, options)
    if merge_in_memory is not None:
        inputs["merge_in_memory"] = merge_in_memory
    from .output import fingerprint_of, finished_document

    stored = finished_document(out, KIND, inputs, allow_run_dir=True)
    if stored is not None and out is not None:
        return PreflightResult(stored, Path(out))
    check_run_dir_models(out, base, [p for p in (adapter, merged) if p is not None])

    from .output import stages

    descendants = int(adapter is not None) + int(merged is not None or merge_in_memory is not None)
    say = stages(1 + int(merge_in_memory is not None) + 1 + descendants + 1 + int(domain is not None), progress)
    say("loading models")
    if merge_in_memory is not None:
        options.residency = "adapter"  # the in-memory merge is a copy of the one resident PEFT model
    models = load_models(str(base), tuned={"merged": str(merged)} if merged else None,
                         adapters={"adapter": str(adapter)} if adapter else None, options=options)
    if merge_in_memory is not None:
        say(f"merging the adapter in memory ({merge_in_memory})")
        try:
            _add_in_memory_merge(models, merge_in_memory)
        except BaseException:
            models.release()  # a set that is not used keeps no model
            raise
        merged = f"<in memory: {merge_in_memory}>"
    roles = ["base"] + (["adapter"] if adapter else []) + (["merged"] if merged else [])
    tokenizer = models.tokenizer
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    empty = [pid for pid, ids in zip(prompt_ids, encoded) if not ids]
    if empty:
        raise PromptFileError(f"prompt(s) {', '.join(empty[:3])} tokenize to nothing")

    from ..execution.search import greedy_rollout

    outputs = {}
    for role in roles:
        say(f"generating: {role}")
        with models.use(role) as handle:
            outputs[role] = greedy_rollout(handle, encoded, max_new_tokens, models, WORKFLOW_ROWS)
    reference = "adapter" if adapter else "merged"
    sequences = [p + o for p, o in zip(encoded, outputs[reference])]
    real = models.real_vocab
    agreements = {pair: Agreement() for pair in (("base", "adapter"), ("base", "merged"), ("adapter", "merged"))
                  if pair[0] in roles and pair[1] in roles}
    divergence_at = _first_divergences(outputs["adapter"], outputs["merged"]) if adapter and merged else []
    divergences = []
    precision = "half" if merge_in_memory in ("bfloat16", "float16") else \
        _precision(options.dtype, merged if merge_in_memory is None else None)
    tolerances = policy.tolerances(precision)
    vocab = real.mask.numel()
    say("comparing logits")
    for chunk in _chunks(sequences, vocab):
        seqs = [sequences[i] for i in chunk]
        logits = {role: _logits(models, role, seqs) for role in roles}
        for k, i in enumerate(chunk):
            start = len(encoded[i]) - 1  # the position predicting the first generated token
            for (a, b), agreement in agreements.items():
                width = min(logits[a][k].shape[-1], logits[b][k].shape[-1])  # rows one lacks (added tokens): not real
                agreement.add(logits[a][k][start:, :width], logits[b][k][start:, :width], real.for_rows(width))
            pos = divergence_at[i] if divergence_at else None
            if pos is not None:
                ad_row, m_row = logits["adapter"][k][start + pos], logits["merged"][k][start + pos]
                t_ad = outputs["adapter"][i][pos] if pos < len(outputs["adapter"][i]) else None
                t_m = outputs["merged"][i][pos] if pos < len(outputs["merged"][i]) else None
                if t_ad is None or t_m is None:  # one decode ended at the budget: not a disagreement of tokens
                    continue
                ad_margin, m_margin = float(ad_row[t_ad] - ad_row[t_m]), float(m_row[t_m] - m_row[t_ad])
                divergences.append({
                    "prompt": prompt_ids[i], "position": pos, "adapter_token": tokenizer.decode([t_ad]),
                    "merged_token": tokenizer.decode([t_m]), "adapter_margin": ad_margin, "merged_margin": m_margin,
                    "confident": ad_margin + m_margin > 2 * tolerances["max_abs_logit_diff"]})

    checks: list[Check] = []
    if adapter:
        with models.use("adapter") as handle:
            weights = adapter_weight_report(handle.module, handle.adapter_name or "default")
        settings = (models.provenance.get("adapter") or models.provenance.get("descendants", {}).get("adapter") or {}).get("settings") or {}
        weights["bias"] = settings.get("bias")
        weights["target_modules"] = settings.get("target_modules")
        targets = settings.get("target_modules")
        if isinstance(targets, list) and weights["modules"]:
            leaves = {r["module"].rsplit(".", 1)[-1] for r in weights["modules"]}
            weights["unmatched_targets"] = sorted(t for t in targets if t not in leaves)
        changed = sum(a != b for a, b in zip(outputs["base"], outputs["adapter"]))
        checks.append(_changes_check("adapter-active", "adapter", agreements[("base", "adapter")].numbers(), changed,
                                     len(encoded), policy, weights))
    if merged:
        changed = sum(a != b for a, b in zip(outputs["base"], outputs["merged"]))
        checks.append(_changes_check("merged-changes", "merged checkpoint", agreements[("base", "merged")].numbers(),
                                     changed, len(encoded), policy, None))
    if adapter and merged:
        checks.append(_merge_check(agreements[("adapter", "merged")].numbers(), divergences, tolerances, precision, policy))
    checks.append(_health_check(outputs, models, roles, policy))
    if domain is not None:
        say("domain text")
        checks.append(_domain_check(models, roles, domain, policy))
    else:
        checks.append(Check("domain-learning", "skip", "no --domain-text given"))

    document = {
        "schema_version": SCHEMA, "fingerprint": fingerprint_of(inputs), "inputs": inputs,
        "passed": not any(c.status == "fail" for c in checks),
        "checks": [dataclasses.asdict(c) for c in checks],
        "prompts": {"source": source, "count": len(encoded)},
        "generations": [{"prompt": pid, "text": text, **{role: tokenizer.decode(outputs[role][i], skip_special_tokens=False)
                                                          for role in roles}}
                        for i, (pid, text) in enumerate(zip(prompt_ids, texts))],
        "warnings": list(models.warnings),
    }
    models.release()
    if out is not None:
        write_preflight(out, document)
    return PreflightResult(document, Path(out) if out is not None else None)


def _add_in_memory_merge(models, dtype: str) -> None:
    """A ``merged`` role: the adapter merged into a copy of the base with PEFT, its weights
    rounded to ``dtype`` (then computed in the load dtype, as a saved merge would be)."""
    import copy

    from ..models.forward import ModelHandle
    from ..models.loading import DTYPES

    with models.use("adapter") as handle:
        peft_model = copy.deepcopy(handle.module)
        peft_model.set_adapter(handle.adapter_name)
    try:
        merged = peft_model.merge_and_unload()
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:  # PEFT's refusal, named
        from ..errors import UnsupportedAdapterError

        reason = " ".join(str(exc).split())[:300]
        raise UnsupportedAdapterError(f"PEFT cannot merge the adapter into its base ({reason}): no merged checkpoint of "
                                      "it exists to check; the adapter itself runs unmerged (drop --merge-in-memory)") \
            from None
    with torch.no_grad():
        for parameter in merged.parameters():
            parameter.copy_(parameter.to(DTYPES[dtype]).to(parameter.dtype))
    merged.eval()
    models.handles["merged"] = ModelHandle("merged", merged)
    models.roles = (*models.roles, "merged")
    models.tokenizers["merged"] = models.tokenizers["adapter"]


def preflight_sections(document: dict, generations: int = 20) -> list[Section]:
    """The sections of a preflight page (also the run report's section)."""
    checks = document["checks"]
    overview = Section("Checks", [], [Table(["check", "status", "finding"],
                                            [[c["name"], c["status"], c["summary"]] for c in checks])])
    from .output import warnings_sections

    sections = [overview] + warnings_sections(document)
    for c in checks:
        if c.get("table") and c["table"]["rows"]:
            sections.append(Section(c["name"], [c["summary"]] + [f"cause: {x}" for x in c.get("causes") or []],
                                    [Table(c["table"]["header"], [[str(x) for x in r] for r in c["table"]["rows"]])]))
    gens = document.get("generations") or []
    if gens:
        roles = [k for k in gens[0] if k not in ("prompt", "text")]
        rows = [[g["prompt"], g["text"][:200]] + [g[r][:300] for r in roles] for g in gens[:generations]]
        sections.append(Section("Greedy generations", [f"first {min(len(gens), generations)} of {len(gens)} prompts"],
                                [Table(["prompt", "text"] + roles, rows)]))
    return sections


def write_preflight(out: str | Path, document: dict) -> None:
    from .output import write_outputs

    inputs = document["inputs"]
    verdict = "PASS" if document["passed"] else "FAIL"
    intro = [f"{verdict}: base {inputs['base']}" + (f", adapter {inputs['adapter']}" if inputs["adapter"] else "")
             + (f", merged {inputs['merged']}" if inputs["merged"] else "")
             + f"; {document['prompts']['count']} prompts ({document['prompts']['source']}), "
             f"{inputs['max_new_tokens']} new tokens, {inputs['dtype']}."]
    write_outputs(out, KIND, document, "crosspatch preflight", intro, preflight_sections(document))
    from ..store import RunStore

    store = RunStore(Path(out))
    if store.is_run() and (Path(out) / "summary.json").exists():
        from ..runner.finished import resummarize

        with store.lock(create=False):
            resummarize(store)
