"""Running parts of a model: capture boundary states, run only the late stack, read out.

All passes use right padding with explicit position ids ``0..n-1`` so that every real token
sees exactly the history it would see alone (causal attention never reaches the padding that
follows it). Decoder layers may return a tensor (transformers 5) or a tuple (4.x); the only
place that matters is :class:`_SkippedLayer`, which mirrors whatever the real layers return.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import BoundaryError, UnsupportedArchitectureError
from .anatomy import Anatomy, check_boundaries_supported, find_anatomy, unwrap_peft
from .layer_hooks import edit_hook, hidden_arg, replace_hidden, zeroed_padding
from .own_forward import own_forward


class WorkCounter:
    """Counts model work as token-layers (one token through one decoder layer), real tokens only.
    One forward-pass equivalent (FE) of an event = prefix length x number of layers."""

    def __init__(self) -> None:
        self.token_layers = 0

    def add(self, tokens: int, layers: int) -> None:
        self.token_layers += int(tokens) * int(layers)


_COUNTERS: list[WorkCounter] = []


@contextlib.contextmanager
def counting_work() -> Iterator[WorkCounter]:
    """Count the work of every pass run inside this context."""
    counter = WorkCounter()
    _COUNTERS.append(counter)
    try:
        yield counter
    finally:
        _COUNTERS.remove(counter)


def record_work(tokens: int, layers: int) -> None:
    for counter in _COUNTERS:
        counter.add(tokens, layers)


@dataclass
class ModelHandle:
    """One named model (a role: ``base``, a descendant, a stage): a module, its anatomy, and
    which PEFT adapter computes it when several roles share one copy of the base weights."""

    role: str
    module: nn.Module
    anatomy: Anatomy = field(init=False)
    adapter_enabled: bool | None = None  # None: plain model; False: PEFT adapters switched off
    adapter_name: str | None = None  # with adapter_enabled=True: the PEFT adapter to activate

    def __post_init__(self) -> None:
        self.anatomy = find_anatomy(self.module)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Context in which ``module`` computes this role (adapters off for a PEFT base, the
        role's own adapter on for a descendant), by its own forward (:func:`own_forward`)."""
        with own_forward(self.anatomy.model):
            if self.adapter_enabled is False:
                with self.module.disable_adapter():  # pyright: ignore[reportCallIssue] - a PeftModel method
                    yield
            else:
                if self.adapter_name is not None and not self._adapter_is_active():
                    self.module.set_adapter(self.adapter_name)  # pyright: ignore[reportCallIssue] - a PeftModel method
                yield

    def _adapter_is_active(self) -> bool:
        """Whether this role's adapter computes the module now: the PEFT model's record *and* its
        adapter layers (PEFT can leave the two apart: on the zoo demo's set of two adapters on one
        model, the model's record named one adapter while its layers ran the other, and roles
        computed with the wrong adapter)."""
        if self.module.active_adapter != self.adapter_name:
            return False
        layer: Any = self.__dict__.get("_tuner_layer")
        if layer is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            layer = next((m for m in self.module.modules() if isinstance(m, BaseTunerLayer)), False)
            self.__dict__["_tuner_layer"] = layer  # the first adapter layer (False: none), found once
        return layer is False or list(layer.active_adapters) == [self.adapter_name]

    @property
    def input_device(self) -> torch.device:
        """Where the token ids go: where the input embeddings compute (accelerate's execution
        device where they are offloaded: their weight then lies on the meta device)."""
        embeddings = unwrap_peft(self.module).get_input_embeddings()  # pyright: ignore[reportCallIssue]
        return execution_device(embeddings) or embeddings.weight.device

    @property
    def config(self):
        return self.anatomy.model.config


class _SkippedLayer(nn.Module):
    """Stands in for an early layer during a late-only pass: returns its input untouched. It holds
    the layer it stands for (never called), so that the model's modules are still all there: PEFT
    switching an adapter off or on looks for its layers, and an adapter confined to the early
    layers has none elsewhere."""

    def __init__(self, original: nn.Module, output_items: int) -> None:
        super().__init__()
        self.stood_for = original
        self.output_items = output_items  # as the real layers return: 0 a tensor, n a tuple of n items
        for attr in ("attention_type", "layer_idx", "is_sliding", "sliding_window"):
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, *args, **kwargs):
        hidden = hidden_arg(args, kwargs)  # a tuple as long as the real layers' (the rest None: nothing computed)
        return (hidden,) + (None,) * (self.output_items - 1) if self.output_items else hidden


