"""A set of named models (roles) and where they live: the residency strategies.

A :class:`ModelSet` holds a base and any number of descendants or training stages under role
names (``base``, ``tuned``, ``sft``, ...). They share one tokenizer vocabulary and one real
vocabulary. *Residency* decides what is in memory:

- ``both``: every model is loaded once and stays resident;
- ``adapter``: one copy of the base weights with one PEFT adapter per descendant; a role is
  computed by switching adapters (the base with adapters disabled);
- ``sequential``: at most one model in memory at a time, loaded on demand; every role's final
  norm + ``lm_head`` stay resident as small copies so any state can be read out with any head.

Analyses never look at the residency: they ask the executor for passes, and the executor asks
:meth:`ModelSet.use` for the model of a role.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import re
import warnings as warnings_module
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from ..errors import ModelLoadError, OptionError, PromptImageError
from ..models.anatomy import Anatomy
from ..models.checks import check_special_tokens, compare_facts, model_facts
from ..models.execution import ModelHandle
from ..models.loading import (
    DTYPES, LoadOptions, adapter_settings, check_adapter_files, check_custom_code, eos_token_ids, is_local, load_causal_lm, load_processor, load_tokenizer,
    pad_token_id, provenance, quiet_loading, resolve_dtype, validate_load_options, weight_files,
)
from ..models.media import MediaRegistry, install_media_hook
from ..models.paths import check_model_path
from ..models.vocab import RealVocabulary, build_real_vocabulary

BASE = "base"
RESIDENCIES = ("both", "sequential", "adapter")


class ReadoutHead:
    """A resident copy of one model's final norm + lm_head (+ final logit processing), so that
    states can be read out while the model itself is not in memory. A head equal, weight for
    weight, to one of ``others`` (a descendant whose fine-tune left the head alone, as most LoRA
    adapters do) shares that head's modules instead of holding a second copy."""

    def __init__(self, handle: ModelHandle, others: Iterable[ReadoutHead] = ()) -> None:
        a = handle.anatomy
        self.role = handle.role
        twin = next((h for h in others if h.equals(a)), None)
        final_norm, lm_head = (twin.anatomy.final_norm, twin.anatomy.lm_head) if twin is not None else (
            copy.deepcopy(a.final_norm), copy.deepcopy(a.lm_head))
        self.anatomy = Anatomy(
            model=None, backbone=None, layers=nn.ModuleList(), final_norm=final_norm, lm_head=lm_head,
            logit_softcap=a.logit_softcap, logit_scale=a.logit_scale, logit_divisor=a.logit_divisor,
        )

    def equals(self, anatomy: Anatomy) -> bool:
        """Whether ``anatomy``'s final norm, lm_head and logit processing are exactly this head's."""
        mine = self.anatomy
        if (type(mine.final_norm), type(mine.lm_head)) != (type(anatomy.final_norm), type(anatomy.lm_head)) or (
                (mine.logit_softcap, mine.logit_scale, mine.logit_divisor)
                != (anatomy.logit_softcap, anatomy.logit_scale, anatomy.logit_divisor)):
            return False
        for ours, theirs in ((mine.final_norm, anatomy.final_norm), (mine.lm_head, anatomy.lm_head)):
            a, b = ours.state_dict(), theirs.state_dict()
            if a.keys() != b.keys() or any(a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
                                           or not torch.equal(a[k], b[k].to(a[k].device)) for k in a):
                return False
        return True

    def active(self):
        return contextlib.nullcontext()


