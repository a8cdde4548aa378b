"""``crosspatch merge-check config.yml``: evaluate a mergekit configuration before (or instead of)
building it. Needs the ``[merge]`` extra (mergekit, the library its users merge with).

- A ``passthrough`` merge of ``slices`` that keep every layer at its own index and switch from one
  model to another once (layers ``0..b-1`` from one model, ``b..L-1`` from the other; mergekit
  takes the embeddings from the first slice's model and the final norm and head from the last
  slice's, as the chimeras here do) is a layer splice: it is evaluated as ``crosspatch splice``
  at ``b`` — the four chimeras, of which one is this configuration, with the cross-patching
  numbers there — and the report says which boundary state the fine-tuned layers would receive.
- A weight merge (``linear``, ``ties``, ``dare_ties``, ``slerp``, ``task_arithmetic``, ... any
  method mergekit runs over whole models, given as ``models`` or as ``slices`` that merge each
  layer with the same layer of every model, as SLERP configurations usually are) is built with
  mergekit into a temporary directory,
  then preflighted against the base (does the merge change the model, does it still generate
  sensibly) and diagnosed: the 2x2 of base vs the merge beside base vs each parent.

A configuration that is neither (layers repeated or reordered, more than one switch, more than
one source per slice, a layer count other than the models') is an
:class:`UnsupportedMergeConfigError` naming what crosspatch cannot evaluate, before any model loads.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError, UnsupportedMergeConfigError
from ..inputs.prompts import prompts_label
from ..inputs.text import read_text
from ..models.options import plain_scalar
from ..models.own_forward import without_autocast
from ..store import check_out_path
from .merge_result import MergeCheckResult, merge_check_sections

KIND = "merge-check"
SCHEMA = "crosspatch.merge-check/1"


__all__ = ["MergeCheckResult", "UnsupportedMergeConfigError", "merge_check", "read_merge_config", "splice_plan"]


def _mergekit():
    try:
        import mergekit.config  # noqa: F401
        import mergekit.merge  # noqa: F401
    except ImportError as exc:
        raise UnsupportedMergeConfigError(f"merge-check needs mergekit: pip install 'crosspatch[merge]' ({exc})") from None


def read_merge_config(path: str | Path):
    """The configuration as mergekit validates it (a :class:`UnsupportedMergeConfigError` for a
    file mergekit refuses, however its validators refuse it: some raise a plain ``RuntimeError``
    or ``ValueError`` rather than pydantic's ``ValidationError``)."""
    _mergekit()
    import yaml
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    from ..runner.config import strict_yaml_load

    path = Path(path).expanduser()
    if not path.is_file():
        raise UnsupportedMergeConfigError(f"{path}: no such mergekit configuration file")
    try:
        data = strict_yaml_load(read_text(path))
        config = MergeConfiguration.model_validate(data)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValidationError, TypeError, ValueError, RuntimeError) as exc:
        text = " ".join(str(exc).split())[:400]
        raise UnsupportedMergeConfigError(f"{path} is not a mergekit configuration mergekit accepts: {text}") from None
    _check_merge_method(path, config.merge_method)
    return config


def _check_merge_method(path: Path, method: str) -> None:
    """A merge method mergekit does not implement is named with the configuration, before any other
    check (its validation accepts any string there; the build would refuse it only after loading)."""
    import mergekit.merge_methods as methods

    get, registered = getattr(methods, "get", None), getattr(methods, "registered_methods", None)
    if get is None:  # a mergekit without this registry: its build names the method
        return
    try:
        get(method)
    except Exception:  # mergekit 0.1.5 raises RuntimeError ("Unimplemented merge method")
        known = sorted(filter(None, map(_method_name, list(registered())))) if callable(registered) else []  # pyright: ignore[reportArgumentType] - mergekit's tuple of methods
        raise UnsupportedMergeConfigError(f"{path}: merge_method {method!r} is not one mergekit implements"
                                          + (f" (it knows {', '.join(known)})" if known else "")) from None


