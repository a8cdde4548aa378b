"""Opening a model set: from checkpoints and adapters on disk or the Hub (:func:`load_models`,
:func:`load_pair`: every check before the weights load, the residency chosen with its reason, the
real vocabulary built), or from modules already in memory (:func:`models_from_modules`,
:func:`pair_from_models`, :func:`pair_from_peft_model`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ModelLoadError
from ..models.adapters import adapter_settings, changes_base_in_place, method_conflict, vocabulary_conflict
from ..models.cached import checkable, revision_snapshot
from ..models.checks import check_readout, check_special_tokens, compare_facts, inert_adapter, model_facts
from ..models.forward import ModelHandle
from ..models.kinship import identical_weights_warning, unrelated_weights_warning
from ..models.loading import (
    DTYPES,
    LoadOptions,
    eos_token_ids,
    is_local,
    load_causal_lm,
    load_tokenizer,
    no_eos_warning,
    provenance,
    resolve_dtype,
    validate_load_options,
)
from ..models.paths import looks_local, weight_files
from ..models.preload import check_checkpoints
from ..models.vocab import RealVocabulary, build_real_vocabulary
from .adapters import _load_adapters, descendant_tokenizer
from .modelset import RESIDENCIES, ModelSet, ReadoutHead, ResidentSet, SequentialSet
from .roles import BASE, descendant_roles, model_path_arg


# -- loading ----------------------------------------------------------------------------------
def _weights_bytes(path: str, revision: str | None = None) -> int | None:
    """The bytes of a checkpoint's weight files: a local directory's, or a hub id's whole snapshot
    in the local cache (:func:`~crosspatch.models.cached.checkable`); None where unknown. Where a
    directory holds safetensors and pickle copies both, the safetensors (what transformers loads)."""
    path = checkable(path, revision)
    if not is_local(path):
        return None
    files = weight_files(path)
    loaded = [f for f in files if f.suffix == ".safetensors"] or files
    return sum(f.stat().st_size for f in loaded) or None


def _available_bytes(options: LoadOptions) -> int | None:
    """Free memory where the models will load: the GPU ``cuda:N`` names (``cuda`` and ``auto``: the
    current one), every GPU together under ``map`` (accelerate's device map spreads the models over
    them), else the machine's available RAM."""
    device = str(options.device).strip().lower()
    if torch.cuda.is_available() and device == "map":
        free = [free_bytes_on(torch.device("cuda", index)) for index in range(torch.cuda.device_count())]
        return sum(f for f in free if f is not None) or None
    if torch.cuda.is_available() and (device.startswith("cuda") or device == "auto"):
        return free_bytes_on(torch.device(device if device.startswith("cuda:") else "cuda"))  # (not GPU 0's for cuda:3)
    return free_bytes_on(torch.device("cpu"))


def free_bytes_on(device: torch.device) -> int | None:
    """Free memory of ``device`` (a GPU's, or the machine's available RAM), None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_residency(base: str, tuned: str | list[str] | None, adapter: str | list[str] | None,
                     options: LoadOptions) -> tuple[str, str]:
    """The residency to use and why: ``adapter`` for PEFT adapters (one copy of the base weights
    serves every role), unless an adapter changes the base's weights as it loads
    (:func:`~crosspatch.models.adapters.changes_base_in_place`: then the base needs a copy of its
    own) or several adapters were trained with vocabularies of different sizes
    (:func:`~crosspatch.models.adapters.vocabulary_conflict`) or with different PEFT methods
    (:func:`~crosspatch.models.adapters.method_conflict`): each then loads on its own;
    otherwise ``both`` when all models fit in the free memory of the target device with 20%
    headroom, else ``sequential`` (one model at a time). ``both`` with adapters only holds two
    copies: the base's, and one that the adapters share."""
    tuned = [tuned] if isinstance(tuned, str) else list(tuned or [])
    adapter = [adapter] if isinstance(adapter, str) else list(adapter or [])
    if options.residency is not None:
        if options.residency not in RESIDENCIES:
            raise ModelLoadError(f"residency must be one of {', '.join(RESIDENCIES)}, not {options.residency!r}")
        if options.residency == "adapter" and (not adapter or tuned):
            raise ModelLoadError("residency 'adapter' needs --adapter (and no --tuned checkpoints)")
        # adapters that cannot share one copy, asked to: named before the base loads
        if options.residency != "sequential" and (why := vocabulary_conflict(base, adapter) or method_conflict(adapter)):
            raise ModelLoadError(f"{why} cannot share one copy of the base {base} (--residency {options.residency}): "
                                 "run them with --residency sequential (each model loads on its own), or leave the "
                                 "residency to crosspatch")
        return options.residency, "asked for"
    trained = next((why for why in map(changes_base_in_place, adapter) if why), None)
    # one shared copy would give each adapter the others' changes, fit one vocabulary only, or need
    # one PEFT model to hold two methods
    apart = trained or vocabulary_conflict(base, adapter) or method_conflict(adapter)
    if adapter and not tuned and not apart:
        return "adapter", "PEFT adapter: one copy of the base weights serves every model"
    if apart and len(adapter) > 1:
        return "sequential", f"{apart}, so each model loads on its own"
    if adapter:
        tuned = tuned + [base]  # the adapters share one more copy of the base weights
    residency, why = _fitting_residency(base, tuned, options)
    return residency, f"{trained}, so the base loads on its own: {why}" if trained else why