def layer_output_hidden(output) -> torch.Tensor:
    """The hidden states in a decoder layer's output, tensor (transformers 5) or tuple (4.x)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def padded_batch(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, position ids and lengths for a list of sequences."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    positions = torch.arange(width)[None, :].expand(len(sequences), width).contiguous()
    return ids.to(device), mask.to(device), positions.to(device), lengths


@dataclass
class ForwardStates:
    """States from one pass: residual entering each boundary layer, and pre-norm final states.
    Position ``j`` of row ``r``'s sequence is at index ``offsets[r] + j`` (left padding)."""

    boundary_states: dict[int, torch.Tensor]  # b -> [batch, seq, d]
    final_states: torch.Tensor  # [batch, seq, d], input of the final norm
    offsets: list[int] | None = None

    def event_states(self, row: int, length: int, boundaries: list[int], every_final: bool = False) -> "EventStates":
        """Row ``row``'s states over its first ``length`` positions (every final state: ``every_final``)."""
        off = self.offsets[row] if self.offsets else 0
        final = self.final_states[row, off : off + length] if every_final else self.final_states[row, off + length - 1]
        return EventStates({b: self.boundary_states[b][row, off : off + length] for b in boundaries}, final)


@dataclass
class EventStates:
    """One model's natural states over one event prefix: boundary states ``[n, d]`` and the
    pre-norm final state at the last prefix position ``[d]``."""

    boundary: dict[int, torch.Tensor]
    final: torch.Tensor