def _method_name(method) -> str | None:
    """A registered mergekit method's name, however its class spells it (a spec, a method or a field)."""
    spec = getattr(method, "spec", None)
    name = getattr(spec, "name", None) if spec is not None else None
    if name is None:
        name = getattr(method, "name", None) or getattr(method, "method_name", None)
    if callable(name):
        name = name()
    return name if isinstance(name, str) else None


def _path(reference) -> str:
    if reference.lora is not None:
        raise UnsupportedMergeConfigError(f"{reference}: a model+LoRA reference; merge the adapter first or give the "
                                          "adapter to crosspatch preflight/splice directly")
    return str(reference.model.path)


def _check_named_model(path: str) -> None:
    """A model the configuration names is a checkpoint mergekit can read (``check_model_path``);
    a PEFT adapter directory is named with what to do instead (merge-check has no --adapter)."""
    from ..errors import AdapterGivenAsCheckpointError
    from ..models.paths import check_model_path

    try:
        check_model_path(path, "the configuration's model")
    except AdapterGivenAsCheckpointError:
        raise AdapterGivenAsCheckpointError(
            f"the configuration's model {path} is a PEFT adapter directory (adapter_config.json, no config.json): "
            "mergekit merges whole checkpoints. Merge the adapter into its base first (PEFT's merge_and_unload, then "
            "save_pretrained) and name that directory, or check the adapter itself with crosspatch preflight "
            "--adapter") from None


@dataclass
class SplicePlan:
    """A passthrough configuration read as one switch at ``boundary``: early layers from
    ``early``, late layers (and the head) from ``late``."""

    early: str
    late: str
    boundary: int
    num_layers: int


def splice_plan(config) -> SplicePlan:
    """The single-switch layer splice a passthrough ``slices`` configuration describes."""
    if config.modules:
        raise UnsupportedMergeConfigError("configurations with 'modules' (multi-module models) are not evaluated")
    segments: list[tuple[str, int, int]] = []
    for number, out_slice in enumerate(config.slices, 1):
        if len(out_slice.sources) != 1:
            raise UnsupportedMergeConfigError(f"slice {number} has {len(out_slice.sources)} sources: a passthrough "
                                              "splice takes each layer from one model")
        source = out_slice.sources[0]
        start, stop = source.layer_range
        segments.append((_path(source.model), int(start), int(stop)))
    position = 0
    for model, start, stop in segments:
        if start != position or stop <= start:
            raise UnsupportedMergeConfigError(
                f"layers {start}..{stop - 1} of {model} would sit at output position {position}: repeated or reordered "
                "layers (a 'frankenmerge') are not a splice of two models at one boundary, which is what crosspatch "
                "evaluates")
        position = stop
    merged: list[list] = []
    for model, start, stop in segments:  # adjacent slices of one model are one segment
        if merged and merged[-1][0] == model:
            merged[-1][2] = stop
        else:
            merged.append([model, start, stop])
    _check_depth(merged[0][0], position, "splices")
    if len(merged) == 1:
        raise UnsupportedMergeConfigError(f"every layer comes from {merged[0][0]}: there is no splice to evaluate")
    if len(merged) > 2:
        raise UnsupportedMergeConfigError(
            f"the slices switch models {len(merged) - 1} times ({', '.join(f'{m}[{a}:{b}]' for m, a, b in merged)}); "
            "crosspatch evaluates one switch (early layers from one model, late layers from another)")
    (early, _, boundary), (late, _, _) = merged[0], merged[1]
    return SplicePlan(early, late, boundary, position)


