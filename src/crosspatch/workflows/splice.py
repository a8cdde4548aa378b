"""``crosspatch splice``: what a layer-range merge would actually write, before anyone builds it.

At a boundary ``b`` the four static chimeras of a base and a descendant are

    (base early, base late)    (base early, tuned late)
    (tuned early, base late)   (tuned early, tuned late)

where "early" is the embeddings and layers ``0..b-1`` and "late" the layers ``b..L-1``, the final norm
and the LM head (as a passthrough/slices merge taking the top layers from one model would have them).
Each chimera is built in memory without copying a weight, and decodes greedily on every prompt:

- two full checkpoints held at once: the early model's decoder-layer list, final norm and head
  are swapped for the late model's modules for the duration of the generation (then restored);
- a base + PEFT adapter on one copy of the weights: the adapter is switched on only in the
  layers of the tuned side (the embeddings, when adapted, count as early; the head as late).

A chimera is a *static* splice: every position of its generation runs the same combination, so unlike
the cross-patching cells (which patch the upstream state of one fixed prefix) it shows what the merge
would say over a whole continuation. At its first generated token the chimera (base early, tuned
late) computes exactly the cell ``(U_PT, L_IT)`` of the diagnostic.

The result: per boundary and chimera, the continuations, validator pass rates (prompts that carry a
validator), where each continuation first departs from the tuned model's own (marked in the HTML),
and the cross-patching numbers there (a ``crosspatch run`` on the same models, ``<out>/crosspatch``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from torch import nn

from ..core.registry import Section, Table
from ..errors import OptionError, PromptFileError
from ..models.own_forward import without_autocast
from ..store import check_out_path
from .output import WORKFLOW_ROWS

KIND = "splice"
SCHEMA = "crosspatch.splice/1"
SIDES = ("base", "tuned")
CHIMERAS = (("base", "base"), ("base", "tuned"), ("tuned", "base"), ("tuned", "tuned"))


def chimera_name(early: str, late: str) -> str:
    return f"{early} early + {late} late"


def _parent_and_name(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for name, module in model.named_modules():
        if module is target:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise OptionError(f"could not find {type(target).__name__} inside {type(model).__name__} to splice it")


@contextlib.contextmanager
def swapped_late_stack(early_handle, late_handle, boundary: int) -> Iterator[None]:
    """The early model computes layers ``boundary..L-1``, final norm and head with the late
    model's modules (no weight copied) inside the context; restored on exit."""
    early, late = early_handle.anatomy, late_handle.anatomy
    model = early.model
    saved = [early.layers[i] for i in range(boundary, early.num_layers)]
    norm_parent, norm_attr = _parent_and_name(model, early.final_norm)
    head_parent, head_attr = _parent_and_name(model, early.lm_head)
    try:
        for i in range(boundary, early.num_layers):
            early.layers[i] = late.layers[i]
        setattr(norm_parent, norm_attr, late.final_norm)
        setattr(head_parent, head_attr, late.lm_head)
        yield
    finally:
        for offset, module in enumerate(saved):
            early.layers[boundary + offset] = module
        setattr(norm_parent, norm_attr, early.final_norm)
        setattr(head_parent, head_attr, early.lm_head)


def _layer_of(name: str, layer_names: dict[str, int]) -> int | None:
    return next((index for prefix, index in layer_names.items() if name == prefix or name.startswith(prefix + ".")), None)