def _fitting_residency(base: str, tuned: list[str], options: LoadOptions) -> tuple[str, str]:
    """``both`` where the base and ``tuned`` fit in the target device's free memory, else ``sequential``."""
    sizes = [_weights_bytes(p, options.revision) for p in [base] + tuned]
    free = _available_bytes(options)
    known = [s for s in sizes if s is not None]
    if len(known) < len(sizes) or free is None:
        return "both", "model sizes or free memory unknown (hub ids not in the local cache); loading all"
    scale = DTYPES[resolve_dtype(options.dtype, options.device)].itemsize / 2  # files are mostly 16-bit
    need = int(sum(known) * max(scale, 1.0) * 1.2)
    if need <= free:
        return "both", f"all {len(sizes)} models (~{need / 2**30:.1f} GiB with headroom) fit in {free / 2**30:.1f} GiB free"
    return "sequential", f"{len(sizes)} models need ~{need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is free"


def _real_vocabulary(tokenizers: dict[str, Any], rows: int, every_head: int | None = None) -> RealVocabulary:
    """The ids every tokenizer shares with the base (and that are not placeholders), over ``rows``
    ids; ids at ``every_head`` and beyond, which some model's head lacks, are not shared either."""
    roles = list(tokenizers)
    base = tokenizers[roles[0]]
    parts = [build_real_vocabulary(base, tokenizers[r], rows) for r in roles[1:]] or \
        [build_real_vocabulary(base, base, rows)]
    if len(parts) == 1 and (every_head is None or not bool(parts[0].mask[every_head:].any())):
        return parts[0]
    mask = parts[0].mask.clone()
    for p in parts[1:]:
        mask &= p.mask
    if every_head is not None:
        mask[every_head:] = False
    counts = {k: v for k, v in parts[0].masked_counts.items() if k != "not_shared"}
    counts["not_shared"] = int(mask.numel() - mask.sum()) - sum(counts.values())
    patterns = sorted({x for p in parts for x in p.patterns_matched})
    return RealVocabulary(mask=mask, masked_counts=counts, patterns_matched=patterns)


def _check_set(roles, tokenizers, facts, options) -> tuple[RealVocabulary, list[str]]:
    warnings: list[str] = []
    base = roles[0]
    for role in roles[1:]:
        names = ("PT", "IT") if len(roles) == 2 else (base, role)
        compare_facts(facts[base], facts[role], names)
        for w in check_special_tokens(tokenizers[base], tokenizers[role],
                                      allow_mismatch=options.allow_special_token_mismatch):
            warnings.append(w if len(roles) == 2 else f"{role}: {w}")
    # every row of every head: a descendant's added tokens (resized embeddings) are ids the base
    # lacks, masked and counted as not shared (one head shorter than the other reads them as
    # absent); an id beyond some head is never real, even where every tokenizer lists it (a base
    # saved with the descendant's tokenizer but not resized)
    heads = [f["lm_head_rows"] for f in facts.values()]
    real = _real_vocabulary(tokenizers, max(heads), min(heads))
    image = facts[base].get("image_token_id")
    if image is not None and image < real.mask.numel() and bool(real.mask[image]):
        real.mask[image] = False  # an image placeholder is never generated text
        real.masked_counts["image_placeholder"] = 1
    return real, warnings


def load_spec(base: str, tuned_roles: dict[str, str], adapter_roles: dict[str, str], options: LoadOptions) -> dict:
    """What reloads a model set, as config.json records it (``load_spec``): the paths by role and
    the load options (residency resolved; weights not hashed again on a reload)."""
    return {"base": reload_path(base), "tuned": {role: reload_path(p) for role, p in tuned_roles.items()} or None,
            "adapters": {role: reload_path(p) for role, p in adapter_roles.items()} or None,
            "options": {**vars(options), "hash_weights": False}}


def reload_path(path: str) -> str:
    """How a load spec names a model: a local directory as an absolute path (a relative one named
    nothing once the analyses after the run, a Ray worker or a resume ran from another directory),
    a hub id (or a model given in memory) as given."""
    local = os.path.expanduser(str(path))
    return os.path.abspath(local) if looks_local(str(path)) and os.path.isdir(local) else path