@without_autocast()  # whatever a caller computes in: its autocast would move the weights' sums
def merge_check(config_path: str | Path, prompts, base: str | None = None, out: str | Path | None = None,
                max_new_tokens: int = 32, options=None, progress=None) -> MergeCheckResult:
    """Evaluate a mergekit configuration (see the module docstring); returns the document
    written as ``merge-check.json`` (with ``.md``/``.html``) into ``out``, as a
    :class:`~crosspatch.workflows.merge_result.MergeCheckResult` (a dict, shown in a notebook as
    its page)."""
    from ..execution.roles import model_path_arg
    from ..models.loading import LoadOptions, validate_load_options
    from .output import fingerprint_of, finished_document, progress_function

    options = LoadOptions.with_overrides(options)  # a copy: the caller's object is never changed
    validate_load_options(options)
    if out is not None:
        check_out_path(out)
    if not isinstance(config_path, (str, Path)) or not str(config_path).strip():
        raise OptionError(f"the mergekit configuration must be a file path, not {config_path!r}")
    if base is not None:
        base = model_path_arg(base, "--base")
    max_new_tokens = plain_scalar(max_new_tokens)  # (a numpy integer too)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    config = read_merge_config(config_path)
    say = progress_function(progress)
    method = config.merge_method
    if prompts is None:
        raise OptionError("merge-check needs --prompts")
    inputs = {"config": read_text(config_path), "prompts": prompts_label(prompts), "base": base,
              "max_new_tokens": max_new_tokens, "dtype": options.dtype}
    if method == "passthrough":
        if not config.slices:
            raise UnsupportedMergeConfigError("a passthrough configuration without slices copies one model: nothing "
                                              "to evaluate")
        plan = splice_plan(config)
        base = base or (_path(config.base_model) if config.base_model else plan.early)
        if base not in (plan.early, plan.late):
            raise UnsupportedMergeConfigError(f"--base {base} is neither model of the splice ({plan.early}, {plan.late})")
        tuned = plan.late if base == plan.early else plan.early
        for path in (plan.early, plan.late):
            _check_named_model(path)
        stored = finished_document(out, KIND, inputs, own_entries=("splice",))
        if stored is not None:
            return MergeCheckResult(stored, out)
        from .splice import chimera_name, splice

        say(f"passthrough splice at layer {plan.boundary}: {plan.early} below, {plan.late} above")
        result = splice(base, tuned=tuned, prompts=prompts, boundaries=[plan.boundary], max_new_tokens=max_new_tokens,
                        options=options, out=Path(out) / "splice" if out is not None else None, progress=progress)
        sides = {plan.early: "base" if plan.early == base else "tuned", plan.late: "base" if plan.late == base else "tuned"}
        this = chimera_name(sides[plan.early], sides[plan.late])
        chimera = result.document["boundaries"][str(plan.boundary)]["chimeras"][this]
        receives = (f"the {sides[plan.late]} model's layers {plan.boundary}..{plan.num_layers - 1} would receive the "
                    f"{sides[plan.early]} model's upstream state at layer {plan.boundary}")
        document = {"schema_version": SCHEMA, "fingerprint": fingerprint_of(inputs), "inputs": inputs, "method": method,
                    "kind": "splice", "plan": vars(plan), "base": base, "this_chimera": this, "receives": receives,
                    "validator_pass_rate": chimera["validator_pass_rate"], "same_as_tuned": chimera["same_as_tuned"],
                    "diagnostic": (result.document.get("diagnostic") or {}).get(str(plan.boundary)),
                    "verdict": (result.document.get("diagnostic") or {}).get("verdict")}
        write_merge_check(out, document)
        return MergeCheckResult(document, out)
    return _weight_merge(config, config_path, prompts, base, out, max_new_tokens, options, inputs, say)