@dataclass
class ModelSet:
    """Named models sharing one vocabulary. ``roles[0]`` is the base; a two-role set is a
    *pair* (``pt``/``it`` name its base and descendant handles in the method's terms)."""

    roles: tuple[str, ...]
    tokenizers: dict[str, object]
    real_vocab: RealVocabulary
    eos_ids: set[int]
    facts: dict[str, dict]
    residency: str = "both"
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    processors: dict[str, object] = field(default_factory=dict)  # vision-language roles' processors
    media: MediaRegistry = field(default_factory=MediaRegistry)  # this run's image prompts

    # -- images (vision-language models) ----------------------------------------------------
    @property
    def image_token_id(self) -> int | None:
        """The base's image placeholder token, or None for a text-only set."""
        return self.facts[self.base].get("image_token_id")

    def processor(self, role: str):
        """``role``'s multimodal processor (loaded from its directory, an adapter's from the base's
        unless it has its own)."""
        if role not in self.processors:
            spec = self.provenance.get("load_spec") or {}
            path = {**(spec.get("tuned") or {}), **(spec.get("adapters") or {})}.get(role, spec.get("base"))
            if path is None:
                raise PromptImageError(f"no processor for {role!r}: give models_from_modules(processors=...)")
            if role in (spec.get("adapters") or {}) and not (Path(path) / "preprocessor_config.json").exists():
                path = spec["base"]
            self.processors[role] = load_processor(path, LoadOptions(**{
                k: v for k, v in (spec.get("options") or {}).items() if k in LoadOptions.__dataclass_fields__}))
        return self.processors[role]

    def attach_media(self, handle: ModelHandle) -> None:
        """Let full passes of a vision-language ``handle`` find their prompts' images."""
        token = handle.anatomy.image_token_id
        if token is not None and not getattr(handle.anatomy.backbone, "_crosspatch_media", False):
            install_media_hook(handle.anatomy.backbone, token, self.media)
            handle.anatomy.backbone._crosspatch_media = True

    # -- the residency contract ----------------------------------------------------------
    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[ModelHandle]:
        """The model of ``role``, in memory for the duration of the context."""
        raise NotImplementedError

    def can_hold(self, roles) -> bool:
        """Whether the models of all ``roles`` can be in use at the same time."""
        return True

    def head(self, role: str):
        """Something :func:`~crosspatch.models.execution.readout` accepts for ``role``'s head."""
        raise NotImplementedError

    @property
    def state_device(self) -> str | None:
        """Where states that outlive a pass are kept (None: where they were computed)."""
        return None

    @property
    def resident_role(self) -> str | None:
        """The role whose model is in memory now, when only one can be (else None)."""
        return None

    def release(self) -> None:
        """Free whatever this set loaded on demand."""

    def load_spec(self) -> dict:
        """What another process needs to load the same set (Ray workers)."""
        spec = self.provenance.get("load_spec")
        if spec is None:
            from ..errors import CrosspatchError

            raise CrosspatchError("this engine needs models loaded from paths (load_pair/load_models), "
                                  "not in-memory models")
        return spec

    # -- shared facts -----------------------------------------------------------------------
    @property
    def base(self) -> str:
        return self.roles[0]

    @property
    def descendants(self) -> tuple[str, ...]:
        return self.roles[1:]

    @property
    def num_layers(self) -> int:
        return self.facts[self.base]["num_layers"]

    @property
    def hidden_size(self) -> int:
        return self.facts[self.base]["hidden_size"]

    @property
    def tokenizer(self):
        """The tokenizer that decodes token text (the first descendant's, else the base's)."""
        return self.tokenizers[self.roles[1] if len(self.roles) > 1 else self.base]

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)

    # -- the pair view (the method's PT = base, IT = first descendant) -------------------------
    @property
    def tokenizer_pt(self):
        return self.tokenizers[self.base]

    @property
    def tokenizer_it(self):
        return self.tokenizers[self.roles[1]]

    @property
    def pt(self):
        return self.handle(self.base)

    @property
    def it(self):
        return self.handle(self.roles[1])

    def handle(self, role: str):
        """The resident handle of ``role`` (its readout head where models are loaded on demand)."""
        return self.head(role)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(roles={list(self.roles)}, residency={self.residency!r}, "
                f"layers={self.num_layers}, d={self.hidden_size})")


@dataclass(repr=False)
class ResidentSet(ModelSet):
    """Every role's model stays in memory (residency ``both``, or ``adapter`` when the handles
    share one PEFT model)."""

    handles: dict[str, ModelHandle] = field(default_factory=dict)

    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[ModelHandle]:
        yield self.handles[role]

    def head(self, role: str) -> ModelHandle:
        return self.handles[role]


