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
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..errors import PromptImageError
from ..models.anatomy import Anatomy
from ..models.forward import ModelHandle
from ..models.loading import LoadOptions, load_causal_lm, load_processor, pad_token_id
from ..models.media import MediaRegistry, install_media_hook
from ..models.own_forward import evaluating
from ..models.vocab import RealVocabulary
from .adapters import _load_adapters
from .roles import BASE

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
            model=None, backbone=None,  # pyright: ignore[reportArgumentType] - a head alone: no model around it
            layers=nn.ModuleList(), final_norm=final_norm, lm_head=lm_head,
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
    tokenizers: dict[str, Any]
    real_vocab: RealVocabulary
    eos_ids: set[int]
    facts: dict[str, dict]
    residency: str = "both"
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    processors: dict[str, Any] = field(default_factory=dict)  # vision-language roles' processors
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

    def processors_for(self, roles) -> dict | None:
        """The processors of a set rebuilt from this one's models under ``roles`` (a role this set
        does not have, a synthetic null, reads images as the base does); None for a text-only set."""
        if self.image_token_id is None:
            return None
        return {role: self.processor(role if role in self.roles else self.base) for role in roles}

    def attach_media(self, handle: ModelHandle) -> None:
        """Let full passes of a vision-language ``handle`` find their prompts' images."""
        token = handle.anatomy.image_token_id
        if token is None:
            return
        if not getattr(handle.anatomy.backbone, "_crosspatch_media", False):
            install_media_hook(handle.anatomy.backbone, token, self.media)
            setattr(handle.anatomy.backbone, "_crosspatch_media", True)  # noqa: B010 - a flag on a torch module
        # a model this set shares with another (or took over from one): its hook reads this set's images
        setattr(handle.anatomy.backbone, "_crosspatch_media_registry", self.media)  # noqa: B010

    # -- the residency contract ----------------------------------------------------------
    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[ModelHandle]:
        """The model of ``role``, in memory for the duration of the context."""
        raise NotImplementedError

    def can_hold(self, roles) -> bool:
        """Whether the models of all ``roles`` can be in use at the same time."""
        return True

    def borrowed(self) -> contextlib.AbstractContextManager:
        """The set's models borrowed for a run: in eval mode for its duration, and afterwards as
        they were found (each module's mode, a PEFT model's active adapters), so that a model a
        training loop gave in memory goes on training as it was. Models the set loads itself are
        its own."""
        return contextlib.nullcontext()

    def head(self, role: str):
        """Something :func:`~crosspatch.models.forward.readout` accepts for ``role``'s head."""
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

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[None]:
        models = list({id(h.anatomy.model): h.anatomy.model for h in self.handles.values()}.values())
        peft = list({id(h.module): h.module for h in self.handles.values() if h.adapter_name is not None}.values())
        with evaluating(*models), adapters_kept(*peft):
            yield


@dataclass(repr=False)
class SequentialSet(ModelSet):
    """At most one model in memory: ``use(role)`` loads it (freeing the previous one) and keeps
    it until another role is asked for, so consecutive passes of one role load it once. Opening
    the set reads every model once (its readout head and facts), the first descendant last, and
    leaves that one resident: the model a run rolls out first does not load again at once."""

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
            yield self.load(role)  # (no reference to the model it replaces may outlive the release)
        else:
            yield self._current

    def load(self, role: str) -> ModelHandle:
        """Load ``role``'s model as the resident one, the previous one freed first (counted in
        ``loads``; ``peak_live_models`` measures how many were alive at once)."""
        self.release()
        handle = self.load_handle(role)
        self._live.add(handle.module)
        self.loads += 1
        self.peak_live_models = max(self.peak_live_models, len(self._live))
        self._current = handle
        return handle

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


ModelPair = ModelSet  # the name of a two-role set in earlier releases


@contextlib.contextmanager
def adapters_kept(*peft_models: Any) -> Iterator[None]:
    """PEFT models computing, after the context, with the adapters they had active before it (a
    role that scores another adapter activates it for its passes), and merged as they were: an
    adapter merged into its layers (``merge_adapter()``) is unmerged for the context, so that every
    pass computes the adapter one way (the base's passes unmerge it anyway: merged and unmerged
    differ by rounding), and merged again after it. Adapter layers switched off for good
    (``disable_adapter_layers()``) are switched on for the context (the descendant's passes would
    compute the base: no divergence, read as "no late effect") and off again after it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    active = [active_adapters(m) for m in peft_models]
    layers = [[layer for layer in m.modules() if isinstance(layer, BaseTunerLayer)] for m in peft_models]
    merged = [(layer, list(layer.merged_adapters)) for own in layers for layer in own if layer.merged]
    disabled = [m for m, own in zip(peft_models, layers) if any(layer.disable_adapters for layer in own)]
    for layer, _ in merged:
        layer.unmerge()
    for model in disabled:
        model.base_model.enable_adapter_layers()
    try:
        yield
    finally:
        for model, adapters in zip(peft_models, active):
            if adapters and active_adapters(model) != adapters:
                _activate(model, adapters)
        for model in disabled:
            model.base_model.disable_adapter_layers()
        for layer, names in merged:
            if not layer.merged:
                layer.merge(adapter_names=names)


def active_adapters(peft_model) -> list[str]:
    """The adapters a PEFT model computes with now (its ``active_adapters``, else its one
    ``active_adapter``)."""
    active = getattr(peft_model, "active_adapters", None)
    if isinstance(active, str):
        return [active]
    return list(active or [a for a in [getattr(peft_model, "active_adapter", None)] if a is not None])


def _activate(peft_model: Any, adapters: list[str]) -> None:
    """Make ``adapters`` the ones a PEFT model computes with (several at once are set on its tuner:
    ``PeftModel.set_adapter`` takes one)."""
    if len(adapters) == 1:
        peft_model.set_adapter(adapters[0])
    else:
        peft_model.base_model.set_adapter(adapters)