def _weight_merge(config, config_path, prompts, base, out, max_new_tokens, options, inputs, say) -> MergeCheckResult:
    import crosspatch

    from ..execution import load_models
    from ..execution.roles import BASE, _unique_name, role_name_of
    from ..runner.summary import effects_at
    from .output import fingerprint_of, finished_document
    from .preflight import preflight

    if config.modules:
        raise UnsupportedMergeConfigError("configurations with 'modules' (multi-module models) are not evaluated")
    parents = _slice_models(config) if config.slices else [_path(m.model) for m in (config.models or [])]
    base = base or (_path(config.base_model) if config.base_model else None)
    if base is None:
        raise OptionError(f"a {config.merge_method} merge names no base_model: give --base (the model the parents were "
                          "fine-tuned from)")
    for path in [base, *parents]:
        _check_named_model(path)
    stored = finished_document(out, KIND, inputs, own_entries=("runs",))
    if stored is not None:
        return MergeCheckResult(stored, out)
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    workdir = Path(tempfile.mkdtemp(prefix="crosspatch-merge-"))
    try:
        merged = workdir / "merged"
        say(f"building the {config.merge_method} merge with mergekit")
        try:
            run_merge(config, str(merged), MergeOptions(quiet=True, copy_tokenizer=True, write_model_card=False,
                                                        trust_remote_code=options.trust_remote_code))
        except Exception as exc:  # mergekit raises many types for configurations it cannot build
            text = " ".join(str(exc).split())[:400]
            raise UnsupportedMergeConfigError(f"mergekit could not build the merge: {type(exc).__name__}: {text}") from None
        say("preflight of the merge against the base")
        checks = preflight(base, merged=str(merged), prompts=prompts, max_new_tokens=max_new_tokens, options=options)
        say("the diagnostic of the merge and of each parent against the base")
        roles = {"merge": str(merged)}
        for parent in parents:  # (two parents in directories of one name, or one called "merge", each keep a role)
            if parent != base:
                roles[_unique_name(role_name_of(parent), {*roles, BASE})] = parent
        models = load_models(base, tuned=roles, options=options)
        diagnostic = {}
        for role in roles:
            result = crosspatch.run(models, prompts, tuned=role, max_new_tokens=max_new_tokens, progress=False,
                                    out=Path(out) / "runs" / role if out is not None else None)
            headline = (result.summary.get("verdict") or {}).get("boundary")
            diagnostic[role] = {**(effects_at(result.summary, headline) or {}), "boundary": headline,
                                "verdict": (result.summary.get("verdict") or {}).get("verdict"),
                                "model": None if role == "merge" else roles[role]}
        models.release()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    document = {"schema_version": SCHEMA, "fingerprint": fingerprint_of(inputs), "inputs": inputs,
                "method": config.merge_method, "kind": "weights", "base": base, "parents": parents,
                "preflight": {"passed": checks.passed, "checks": [{k: c[k] for k in ("name", "status", "summary")}
                                                                  for c in checks.document["checks"]]},
                "diagnostic": diagnostic}
    write_merge_check(out, document)
    return MergeCheckResult(document, out)


def _slice_models(config) -> list[str]:
    """The models of a weight merge written as ``slices`` (mergekit's usual form for SLERP: each
    slice merges one layer range of every source), in the order named, when the slices merge
    each layer with the same layer of every model and keep the models' depth, as a merge of
    whole models does; anything else is an :class:`UnsupportedMergeConfigError`, before loading."""
    models: list[str] = []
    position = 0
    for number, out_slice in enumerate(config.slices, 1):
        ranges = sorted({(int(s.layer_range[0]), int(s.layer_range[1])) for s in out_slice.sources})
        if len(ranges) != 1:
            raise UnsupportedMergeConfigError(
                f"slice {number} merges layers {' with '.join(f'{a}..{b - 1}' for a, b in ranges)}: crosspatch evaluates "
                "weight merges that merge each layer with the same layer of every model")
        (start, stop), = ranges
        if start != position or stop <= start:
            raise UnsupportedMergeConfigError(
                f"slice {number} puts layers {start}..{stop - 1} at output position {position}: repeated or reordered "
                "layers are not a weight merge of whole models, which is what crosspatch evaluates")
        position = stop
        for source in out_slice.sources:
            if (path := _path(source.model)) not in models:
                models.append(path)
    if models:
        _check_depth(models[0], position, "merges")
    return models


def _check_depth(model: str, position: int, what: str) -> None:
    """Slices that give ``position`` layers keep the depth of ``model`` (its config read before
    loading: a local directory or a cached hub id's snapshot), else an :class:`UnsupportedMergeConfigError`."""
    from ..models.cached import checkable
    from ..models.config_dicts import local_config, text_config

    layers = text_config(local_config(checkable(model))).get("num_hidden_layers")
    if isinstance(layers, int) and position != layers:
        raise UnsupportedMergeConfigError(f"the slices give {position} layers, the models have {layers}: crosspatch "
                                          f"evaluates {what} that keep the depth")


def write_merge_check(out, document: dict) -> None:
    """merge-check.json, .md and .html into ``out`` (nothing without one)."""
    if out is None:
        return
    from .output import write_outputs

    write_outputs(out, KIND, document, "crosspatch merge-check", [f"mergekit merge_method: {document['method']}"],
                  merge_check_sections(document))