@dataclass(repr=False)
class SequentialSet(ModelSet):
    """At most one model in memory: ``use(role)`` loads it (freeing the previous one) and keeps
    it until another role is asked for, so consecutive passes of one role load it once."""

    paths: dict[str, str] = field(default_factory=dict)
    options: LoadOptions = field(default_factory=LoadOptions)
    heads: dict[str, ReadoutHead] = field(default_factory=dict)
    adapter_paths: dict[str, str] = field(default_factory=dict)  # roles that are a PEFT adapter on the base
    _current: ModelHandle | None = None
    _live: "weakref.WeakSet" = field(default_factory=weakref.WeakSet)
    loads: int = 0  # how many times a model was loaded
    peak_live_models: int = 0  # most models alive at once (weak references: measured, not assumed)

    residency: str = "sequential"

    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[ModelHandle]:
        if self._current is None or self._current.role != role:
            self.release()
            handle = self.load_handle(role)
            self._live.add(handle.module)
            self.loads += 1
            self.peak_live_models = max(self.peak_live_models, len(self._live))
            self._current = handle
        yield self._current

    def load_handle(self, role: str) -> ModelHandle:
        """Load ``role``'s model (an adapter role: the base with that adapter)."""
        if role in self.adapter_paths:
            model = _load_adapters(load_causal_lm(self.paths[BASE], self.options, self.warnings), self.paths[BASE],
                                   {role: self.adapter_paths[role]}, self.options, None, None, [])
            handle = ModelHandle(role, model, adapter_enabled=True, adapter_name=role)
        else:
            handle = ModelHandle(role, load_causal_lm(self.paths[role], self.options, self.warnings))
        self.attach_media(handle)
        return handle

    def can_hold(self, roles) -> bool:
        return len(set(roles)) <= 1

    def head(self, role: str) -> ReadoutHead:
        return self.heads[role]

    @property
    def state_device(self) -> str:
        return "cpu"

    @property
    def resident_role(self) -> str | None:
        return self._current.role if self._current is not None else None

    def release(self) -> None:
        self._current = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- loading ----------------------------------------------------------------------------------
def adapter_load_error(path: str, base: str, exc: Exception) -> ModelLoadError:
    """A named error for an adapter that does not fit its base: the first mismatching module and
    both shapes when PEFT reports a size mismatch."""
    import re

    from ..errors import AdapterShapeMismatchError

    text = str(exc)
    m = re.search(r"size mismatch for ([\w.]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) from "
                  r"checkpoint, the shape in current model is (torch\.Size\(\[[^\]]*\]\))", text)
    if m:
        return AdapterShapeMismatchError(
            f"adapter {path} does not fit base {base}: {m.group(1)} has shape {m.group(2)} in the adapter but "
            f"{m.group(3)} in the base model; was it trained on another base?")
    return ModelLoadError(f"could not load adapter {path} onto {base}: {text.splitlines()[0][:300]}")



def _weights_bytes(path: str) -> int | None:
    if not is_local(path):
        return None
    return sum(f.stat().st_size for f in weight_files(path)) or None


def _available_bytes(options: LoadOptions) -> int | None:
    if (str(options.device).startswith("cuda") or options.device in ("auto", "map")) and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_residency(base: str, tuned: str | list[str] | None, adapter: str | list[str] | None,
                     options: LoadOptions) -> tuple[str, str]:
    """The residency to use and why: ``adapter`` for PEFT adapters (one copy of the base weights
    serves every role); otherwise ``both`` when all models fit in the free memory of the target
    device with 20% headroom, else ``sequential`` (one model at a time)."""
    tuned = [tuned] if isinstance(tuned, str) else list(tuned or [])
    adapter = [adapter] if isinstance(adapter, str) else list(adapter or [])
    if options.residency is not None:
        if options.residency not in RESIDENCIES:
            raise ModelLoadError(f"residency must be one of {', '.join(RESIDENCIES)}, not {options.residency!r}")
        if adapter and not tuned and options.residency == "both":
            raise ModelLoadError("with adapters only, the residency is 'adapter' (one copy of the base weights) "
                                 "or 'sequential'")
        if options.residency == "adapter" and (not adapter or tuned):
            raise ModelLoadError("residency 'adapter' needs --adapter (and no --tuned checkpoints)")
        return options.residency, "asked for"
    if adapter and not tuned:
        return "adapter", "PEFT adapter: one copy of the base weights serves every model"
    if adapter:
        tuned = tuned + [base]  # the adapters share one more copy of the base weights
    sizes = [_weights_bytes(p) for p in [base] + tuned]
    free = _available_bytes(options)
    if None in sizes or free is None:
        return "both", "model sizes or free memory unknown (hub ids); loading all"
    scale = DTYPES[resolve_dtype(options.dtype, options.device)].itemsize / 2  # files are mostly 16-bit
    need = int(sum(sizes) * max(scale, 1.0) * 1.2)
    if need <= free:
        return "both", f"all {len(sizes)} models (~{need / 2**30:.1f} GiB with headroom) fit in {free / 2**30:.1f} GiB free"
    return "sequential", f"{len(sizes)} models need ~{need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is free"