@contextlib.contextmanager
def adapter_only_on(handle, boundary: int, side: str) -> Iterator[None]:
    """Inside the descendant handle's context, switch its PEFT adapter off everywhere except on
    ``side`` ("early": embeddings and layers < boundary; "late": layers >= boundary, norm and head)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft_model = handle.module
    anatomy = handle.anatomy
    layer_ids = {id(layer): i for i, layer in enumerate(anatomy.layers)}
    layer_names = {name: layer_ids[id(m)] for name, m in peft_model.named_modules() if id(m) in layer_ids}
    switched = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, BaseTunerLayer) and type(module).__name__ != "ModulesToSaveWrapper":
            continue
        index = _layer_of(name, layer_names)
        if index is None:
            index = -1 if "embed" in name else anatomy.num_layers  # embeddings: early; norm, head: late
        on_early = index < boundary
        if on_early != (side == "early"):
            switched.append(module)
    try:
        for module in switched:
            module.enable_adapters(False)
        yield
    finally:
        for module in switched:
            module.enable_adapters(True)


def generate_chimera(models, early: str, late: str, boundary: int, prompts: list[list[int]], max_new_tokens: int,
                     roles: dict[str, str]) -> list[list[int]]:
    """Greedy continuations of the chimera (``early`` side's embeddings and layers < boundary,
    ``late`` side's layers >= boundary and head). ``roles`` maps "base"/"tuned" to model roles."""
    from ..execution.search import greedy_rollout

    if early == late:
        with models.use(roles[early]) as handle:
            return greedy_rollout(handle, prompts, max_new_tokens, models, WORKFLOW_ROWS)
    with models.use(roles["base"]) as base, models.use(roles["tuned"]) as tuned:
        if tuned.adapter_enabled and tuned.module is base.module:  # one copy of the weights + a PEFT adapter
            with tuned.active(), adapter_only_on(tuned, boundary, "late" if late == "tuned" else "early"):
                plain = _AdapterAsIs(tuned)
                return greedy_rollout(plain, prompts, max_new_tokens, models, WORKFLOW_ROWS)  # pyright: ignore[reportArgumentType] - a handle view
        early_handle, late_handle = (base, tuned) if early == "base" else (tuned, base)
        with swapped_late_stack(early_handle, late_handle, boundary):
            return greedy_rollout(early_handle, prompts, max_new_tokens, models, WORKFLOW_ROWS)


class _AdapterAsIs:
    """A handle view whose ``active()`` leaves the adapter switches as they are (the caller set them)."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def __getattr__(self, name):
        return getattr(self._handle, name)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield


@dataclass
class SpliceResult:
    document: dict
    out: Path | None = None

    def continuations(self, boundary: int, early: str, late: str) -> list[str]:
        block = self.document["boundaries"][str(boundary)]
        return [row["text"] for row in block["chimeras"][chimera_name(early, late)]["outputs"]]

    def _repr_html_(self) -> str:
        """What a notebook shows: per boundary and chimera, pass rate / same as the tuned model."""
        from ..report.notebook import splice_card

        return splice_card(self.document, self.out)

    def __repr__(self) -> str:
        return f"SpliceResult(boundaries={list(self.document['boundaries'])}, prompts={self.document['prompts']['count']})"


def _first_departure(output: list[int], reference: list[int]) -> int | None:
    position = next((i for i, (a, b) in enumerate(zip(output, reference)) if a != b), None)
    if position is None and len(output) != len(reference):
        position = min(len(output), len(reference))
    return position


@without_autocast()  # whatever a caller computes in: its autocast would move the weights' sums
def splice(base: str, tuned: str | None = None, adapter: str | None = None, prompts=None,
           boundaries: int | float | str | list | tuple | None = (0.6,),
           out: str | Path | None = None, max_new_tokens: int = 48, options=None, run_diagnostic: bool = True,
           progress=None, **load_overrides) -> SpliceResult:
    """The four static chimeras of ``base`` and ``tuned`` (or ``adapter``) at each boundary (see
    the module docstring). ``boundaries``: layer indices, depth fractions, or "all". Inputs are
    checked before any model loads; ``out`` (new, or this splice's own directory: read back)
    receives ``splice.json``, ``splice.md``, ``splice.html`` and the diagnostic's run directory."""
    from ..execution import load_models
    from ..execution.roles import model_path_arg
    from ..inputs.prompts import raw_text_prompts
    from ..models.adapters import changes_base_in_place, check_adapter_files
    from ..models.loading import LoadOptions, validate_load_options
    from ..models.options import check_switches, plain_scalar
    from ..models.paths import check_model_path
    from .output import fingerprint_of, finished_document, progress_function

    options = LoadOptions.with_overrides(options, **load_overrides)
    progress = progress_function(progress)
    if out is not None:
        check_out_path(out)
    if (tuned is None) == (adapter is None):
        raise OptionError("splice needs exactly one descendant: --tuned (a checkpoint) or --adapter (a PEFT adapter)")
    base = model_path_arg(base, "the base")
    tuned = model_path_arg(tuned, "tuned") if tuned is not None else None
    adapter = model_path_arg(adapter, "adapter") if adapter is not None else None
    check_switches(run_diagnostic=run_diagnostic)
    max_new_tokens, boundaries = plain_scalar(max_new_tokens), plain_scalar(boundaries)  # (numpy numbers too)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if prompts is None:
        raise PromptFileError("splice needs --prompts")
    if boundaries is None:
        boundaries = []  # none given: refused just below
    elif isinstance(boundaries, (int, float, str)):
        boundaries = "all" if boundaries == "all" else [boundaries]
    if boundaries != "all" and (not boundaries or any(isinstance(b, bool) or not isinstance(b, (int, float))
                                                        for b in boundaries)):
        raise OptionError(f"boundaries must be layer indices or depth fractions, or 'all', not {boundaries!r}")
    from ..runner.checks import check_boundary_spec

    for b in ([] if boundaries == "all" else boundaries):
        check_boundary_spec(b)
    _precheck_layers(str(base), boundaries)
    options.residency = "adapter" if adapter else "both"  # a chimera needs both sides at once
    validate_load_options(options)
    check_model_path(str(base), "base", revision=options.revision)
    if adapter is not None:
        check_model_path(str(adapter), "tuned", adapter=True)
        check_adapter_files(str(adapter), options.allow_pickle, str(base))
        if changes_base_in_place(str(adapter)):  # one copy's "base" would not be the base: a copy each
            options.residency = "both"
    else:
        check_model_path(str(tuned), "tuned", revision=options.revision)
    items = raw_text_prompts(prompts, "splice")
    inputs = {"base": str(base), "tuned": str(tuned) if tuned else None, "adapter": str(adapter) if adapter else None,
              "prompts": str(prompts) if isinstance(prompts, (str, Path)) else [p.prompt for p in items],
              "boundaries": boundaries, "max_new_tokens": max_new_tokens, "dtype": options.dtype,
              "diagnostic": run_diagnostic}
    stored = finished_document(out, KIND, inputs, own_entries=("crosspatch",))  # an interrupted diagnostic resumes
    if stored is not None and out is not None:
        return SpliceResult(stored, Path(out))

    from .output import stages

    progress("loading models")
    models = load_models(str(base), tuned={"tuned": str(tuned)} if tuned else None,
                         adapters={"tuned": str(adapter)} if adapter else None, options=options)
    layers = models.num_layers
    chosen = _resolve(boundaries, layers, models.facts.values() if run_diagnostic else ())
    tokenizer = models.tokenizer
    encoded = [tokenizer(p.prompt, add_special_tokens=True)["input_ids"] for p in items]
    roles = {"base": "base", "tuned": "tuned"}
    say = stages(2 + 2 * len(chosen) + int(run_diagnostic), progress)
    outputs_by_boundary: dict[int, dict[tuple[str, str], list[list[int]]]] = {}
    diagonal = {}
    for side in SIDES:
        say(f"generating: {side} (unspliced)")
        diagonal[(side, side)] = generate_chimera(models, side, side, 0, encoded, max_new_tokens, roles)
    for b in chosen:
        outputs_by_boundary[b] = dict(diagonal)
        for early, late in (("base", "tuned"), ("tuned", "base")):
            say(f"generating: boundary {b}, {chimera_name(early, late)}")
            outputs_by_boundary[b][(early, late)] = generate_chimera(models, early, late, b, encoded, max_new_tokens, roles)

    diagnostic = None
    if run_diagnostic:
        say("cross-patching at the same boundaries")
        import crosspatch

        result = crosspatch.run(models, items, boundaries=chosen, max_new_tokens=max_new_tokens,
                                out=Path(out) / "crosspatch" if out is not None else None, progress=False)
        from ..runner.summary import effects_at

        diagnostic = {str(b): effects_at(result.summary, b) for b in chosen}
        diagnostic["verdict"] = (result.summary.get("verdict") or {}).get("verdict")
        diagnostic["reason"] = (result.summary.get("verdict") or {}).get("reason")
    models.release()

    eos = models.eos_ids
    document = {"schema_version": SCHEMA, "fingerprint": fingerprint_of(inputs), "inputs": inputs,
                "num_layers": layers, "prompts": {"count": len(items), "ids": [p.id for p in items]},
                "boundaries": {}, "diagnostic": diagnostic, "warnings": list(models.warnings)}
    validators = {i: p.validator for i, p in enumerate(items) if p.validator is not None}
    for b, outputs in outputs_by_boundary.items():
        reference = outputs[("tuned", "tuned")]
        block = {"chimeras": {}}
        for early, late in CHIMERAS:
            rows = []
            for i, out_ids in enumerate(outputs[(early, late)]):
                body = out_ids[:-1] if out_ids and out_ids[-1] in eos else out_ids
                text = tokenizer.decode(body, skip_special_tokens=True)
                departs = _first_departure(out_ids, reference[i])
                row = {"prompt": items[i].id, "text": text, "tokens": len(body), "departs_from_tuned": departs,
                       "ended": bool(out_ids and out_ids[-1] in eos)}
                if i in validators:
                    row["valid"] = bool(validators[i].check(text))  # pyright: ignore[reportAttributeAccessIssue] - a Validator
                if departs is not None:
                    row["before"] = tokenizer.decode(body[:departs], skip_special_tokens=True)
                    row["marked"] = tokenizer.decode(body[departs:departs + 1], skip_special_tokens=True)
                    row["after"] = tokenizer.decode(body[departs + 1:], skip_special_tokens=True)
                rows.append(row)
            judged = [r["valid"] for r in rows if "valid" in r]
            same = [r["departs_from_tuned"] is None for r in rows]
            departures = [r["departs_from_tuned"] for r in rows if r["departs_from_tuned"] is not None]
            block["chimeras"][chimera_name(early, late)] = {
                "early": early, "late": late, "outputs": rows,
                "validator_pass_rate": (sum(judged) / len(judged)) if judged else None, "validated": len(judged),
                "same_as_tuned": sum(same) / len(same) if same else None,
                "median_departure": sorted(departures)[len(departures) // 2] if departures else None}
        document["boundaries"][str(b)] = block
    if out is not None:
        write_splice(out, document)
    return SpliceResult(document, Path(out) if out is not None else None)


def _resolve(boundaries, num_layers: int, checked_against=()) -> list[int]:
    from ..models.anatomy import check_boundaries_supported
    from ..runner.pipeline import RunConfig, resolve_boundaries

    chosen = resolve_boundaries(RunConfig(boundaries=boundaries if boundaries == "all" else list(boundaries)), num_layers)
    for config in checked_against:  # the diagnostic's late stacks (a chimera runs at any layer, as a merge would)
        check_boundaries_supported(config, chosen, "; or give --no-diagnostic (run_diagnostic=False): chimeras run there")
    return chosen


def _precheck_layers(base: str, boundaries) -> None:
    """Boundaries against the layer count a local (or whole cached) config.json gives, before any
    model loads."""
    from ..models.cached import checkable
    from ..models.config_dicts import local_config, text_config

    layers = text_config(local_config(checkable(base))).get("num_hidden_layers")  # {}: a hub id not cached
    if isinstance(layers, int):
        _resolve(boundaries, layers)


def _ci(value: dict | None) -> str:
    """``+m.mm [+l.ll, +h.hh]`` of an effect ``{"mean", "ci"}`` as the reports print it; "—" where it
    has no mean (no event)."""
    from ..report.markdown import fmt_value

    return "—" if not value or value.get("mean") is None else fmt_value(value)


def splice_sections(document: dict) -> list[Section]:
    from .output import warnings_sections

    sections = warnings_sections(document)
    diagnostic = document.get("diagnostic") or {}
    for b, block in document["boundaries"].items():
        rows = []
        for name, chimera in block["chimeras"].items():
            rate = chimera["validator_pass_rate"]
            rows.append([name, "—" if rate is None else f"{rate:.0%} of {chimera['validated']}",
                         f"{chimera['same_as_tuned']:.0%}",  # (a departure at the first generated token is 0)
                         "—" if chimera["median_departure"] is None else str(chimera["median_departure"])])
        paragraphs = [f"Static chimeras at boundary layer {b} of {document['num_layers']}: early = embeddings and "
                      f"layers 0..{int(b) - 1}, late = layers {b}..{document['num_layers'] - 1}, final norm and head."]
        effects = diagnostic.get(str(b))
        if effects and not effects["n_events"]:
            why = diagnostic.get("verdict") or "no verdict"
            why += f" — {diagnostic['reason']}" if diagnostic.get("reason") else "."
            paragraphs.append(f"Cross-patching at this boundary found no scorable first-divergence event: {why}")
        elif effects:
            paragraphs.append(f"Cross-patching at this boundary ({effects['n_events']} first-divergence events, "
                              f"common-IT readout): E_PT {_ci(effects.get('E_PT'))}, E_IT {_ci(effects.get('E_IT'))}, "
                              f"interaction {_ci(effects.get('interaction'))}.")
        sections.append(Section(f"Boundary {b}", paragraphs,
                                [Table(["chimera", "validator pass rate", "same as tuned", "median first departure"],
                                       rows)]))
    return sections


def splice_columns(document: dict, limit: int = 50) -> list[dict]:
    """Per boundary: per prompt, the four continuations side by side, each departure from the
    tuned model's own continuation marked."""
    blocks = []
    for b, block in document["boundaries"].items():
        names = list(block["chimeras"])
        rows = []
        for i, prompt in enumerate(document["prompts"]["ids"][:limit]):
            row = [{"before": prompt, "mark": "", "after": ""}]
            for name in names:
                r = block["chimeras"][name]["outputs"][i]
                verdict = "" if "valid" not in r else (" [valid]" if r["valid"] else " [invalid]")
                if r["departs_from_tuned"] is None:
                    row.append({"before": r["text"], "mark": "", "after": verdict})
                else:
                    row.append({"before": r["before"], "mark": r["marked"] or "⏎", "after": r["after"] + verdict})
            rows.append(row)
        blocks.append({"title": f"Continuations at boundary {b} (marked: first token that differs from the tuned "
                                "model's own continuation)", "header": ["prompt"] + names, "rows": rows})
    return blocks


def write_splice(out: str | Path, document: dict) -> None:
    from .output import write_outputs

    inputs = document["inputs"]
    descendant = inputs["tuned"] or f"adapter {inputs['adapter']}"
    verdict = (document.get("diagnostic") or {}).get("verdict")
    intro = [f"Base {inputs['base']}, descendant {descendant}; {document['prompts']['count']} prompts, "
             f"{inputs['max_new_tokens']} new tokens, {inputs['dtype']}."
             + (f" Diagnostic verdict at the headline boundary: {verdict}." if verdict else "")]
    write_outputs(out, KIND, document, "crosspatch splice", intro, splice_sections(document), splice_columns(document))