def load_models(
    base: str,
    tuned: dict[str, str] | list[str] | str | None = None,
    adapters: dict[str, str] | list[str] | str | None = None,
    options: LoadOptions | None = None,
    **overrides,
) -> ModelSet:
    """Load a base and any number of descendants: full or merged checkpoints (``tuned``) and/or
    PEFT adapter directories on ``base`` (``adapters``), each a path, a list of paths (roles
    named after the directories) or a ``{role: path}`` dict. The residency is chosen here (see
    :func:`choose_residency`) and recorded with its reason."""
    options = LoadOptions.with_overrides(options, **overrides)
    validate_load_options(options)  # the Python API gets the CLI's named errors, before any load
    base = model_path_arg(base, "the base")
    tuned_roles, adapter_roles = descendant_roles(tuned, adapters)
    check_checkpoints(base, tuned_roles, list(adapter_roles.values()), options)
    if not tuned_roles and not adapter_roles:
        raise ModelLoadError("give at least one descendant: tuned= (a checkpoint) or adapter= (a PEFT adapter dir)")
    given = {BASE: base, **tuned_roles, **adapter_roles}  # (a reload names them so: REPO@REVISION fetched where it runs)
    spec = load_spec(base, tuned_roles, adapter_roles, options)
    base = revision_snapshot(base)  # REPO@REVISION: that revision's snapshot, read as a local checkpoint from here on
    tuned_roles = {role: revision_snapshot(path) for role, path in tuned_roles.items()}
    adapter_roles = {role: revision_snapshot(path) for role, path in adapter_roles.items()}
    residency, reason = choose_residency(base, list(tuned_roles.values()), list(adapter_roles.values()), options)
    options.residency = residency
    spec["options"]["residency"] = residency
    roles = (BASE,) + tuple(tuned_roles) + tuple(adapter_roles)

    def recorded(role: str, path: str) -> dict:  # (a REPO@REVISION: as given, beside the snapshot read)
        return provenance(path, options) | ({"given": given[role]} if given[role] != path else {})

    record = {"base": recorded(BASE, base), "load_options": vars(options).copy(), "residency_reason": reason,
              "load_spec": spec}
    if len(roles) == 2:  # a pair: the record keeps the familiar single-descendant layout
        (role, path), = ({**tuned_roles, **adapter_roles}).items()
        record["adapter" if adapter_roles else "tuned"] = recorded(role, path)
    else:
        record["descendants"] = {r: recorded(r, p) | ({"kind": "adapter"} if r in adapter_roles else {})
                                 for r, p in {**tuned_roles, **adapter_roles}.items()}
    tokenizers = {BASE: load_tokenizer(base, options)}
    warnings: list[str] = []
    if options.revision and all(looks_local(p) for p in (base, *tuned_roles.values())):
        warnings.append(f"revision {options.revision!r} (--revision) names a Hub revision, and every checkpoint here "
                        "is a local directory, read as it is: the revision selects nothing")
    for role, path in tuned_roles.items():  # a checkpoint as far from the base as an unrelated model's
        name = "the descendant" if len(roles) == 2 else repr(role)
        if (unrelated := unrelated_weights_warning(base, path, name, options.revision)) is not None:
            warnings.append(unrelated)
    several = "descendants" in record
    for role, path in {**tuned_roles, **adapter_roles}.items():  # a descendant that computes exactly the base
        entry = record["descendants"][role] if several else record["adapter" if adapter_roles else "tuned"]
        name = repr(role) if several else "the descendant"
        same = inert_adapter(path, name) if role in adapter_roles else \
            identical_weights_warning(record["base"], entry, name, (base, path), options.revision)
        if same is not None:  # (recorded for gate, which calls such a run unusable)
            entry["computes_the_base"] = same
            warnings.append(same)
    # every tokenizer first, so that special tokens that differ are named before any weight loads
    # (_check_set compares them again, with the models' facts, once they have loaded)
    for role, path in tuned_roles.items():
        tokenizers[role] = descendant_tokenizer(path, options, tokenizers[BASE], warnings)
    for role, path in adapter_roles.items():
        tokenizers[role] = descendant_tokenizer(path, options, tokenizers[BASE], adapter=True)
    for role in roles[1:]:
        check_special_tokens(tokenizers[BASE], tokenizers[role], allow_mismatch=options.allow_special_token_mismatch)

    if residency == "sequential":
        heads, facts, eos = {}, {}, set()
        sequential = SequentialSet(roles, tokenizers, None, set(), {}, "sequential", warnings, record,  # pyright: ignore[reportArgumentType] - the vocabulary is built below
                                   paths={BASE: base, **tuned_roles}, options=options, heads=heads,
                                   adapter_paths=adapter_roles)
        # the first descendant read last: it stays resident, and a run (a compare's first) rolls it out first
        first = roles[1]  # (a set has a descendant: checked above)
        reading_order = [r for r in roles if r != first] + [first]
        try:
            for role in reading_order:
                if role in adapter_roles:
                    record_target = record["adapter"] if "adapter" in record else record["descendants"][role]
                    record_target["settings"], adapter_warnings = adapter_settings(adapter_roles[role], base,
                                                                                   shares_base=False)
                    warnings += adapter_warnings
                handle = sequential.load(role)  # (the next one frees it; the last one stays resident)
                check_readout(handle)
                heads[role], facts[role] = ReadoutHead(handle, heads.values()), model_facts(handle)
                eos |= eos_token_ids(tokenizers[role], handle.anatomy.model)
                del handle
            for table in (heads, facts):  # in the set's order of roles again
                ordered = {r: table[r] for r in roles}
                table.clear()
                table.update(ordered)
            real, checks = _check_set(roles, tokenizers, facts, options)
            record_snapshots(record, options.revision)
        except BaseException:
            sequential.release()  # a set that is not returned keeps no model
            raise
        sequential.real_vocab, sequential.eos_ids, sequential.facts = real, eos, facts
        sequential.warnings = warnings + checks + no_eos_warning(eos)
        return sequential

    handles: dict[str, ModelHandle] = {}
    if residency == "adapter":  # every role on one copy of the base weights
        model = _load_adapters(load_causal_lm(base, options, warnings), base, adapter_roles, options, tokenizers,
                               record, warnings, shares_base=True)
        handles[BASE] = ModelHandle(BASE, model, adapter_enabled=False)
        for role in adapter_roles:
            handles[role] = ModelHandle(role, model, adapter_enabled=True, adapter_name=role)
    else:
        handles[BASE] = ModelHandle(BASE, load_causal_lm(base, options, warnings))
        for role, path in tuned_roles.items():
            handles[role] = ModelHandle(role, load_causal_lm(path, options, warnings))
        if adapter_roles:  # checkpoints and adapters together: the adapters share one more copy of the base
            model = _load_adapters(load_causal_lm(base, options, warnings), base, adapter_roles, options, tokenizers,
                                   record, warnings)
            for role in adapter_roles:
                handles[role] = ModelHandle(role, model, adapter_enabled=True, adapter_name=role)
    record_snapshots(record, options.revision)
    return assemble_set(handles, tokenizers, residency, options, warnings, record)