def _real_vocabulary(tokenizers: dict[str, object], rows: int) -> RealVocabulary:
    """The ids every tokenizer shares with the base (and that are not placeholders)."""
    roles = list(tokenizers)
    base = tokenizers[roles[0]]
    parts = [build_real_vocabulary(base, tokenizers[r], rows) for r in roles[1:]] or \
        [build_real_vocabulary(base, base, rows)]
    if len(parts) == 1:
        return parts[0]
    mask = parts[0].mask.clone()
    for p in parts[1:]:
        mask &= p.mask
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
    rows = min(f["lm_head_rows"] for f in facts.values())
    real = _real_vocabulary(tokenizers, rows)
    image = facts[base].get("image_token_id")
    if image is not None and image < real.mask.numel() and bool(real.mask[image]):
        real.mask[image] = False  # an image placeholder is never generated text
        real.masked_counts["image_placeholder"] = 1
    return real, warnings


def model_path_arg(value, what: str) -> str:
    """A model given in Python: a non-empty string or path-like (a directory or a hub id), else an
    :class:`OptionError` (``""`` would be the working directory, ``None`` a hub id "None")."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"{what} must be a model directory or a hub id (a non-empty string), not {value!r}")
    return value


ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_role_name(name: str) -> str:
    """A role name is a safe file name: letters, digits, '.', '_' and '-', not starting with a
    dot or a dash (so never '', '.', '..' or a path): it names a run directory under --out."""
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise OptionError(f"role name {name!r} is not a safe name (letters, digits, '.', '_', '-'; starting with a "
                          "letter or digit): it names a run directory; give another name")
    return name


def role_name_of(path: str) -> str:
    """The role a descendant path gets: its resolved directory's name (``runs/sft/..`` is the
    parent's name, never ``..``), or a hub id's last part; characters that are unsafe in a file
    name become '-'."""
    p = Path(str(path)).expanduser()
    name = p.resolve().name if p.exists() else str(path).rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip(".-")
    return name or "tuned"


def named_path(value: str) -> tuple[str, str] | None:
    """``NAME=PATH`` (a role name for a descendant, as ``--tuned sft=./out/checkpoint-500``) unless
    the whole value is itself an existing path; the name must be a safe name."""
    if "=" not in value or Path(value).expanduser().exists():
        return None
    name, _, path = value.partition("=")
    if not path:
        raise OptionError(f"{value!r}: NAME=PATH needs a path after '='")
    return check_role_name(name), path


def _role_names(descendants: dict[str, str] | list[str] | str | None, what: str = "role",
                each: str = "descendant") -> dict[str, str]:
    """{role: path} of descendants given as a path, a list (directory names made unique, or
    ``NAME=PATH``) or a dict; ``what``/``each`` name them in the messages (``stage`` for a
    lineage)."""
    if descendants is None:
        return {}
    if isinstance(descendants, (str, os.PathLike)):
        return {"tuned": model_path_arg(descendants, "a descendant")}
    if isinstance(descendants, dict):
        return {check_role_name(str(k)): model_path_arg(v, f"descendant {k!r}") for k, v in descendants.items()}
    if not isinstance(descendants, (list, tuple)):
        raise OptionError(f"descendants are a path, a list of paths or a {{role: path}} dict, not {descendants!r}")
    names: dict[str, str] = {}
    for path in map(lambda x: model_path_arg(x, "a descendant"), descendants):
        named = named_path(path)
        if named is not None:  # NAME=PATH: the role is named by the user
            name, path = named
            if name in names or name == BASE:
                raise OptionError(f"{what} name {name!r} is given twice (or is the base's): each {each} needs its own")
            names[name] = path
            continue
        name = role_name_of(path)
        k, unique = 2, name
        while unique in names or unique == BASE:
            unique, k = f"{name}-{k}", k + 1
        names[unique] = str(path)
    return names


def descendant_roles(tuned=None, adapters=None) -> tuple[dict[str, str], dict[str, str]]:
    """The role names :func:`load_models` gives descendant checkpoints and adapters (their
    directory names, made unique), each -> its path: known before any model loads."""
    tuned_roles = _role_names(tuned)
    adapter_roles = dict(_role_names(adapters))
    for role in list(adapter_roles):
        if role in tuned_roles:  # two descendants in directories of the same name
            adapter_roles[f"{role}-adapter"] = adapter_roles.pop(role)
    return tuned_roles, adapter_roles


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def descendant_tokenizer(path: str, options: LoadOptions, base_tokenizer, warnings: list[str] | None = None,
                         adapter: bool = False):
    """A descendant's own tokenizer where it has one, else the base's: a local directory without
    tokenizer files (an adapter, or a checkpoint saved without them, as
    ``merge_and_unload().save_pretrained()`` leaves it; said in ``warnings`` when given), or a
    hub adapter whose repository has none."""
    root = Path(path).expanduser()
    if root.is_dir():
        own = any((root / name).exists() for name in TOKENIZER_FILES)
    else:
        own = not adapter or _hub_has_tokenizer(path)
    if own:
        return load_tokenizer(path, options)
    if warnings is not None:
        warnings.append(f"{path} has no tokenizer files: it is read with the base's tokenizer")
    return base_tokenizer


def _hub_has_tokenizer(repo: str) -> bool:
    """Whether a hub repository holds a tokenizer (asked of the cache, then of the Hub if online)."""
    from huggingface_hub import file_exists, try_to_load_from_cache

    from ..models.paths import hub_reachable

    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in TOKENIZER_FILES):
        return True
    if not hub_reachable():
        return False
    try:
        return any(file_exists(repo, name) for name in ("tokenizer_config.json", "tokenizer.json"))
    except Exception:  # offline, gated or unreachable: nothing more to learn; PEFT loads the weights
        return False


def _load_adapters(base_model, base: str, adapter_roles: dict[str, str], options: LoadOptions, tokenizers: dict,
                   record: dict, warnings: list[str]):
    """A PEFT model holding every adapter of ``adapter_roles`` on ``base_model``."""
    from peft import PeftModel

    model = None
    for role, path in adapter_roles.items():
        settings, adapter_warnings = adapter_settings(path)
        warnings += [w if len(adapter_roles) == 1 else f"{role}: {w}" for w in adapter_warnings]
        try:
            with quiet_loading(options.verbose), warnings_module.catch_warnings(record=True) as caught:
                warnings_module.simplefilter("always")
                if model is None:
                    model = PeftModel.from_pretrained(base_model, path, adapter_name=role, is_trainable=False)
                    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
                else:
                    result = model.load_adapter(path, adapter_name=role, is_trainable=False)
                    missing = list(getattr(result, "missing_keys", None) or [])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise adapter_load_error(path, base, exc) from None
        if missing:  # PEFT leaves them at their initial values (LoRA B: zero) and only warns
            raise ModelLoadError(f"adapter {path} lacks weights its adapter_config.json declares: "
                                 f"{'; '.join(missing)[:400]}")
        if tokenizers is not None:
            tokenizers[role] = descendant_tokenizer(path, options, tokenizers[BASE], adapter=True)
        if record is not None:
            target = record["adapter"] if "adapter" in record else record["descendants"][role]
            target["settings"] = settings
    model.eval()
    return model


def load_spec(base: str, tuned_roles: dict[str, str], adapter_roles: dict[str, str], options: LoadOptions) -> dict:
    """What reloads a model set, as config.json records it (``load_spec``): the paths by role and
    the load options (residency resolved; weights not hashed again on a reload)."""
    return {"base": base, "tuned": tuned_roles or None, "adapters": adapter_roles or None,
            "options": {**vars(options), "hash_weights": False}}


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
    check_model_path(base, "base")
    for path in tuned_roles.values():
        check_model_path(path, "tuned")
    for path in [base, *tuned_roles.values()]:
        check_custom_code(path, options.trust_remote_code)
    for path in adapter_roles.values():
        check_model_path(path, "tuned", adapter=True)
        check_adapter_files(path, options.allow_pickle)
    if not tuned_roles and not adapter_roles:
        raise ModelLoadError("give at least one descendant: tuned= (a checkpoint) or adapter= (a PEFT adapter dir)")
    residency, reason = choose_residency(base, list(tuned_roles.values()), list(adapter_roles.values()), options)
    options.residency = residency
    roles = (BASE,) + tuple(tuned_roles) + tuple(adapter_roles)
    record = {"base": provenance(base, options), "load_options": vars(options).copy(),
              "residency_reason": reason, "load_spec": load_spec(base, tuned_roles, adapter_roles, options)}
    if len(roles) == 2:  # a pair: the record keeps the familiar single-descendant layout
        key, path = ("adapter", *adapter_roles.values()) if adapter_roles else ("tuned", *tuned_roles.values())
        record[key] = provenance(path, options)
    else:
        record["descendants"] = {r: provenance(p, options) | ({"kind": "adapter"} if r in adapter_roles else {})
                                 for r, p in {**tuned_roles, **adapter_roles}.items()}
    tokenizers = {BASE: load_tokenizer(base, options)}
    warnings: list[str] = []

    if residency == "sequential":
        heads, facts, eos = {}, {}, set()
        sequential = SequentialSet(roles, tokenizers, None, set(), {}, "sequential", warnings, record,
                                   paths={BASE: base, **tuned_roles}, options=options, heads=heads,
                                   adapter_paths=adapter_roles)
        for role in roles:
            if role in tuned_roles:
                tokenizers[role] = descendant_tokenizer(tuned_roles[role], options, tokenizers[BASE], warnings)
            if role in adapter_roles:
                tokenizers[role] = descendant_tokenizer(adapter_roles[role], options, tokenizers[BASE], adapter=True)
                record_target = record["adapter"] if "adapter" in record else record["descendants"][role]
                record_target["settings"], adapter_warnings = adapter_settings(adapter_roles[role])
                warnings += adapter_warnings
            handle = sequential.load_handle(role)
            heads[role], facts[role] = ReadoutHead(handle, heads.values()), model_facts(handle)
            eos |= eos_token_ids(tokenizers[role], handle.anatomy.model)
            del handle
            gc.collect()
        real, checks = _check_set(roles, tokenizers, facts, options)
        sequential.real_vocab, sequential.eos_ids, sequential.facts = real, eos, facts
        sequential.warnings = warnings + checks
        return sequential

    handles: dict[str, ModelHandle] = {}
    if adapter_roles and not tuned_roles:  # residency "adapter": every role on one copy of the base weights
        model = _load_adapters(load_causal_lm(base, options, warnings), base, adapter_roles, options, tokenizers,
                               record, warnings)
        handles[BASE] = ModelHandle(BASE, model, adapter_enabled=False)
        for role in adapter_roles:
            handles[role] = ModelHandle(role, model, adapter_enabled=True, adapter_name=role)
    else:
        handles[BASE] = ModelHandle(BASE, load_causal_lm(base, options, warnings))
        for role, path in tuned_roles.items():
            handles[role] = ModelHandle(role, load_causal_lm(path, options, warnings))
            tokenizers[role] = descendant_tokenizer(path, options, tokenizers[BASE], warnings)
        if adapter_roles:  # checkpoints and adapters together: the adapters share one more copy of the base
            model = _load_adapters(load_causal_lm(base, options, warnings), base, adapter_roles, options, tokenizers,
                                   record, warnings)
            for role in adapter_roles:
                handles[role] = ModelHandle(role, model, adapter_enabled=True, adapter_name=role)
    return assemble_set(handles, tokenizers, residency, options, warnings, record)


def load_pair(base: str, tuned: str | None = None, adapter: str | None = None,
              options: LoadOptions | None = None, **overrides) -> ModelSet:
    """Load a base and one descendant: ``tuned`` (full or merged checkpoint) or ``adapter``
    (a PEFT adapter directory on ``base``). Roles: ``base`` and ``tuned``."""
    if (tuned is None) == (adapter is None):
        raise ModelLoadError("give exactly one of tuned= (a checkpoint) or adapter= (a PEFT adapter dir)")
    return load_models(base, tuned={"tuned": tuned} if tuned is not None else None,
                       adapters={"tuned": adapter} if adapter is not None else None, options=options, **overrides)


def assemble_set(handles: dict[str, ModelHandle], tokenizers: dict[str, object], residency: str,
                 options: LoadOptions, warnings: list[str], record: dict) -> ResidentSet:
    """Check compatibility and build the real vocabulary of already-loaded handles."""
    roles = tuple(handles)
    facts = {r: model_facts(h) for r, h in handles.items()}
    real, checks = _check_set(roles, tokenizers, facts, options)
    eos: set[int] = set()
    for role, h in handles.items():
        eos |= eos_token_ids(tokenizers[role], h.anatomy.model)
    models = ResidentSet(roles, tokenizers, real, eos, facts, residency, list(warnings) + checks, record,
                         handles=handles)
    for handle in handles.values():
        models.attach_media(handle)
    return models


def module_digest(module: nn.Module) -> str:
    """A cheap fingerprint of in-memory weights (names, shapes, sums and a few values of every
    tensor), so that runs of different in-memory models never share a run directory."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.state_dict().items():
            if p.is_meta:  # offloaded by a device map: its shape is all that is at hand
                h.update(f"{name}{tuple(p.shape)}".encode())
                continue
            flat = p.detach().reshape(-1)
            if flat.is_floating_point():
                flat = flat.float()
            h.update(f"{name}{tuple(p.shape)}{float(flat.sum()) if flat.numel() else 0.0:.6e}".encode())
            h.update(flat[:16].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def models_from_modules(models: dict[str, nn.Module], tokenizer, tokenizers: dict[str, object] | None = None,
                        processors: dict[str, object] | object | None = None, **options) -> ResidentSet:
    """A set from models already in memory (notebooks, tests); the first entry is the base.
    Models are put in eval mode. ``processors``: vision-language models' processors (one for
    all roles, or a dict by role)."""
    opts = LoadOptions(**options)
    roles = list(models)
    for m in models.values():
        m.eval()
    toks = {r: (tokenizers or {}).get(r, tokenizer) for r in roles}
    handles = {r: ModelHandle(r, m) for r, m in models.items()}
    first = next(iter(models.values()))
    digests = {r: module_digest(m) for r, m in models.items()}
    record = {"base": {"path": "<in-memory>", "weights_digest": digests[roles[0]]}, "load_options": vars(opts) | {
        "dtype": str(next(first.parameters()).dtype).replace("torch.", "")}}
    if len(roles) == 2:
        record["tuned"] = {"path": "<in-memory>", "weights_digest": digests[roles[1]]}
    else:
        record["descendants"] = {r: {"path": "<in-memory>", "weights_digest": digests[r]} for r in roles[1:]}
    models_set = assemble_set(handles, toks, "both", opts, [], record)
    if processors is not None:
        models_set.processors = dict(processors) if isinstance(processors, dict) else {r: processors for r in roles}
    return models_set


def pair_from_peft_model(peft_model, tokenizer, adapter_name: str | None = None, **options) -> ResidentSet:
    """A pair from one PEFT model in memory: ``base`` is the model with its adapters switched off,
    ``tuned`` with ``adapter_name`` (default: the active adapter) on; no second copy of the
    weights (residency "adapter"). The model is put in eval mode (the caller restores training)."""
    from ..models.anatomy import unwrap_peft

    if not type(peft_model).__module__.startswith("peft"):
        raise ModelLoadError(f"pair_from_peft_model needs a PEFT model, not {type(peft_model).__name__}")
    name = adapter_name or peft_model.active_adapter
    opts = LoadOptions(**options)
    peft_model.eval()
    handles = {BASE: ModelHandle(BASE, peft_model, adapter_enabled=False),
               "tuned": ModelHandle("tuned", peft_model, adapter_enabled=True, adapter_name=name)}
    dtype = str(next(unwrap_peft(peft_model).parameters()).dtype).replace("torch.", "")
    record = {"base": {"path": "<in-memory>", "weights_digest": module_digest(unwrap_peft(peft_model))},
              "adapter": {"path": "<in-memory>", "adapter_name": name, "weights_digest": module_digest(peft_model)},
              "load_options": vars(opts) | {"dtype": dtype}}
    return assemble_set(handles, {BASE: tokenizer, "tuned": tokenizer}, "adapter", opts, [], record)


def pair_from_models(pt_model, it_model, tokenizer, tokenizer_it=None, **options) -> ResidentSet:
    """A pair (roles ``base``, ``tuned``) from models already in memory."""
    return models_from_modules({BASE: pt_model, "tuned": it_model}, tokenizer,
                               {"tuned": tokenizer_it} if tokenizer_it is not None else None, **options)


# The method's name for a two-role set.
ModelPair = ModelSet