class StateRecorder:
    """While active, records the residual entering each boundary layer and the final-norm input
    of every forward call (one tensor per call, in call order)."""

    def __init__(self, anatomy: Anatomy, boundaries: list[int], keep_on=None) -> None:
        self.anatomy, self.boundaries, self.keep_on = anatomy, list(boundaries), keep_on
        self.boundary: dict[int, list[torch.Tensor]] = {b: [] for b in self.boundaries}
        self.final: list[torch.Tensor] = []
        self._hooks: list = []

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(self.keep_on) if self.keep_on is not None else t

    def __enter__(self) -> "StateRecorder":
        anatomy = self.anatomy
        for b in self.boundaries:
            _check_boundary(anatomy, b)

            def pre(module, args, kwargs, b=b):
                self.boundary[b].append(self._keep(hidden_arg(args, kwargs)))

            self._hooks.append(anatomy.layers[b].register_forward_pre_hook(pre, with_kwargs=True))
        # the final norm's input once the last layer has run: a model may call the same norm module
        # elsewhere in a pass too (NanoChat normalises its embeddings with it), which is no final state
        after_last_layer = [False]

        def last_layer_ran(module, args, output):
            after_last_layer[0] = True

        def final_norm_input(module, args, kwargs):
            if after_last_layer[0]:
                after_last_layer[0] = False
                self.final.append(self._keep(hidden_arg(args, kwargs)))

        self._hooks.append(anatomy.layers[-1].register_forward_hook(last_layer_ran))
        self._hooks.append(anatomy.final_norm.register_forward_pre_hook(final_norm_input, with_kwargs=True))

        def learn_output_type(module, args, kwargs, output):
            anatomy.layer_output_items = len(output) if isinstance(output, (tuple, list)) else 0

        self._hooks.append(anatomy.layers[0].register_forward_hook(learn_output_type, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def concatenated(self, offsets: list[int] | None = None) -> ForwardStates:
        """All recorded calls joined along the sequence axis."""
        if not self.final:  # the final norm never ran after the last layer: no final state to read
            raise UnsupportedArchitectureError(
                f"{type(self.anatomy.model).__name__}: its final norm {type(self.anatomy.final_norm).__name__} does not "
                "run after the last decoder layer, so crosspatch cannot read the residual stream's final state")
        return ForwardStates({b: torch.cat(v, dim=1) for b, v in self.boundary.items()},
                       torch.cat(self.final, dim=1), offsets)


def _check_boundary(anatomy: Anatomy, boundary: int) -> None:
    if not 0 <= boundary < anatomy.num_layers:
        raise BoundaryError(f"boundary {boundary} is outside layers 0..{anatomy.num_layers - 1}")


def _run_backbone(handle: ModelHandle, ids, mask, positions, late: bool = False) -> None:
    """The model's own forward up to the final norm (``late``: the language tower alone, for
    passes whose boundary input is replaced anyway: no vision encoder)."""
    backbone = (handle.anatomy.late_backbone or handle.anatomy.backbone) if late else handle.anatomy.backbone
    with torch.inference_mode(), handle.active(), zeroed_padding(handle.anatomy.layers, mask):
        backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)


def capture_forward(
    handle: ModelHandle,
    sequences: list[list[int]],
    boundaries: list[int],
    pad_id: int,
    keep_on: torch.device | str | None = None,
) -> ForwardStates:
    """Full forward of ``handle`` over right-padded ``sequences``, capturing the residual entering
    each layer in ``boundaries`` and the input of the final norm (both ``[batch, seq, d]``)."""
    ids, mask, positions, lengths = padded_batch(sequences, pad_id, handle.input_device)
    with StateRecorder(handle.anatomy, boundaries, keep_on) as rec:
        _run_backbone(handle, ids, mask, positions)
    record_work(int(lengths.sum()), handle.anatomy.num_layers)
    return rec.concatenated()


def _ensure_output_type_known(handle: ModelHandle, pad_id: int) -> None:
    if handle.anatomy.layer_output_items is None:
        capture_forward(handle, [[pad_id]], [0], pad_id)


def late_forward(
    handle: ModelHandle,
    boundary: int,
    upstream: torch.Tensor,
    sequences: list[list[int]],
    pad_id: int,
    keep_on: torch.device | str | None = None,
    edits: list[tuple[int, str, Callable]] | None = None,
) -> torch.Tensor:
    """Run only layers ``boundary..L-1`` of ``handle`` on ``upstream`` (``[batch, seq, d]``, the
    residual entering ``boundary``) and return the input of the final norm, ``[batch, seq, d]``.
    ``edits``: ``(layer, site, fn)`` replace the output of a late layer's ``mlp`` or of the
    layer itself (``residual``) by ``fn(output)``.

    Layers before ``boundary`` are replaced by pass-through stand-ins for the duration of the
    call, so they cost nothing; the model's own forward builds masks, rotary embeddings and
    per-layer attention types, which keeps the late stack exact for every architecture."""
    anatomy = handle.anatomy
    _check_boundary(anatomy, boundary)
    check_boundaries_supported(anatomy.model.config, [boundary])
    for layer, _, _ in edits or ():
        if not boundary <= layer < anatomy.num_layers:
            raise BoundaryError(f"an edit of layer {layer} is outside the late stack {boundary}..{anatomy.num_layers - 1}")
    _ensure_output_type_known(handle, pad_id)
    layers = anatomy.layers
    originals = [layers[i] for i in range(boundary)]
    final: list[torch.Tensor] = []

    def inject(module, args, kwargs):
        incoming = hidden_arg(args, kwargs)
        if upstream.shape != incoming.shape:
            raise ValueError(f"upstream shape {tuple(upstream.shape)} != {tuple(incoming.shape)}")
        return replace_hidden(args, kwargs, upstream.to(device=incoming.device, dtype=incoming.dtype))

    hooks = []
    try:
        for i, layer in enumerate(originals):
            layers[i] = _SkippedLayer(layer, anatomy.layer_output_items or 0)
        hooks.append(layers[boundary].register_forward_pre_hook(inject, with_kwargs=True))
        for layer, site, fn in edits or ():
            hooks.append(edit_hook(layers[layer], site, fn))
        hooks.append(
            anatomy.final_norm.register_forward_pre_hook(
                lambda m, a, k: final.append(hidden_arg(a, k).detach()), with_kwargs=True
            )
        )
        ids, mask, positions, lengths = padded_batch(sequences, pad_id, handle.input_device)
        _run_backbone(handle, ids, mask, positions, late=True)
        record_work(int(lengths.sum()), anatomy.num_layers - boundary)
    finally:
        for h in hooks:
            h.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer
    out = final[-1]
    return out.to(keep_on) if keep_on is not None else out


def readout(handle: ModelHandle, final_states: torch.Tensor) -> torch.Tensor:
    """fp32 logits of ``handle``'s final norm + lm_head (+ final processing) on ``final_states``."""
    anatomy = handle.anatomy
    device = execution_device(anatomy.final_norm)
    with torch.inference_mode(), handle.active():
        states = final_states.to(device) if device is not None else final_states
        return anatomy.final_logits(states)


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` computes: accelerate's execution device for dispatched (possibly
    offloaded) modules, else the device of its first real parameter."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return None


def cache_keyword(handle: ModelHandle) -> str:
    """Name of the KV-cache argument of the model's forward (``cache`` in recent transformers)."""
    params = inspect.signature(handle.anatomy.model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@contextlib.contextmanager
def decoding_attention(device: torch.device) -> Iterator[None]:
    """Scaled-dot-product attention backends for decoding steps on CUDA: all but cuDNN's. cuDNN
    builds an execution plan for every new shape, and a KV cache that grows a token per step
    makes every step a new shape (measured on an H200: a 96-prompt search took 4.3 s the first
    time and 1.6 s once its shapes were planned). Elsewhere a no-op."""
    if torch.device(device).type != "cuda":
        yield
        return
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN backend to avoid
        yield
        return
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def step_logits(handle: ModelHandle, keep: int, real_tokens: int, forward=None, **inputs) -> torch.Tensor:
    """fp32 logits ``[batch, keep, V]`` of the last ``keep`` positions from the model's own
    forward (used while decoding with a KV cache; ``forward``: a compiled version of it);
    ``real_tokens``: the non-padding tokens fed, counted by the caller (reading them off the
    device mask would wait for the forward pass)."""
    model = handle.anatomy.model
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        inputs["logits_to_keep"] = keep
    inputs["return_dict"] = True  # an output object whatever the config says (own_forward)
    with torch.inference_mode(), handle.active(), decoding_attention(inputs["input_ids"].device):
        out = (forward if forward is not None else model)(**inputs)
    record_work(real_tokens, handle.anatomy.num_layers)
    return out.logits[:, -keep:].float()