def record_snapshots(record: dict, revision: str | None) -> None:
    """Each hub model of a load ``record`` (its provenance entries that are not local) gets the
    ``snapshot`` (commit) it was read from, once loaded (a first run downloads it while loading)."""
    from ..models.paths import hub_snapshot

    entries = [(key, record[key]) for key in ("base", "tuned", "adapter") if isinstance(record.get(key), dict)]
    entries += [(entry.get("kind", "tuned"), entry) for entry in (record.get("descendants") or {}).values()]
    for kind, entry in entries:
        if not entry.get("local"):
            if kind == "adapter":  # PEFT loads an adapter at its main revision (--revision is the checkpoints')
                entry["snapshot"] = hub_snapshot(entry["path"], None, "adapter_config.json")
            else:
                entry["snapshot"] = hub_snapshot(entry["path"], revision, "config.json")


def load_pair(base: str, tuned: str | None = None, adapter: str | None = None,
              options: LoadOptions | None = None, **overrides) -> ModelSet:
    """Load a base and one descendant: ``tuned`` (full or merged checkpoint) or ``adapter``
    (a PEFT adapter directory on ``base``). Roles: ``base`` and ``tuned``."""
    if (tuned is None) == (adapter is None):
        raise ModelLoadError("give exactly one of tuned= (a checkpoint) or adapter= (a PEFT adapter dir)")
    return load_models(base, tuned={"tuned": tuned} if tuned is not None else None,
                       adapters={"tuned": adapter} if adapter is not None else None, options=options, **overrides)


def assemble_set(handles: dict[str, ModelHandle], tokenizers: dict[str, Any], residency: str,
                 options: LoadOptions, warnings: list[str], record: dict) -> ResidentSet:
    """Check compatibility and build the real vocabulary of already-loaded handles."""
    roles = tuple(handles)
    for handle in handles.values():
        check_readout(handle)
    facts = {r: model_facts(h) for r, h in handles.items()}
    real, checks = _check_set(roles, tokenizers, facts, options)
    eos: set[int] = set()
    for role, h in handles.items():
        eos |= eos_token_ids(tokenizers[role], h.anatomy.model)
    models = ResidentSet(roles, tokenizers, real, eos, facts, residency, list(warnings) + checks + no_eos_warning(eos),
                         record, handles=handles)
    for handle in handles.values():
        models.attach_media(handle)
    return models

