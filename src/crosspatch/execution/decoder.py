"""A model decoding a left-padded batch with its own KV cache (:class:`CachedDecoder`): what the
divergence search, the rollouts and the histories step with."""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Any, Iterator

import torch

from ..models.forward import EventStates, ModelHandle, StateRecorder, cache_keyword, step_logits
from ..models.vocab import NON_FINITE, masked_argmax
from . import caches
from .batching import length_batches, pass_overhead_tokens
from .caches import static_length

__all__ = ["DECODE_MODES", "CachedDecoder", "StaticDecoder", "decoding", "greedy_chunk", "new_decoder", "pass_overhead",
           "static_length"]


def pass_overhead(handle: ModelHandle) -> int:
    """:func:`~crosspatch.execution.batching.pass_overhead_tokens` of ``handle``'s model (its
    device and the parameters of one layer)."""
    layer = handle.anatomy.layers[0]
    return pass_overhead_tokens(handle.input_device, sum(p.numel() for p in layer.parameters()))


class CachedDecoder:
    """One model stepping through a left-padded batch with its own KV cache.

    ``start`` consumes the prompts; ``feed`` appends tokens ``[live rows, k]`` and returns the
    logits after each of them; ``select`` drops finished rows from the cache so they cost
    nothing more; ``add`` starts more prompts beside the live rows (continuous batching). With
    ``capture`` boundaries, the states of every consumed position are kept per row
    (``event_states``), so no separate full pass is needed later. Rows are named by the caller
    (``rows``: original indices), whatever their place in the batch."""

    prefill_in_groups = True  # start consumes prompts of very different lengths in groups (see start)

    def __init__(self, handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None) -> None:
        self.handle, self.models, self.keep_on = handle, models, keep_on
        self.capture: list[int] = capture if capture is not None else []  # boundaries whose states are kept
        self.cache = caches.new_dynamic_cache(handle)
        self.kw = cache_keyword(handle)
        self.recorder = StateRecorder(handle.anatomy, capture, keep_on) if capture is not None else None
        self.non_finite: set[int] = set()  # original rows whose decoding stopped at NaN/inf logits
        self.rows: list[int] = []
        self.kept: dict[int, dict] = {}
        self.offsets: dict[int, int] = {}
        # original rows whose further states nobody reads (the search's rows decoding on past
        # their event for a history): their kept states stop growing, and a call over such rows
        # alone records nothing
        self.unrecorded: set[int] = set()

    def _batch_rows(self) -> list[int]:
        """The batch index of each live row (in ``self.rows`` order)."""
        return list(range(len(self.rows)))

    def _fresh_cache(self, batch: int, width: int):
        return caches.new_dynamic_cache(self.handle)

    def _forward(self, keep: int, real_tokens: int, **inputs) -> torch.Tensor:
        return step_logits(self.handle, keep, real_tokens, **inputs)

    def _attention_mask(self) -> torch.Tensor:
        """The 2D padding mask given to the model: over the tokens fed so far."""
        return self.mask

    def _outlives(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, an output of the last step, as kept past the next step (here: itself)."""
        return t

    def _call(self, ids, keep: int, real_tokens: int) -> torch.Tensor:
        recorder = self.recorder if self.recorder is not None and not self.unrecorded.issuperset(self.rows) else None
        with recorder or contextlib.nullcontext():
            logits = self._forward(keep, real_tokens, input_ids=ids, attention_mask=self._attention_mask(),
                                   position_ids=self.positions, use_cache=True, **{self.kw: self.cache})
        if recorder is not None:
            final = self._outlives(recorder.final.pop())
            bounds = {b: self._outlives(recorder.boundary[b].pop()) for b in self.capture}
            for k, row in zip(self._batch_rows(), self.rows):
                if row in self.unrecorded:
                    continue
                self.kept[row]["final"].append(final[k])
                for b in self.capture:
                    self.kept[row][b].append(bounds[b][k])
        return logits

    def start(self, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
        """Consume the prompts (original rows ``rows``, default 0..n-1) in a fresh cache; returns
        next-token logits ``[batch, V]``. States kept for earlier rows stay.

        Prompts of very different lengths are consumed in groups of similar length where padding
        them to the longest would cost more than another pass (the executor's rule,
        :func:`~crosspatch.execution.batching.length_batches`), then joined as :meth:`add` joins
        rows, in the order given: each row computes what it would alone, as in one pass."""
        rows = list(range(len(prompts))) if rows is None else list(rows)
        groups = length_batches(len(prompts), [len(p) for p in prompts], len(prompts), None,
                                pass_overhead(self.handle)) if self.prefill_in_groups else []
        if len(groups) < 2 or caches.known_unjoinable(self.cache):  # this model's caches: their layers' kinds
            return self._start_all(prompts, rows)
        logits = [self._start_all([prompts[k] for k in groups[0]], [rows[k] for k in groups[0]])]
        if not self.can_add:  # found out only once filled (transformers 4): one pass after all
            return self._start_all(prompts, rows)
        for group in groups[1:]:
            logits.append(self.add([prompts[k] for k in group], [rows[k] for k in group]))
        place = {k: i for i, k in enumerate(k for group in groups for k in group)}
        order = [place[k] for k in range(len(prompts))]
        self.select(order)  # back to the order given
        return torch.cat(logits)[torch.tensor(order, dtype=torch.long, device=logits[0].device)]

    def _start_all(self, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """:meth:`start` in one pass."""
        pad, device = self.models.pad_id, self.handle.input_device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        self.cache = self._fresh_cache(len(prompts), width)
        self.rows = rows
        for row, p in zip(rows, prompts):
            self.offsets[row] = width - len(p)
            self.kept[row] = {"final": [], **{b: [] for b in self.capture}}
        self.mask = mask.to(device)
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        self.next_position: torch.Tensor = self.positions[:, -1:] + 1
        return self._call(ids.to(device), 1, int(mask.sum()))[:, 0]

    @property
    def can_add(self) -> bool:
        """Whether :meth:`add` can join new rows to this cache (plain full-attention layers whose
        keys and values are tensors; sliding windows and recurrent states cannot be padded)."""
        return caches.joinable(self.cache)

    def add(self, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Start ``prompts`` (original rows ``rows``) beside the live rows: they are consumed in
        a cache of their own, then both caches are left-padded to one length and joined (padding
        is masked, so each row computes what it would alone). Returns the new rows' next-token
        logits ``[len(prompts), V]``."""
        if not self.rows:
            return self.start(prompts, rows)
        other = CachedDecoder(self.handle, self.models, self.capture if self.recorder is not None else None,
                              self.keep_on)
        logits = other._start_all(prompts, list(rows))
        width = max(self.mask.shape[1], other.mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int, to: int) -> torch.Tensor:
            missing = to - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim)

        layers: Any = zip(self.cache.layers, other.cache.layers)  # plain DynamicLayers (can_add)
        for mine, theirs in layers:
            mine.keys = torch.cat([left_pad(mine.keys, 2, width), left_pad(theirs.keys.to(mine.keys.device), 2, width)])
            mine.values = torch.cat([left_pad(mine.values, 2, width),
                                     left_pad(theirs.values.to(mine.values.device), 2, width)])
        self.mask = torch.cat([left_pad(self.mask, 1, width), left_pad(other.mask.to(self.mask.device), 1, width)])
        self.next_position = torch.cat([self.next_position, other.next_position.to(self.next_position.device)])
        self.rows = self.rows + rows
        self.kept.update(other.kept)
        self.offsets.update(other.offsets)
        return logits

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``[live rows, k]``; returns logits ``[live rows, k, V]``."""
        k = tokens.shape[1]
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones((tokens.shape[0], k), dtype=torch.long, device=device)], 1)
        self.positions = self.next_position + torch.arange(k, device=device)[None, :]
        self.next_position = self.next_position + k
        return self._call(tokens.to(device), k, tokens.numel())

    def clear(self) -> None:
        """No row is live any more: the next :meth:`add` starts a fresh cache (kept states stay)."""
        self.rows = []

    def select(self, keep: list[int]) -> None:
        """Keep only the rows of the current batch at indices ``keep`` (none: :meth:`clear`)."""
        if not keep:
            return self.clear()
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_position = self.mask[idx], self.next_position[idx]
        self.rows = [self.rows[i] for i in keep]
        self._drop_unused_positions()

    def _drop_unused_positions(self) -> None:
        """Drop the cache's leading positions that are padding for every live row (once they are
        at least 32 and an eighth of its length: each drop copies the cache at the next step). In
        a run longer than one batch, rows that :meth:`add` joins are padded to the cache's length,
        which grows at every step: without this the cache would span every step since the batch
        started, not the live rows' prompts and budgets (what the batch rules count on)."""
        width = self.mask.shape[1]
        used = self.mask.any(0)
        unused = int(used.int().argmax()) if width else 0  # the first position some live row uses
        if unused < max(32, width // 8) or not caches.joinable(self.cache):
            return
        caches.drop_leading_positions(self.cache, unused)
        self.mask = self.mask[:, unused:]

    def row_states(self, row: int) -> EventStates:
        """This model's states over every position consumed for original row ``row`` (boundary
        states and final-norm inputs, both ``[n, d]``; left padding removed)."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts])[off:] for key, parts in kept.items()}
        return EventStates({b: seq[b] for b in self.capture}, seq["final"])

    def event_states(self, row: int, length: int) -> EventStates:
        """This model's states over the first ``length`` positions of original row ``row``."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts]) for key, parts in kept.items()}
        return EventStates({b: seq[b][off : off + length] for b in self.capture}, seq["final"][off + length - 1])


def greedy_chunk(decoder: CachedDecoder, logits: torch.Tensor, live: list[int], generated: list[list[int]],
                 budget: int, steps: int, models) -> tuple[dict[int, list[int]], set[int], torch.Tensor]:
    """Up to ``steps`` greedy tokens of every live row (``logits``: their next-token logits),
    each row stopping at its EOS, the budget (counting ``generated[row]``) or logits that are NaN
    or infinite (the row is then in ``stopped``, without a token there). Returns each row's new
    tokens, the stopped rows and the logits after the last token fed (rows that no longer grow
    are fed padding, so the batch keeps one shape)."""
    real, eos, pad = models.real_vocab, models.eos_ids, models.pad_id
    chunk: dict[int, list[int]] = {r: [] for r in live}
    stopped: set[int] = set()

    def extending(r: int) -> bool:
        return r not in stopped and len(generated[r]) + len(chunk[r]) < budget and not (chunk[r] and chunk[r][-1] in eos)

    for _ in range(steps):
        growing = [extending(r) for r in live]
        for r, pick, grow in zip(live, masked_argmax(logits, real).tolist(), growing):
            if grow and pick == NON_FINITE:
                stopped.add(r)
            elif grow:
                chunk[r].append(pick)
        if not any(extending(r) for r in live):
            break
        feed = [[chunk[r][-1] if grow and r not in stopped else pad] for r, grow in zip(live, growing)]
        logits = decoder.feed(torch.tensor(feed))[:, 0]
    return chunk, stopped, logits


DECODE_MODES = ("auto", "eager", "static", "compiled")
_MODE: contextvars.ContextVar[tuple[str, int, dict | None]] = contextvars.ContextVar("crosspatch_decode",
                                                                                     default=("eager", 0, None))


@contextlib.contextmanager
def decoding(mode: str, budget: int, used: dict | None = None) -> Iterator[None]:
    """Decoders made inside (:func:`new_decoder`) step ``eager`` (a growing cache), ``static`` (a
    preallocated one of fixed shape), ``compiled`` (static, the step compiled) or ``auto``
    (static on CUDA, else eager); ``budget``: tokens a row may still grow by (sizes a static
    cache). ``used`` receives the mode each decoder used and why (``{"mode", "reason"}``)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {mode!r}")
    token = _MODE.set((mode, budget, used))
    try:
        yield
    finally:
        _MODE.reset(token)


def new_decoder(handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None) -> CachedDecoder:
    """A decoder of the mode :func:`decoding` set (eager outside it). ``auto`` is static on CUDA
    and eager elsewhere. Measured on an H200 (docs/benchmarks.md): a static cache's fixed-shape
    steps beat the growing cache's (0.94 s against 1.49 s for 96 prompts of a 134M pair), while
    ``compiled`` spent 46 s compiling and capturing each new shape of the run, so compiling is
    asked for, never chosen; on the CPU neither pays. A model whose cache cannot be static falls
    back to eager, the reason recorded."""
    mode, budget, used = _MODE.get()
    reason = "as asked"
    if mode == "auto":
        on_cuda = handle.input_device.type == "cuda"
        mode, reason = ("static", "auto: CUDA") if on_cuda else ("eager", "auto: not on CUDA")
    model = handle.anatomy.model
    if mode == "compiled" and getattr(model, "_can_compile_fullgraph", True) is False:
        mode, reason = "static", f"{type(model).__name__} cannot be compiled whole in this transformers"
    if mode in ("static", "compiled") and getattr(model, "_supports_static_cache", True) is False:
        mode, reason = "eager", f"{type(model).__name__} has no static KV cache in this transformers"
    if used is not None:
        used.update(mode=mode, reason=reason)
    if mode in ("static", "compiled"):
        decoder = StaticDecoder(handle, models, capture, keep_on, budget=budget, compiled=mode == "compiled")
        decoder.used = used if used is not None else {}
        return decoder
    return CachedDecoder(handle, models, capture, keep_on)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graphs_on(device: torch.device) -> bool:
    """Whether a compiled step on ``device`` runs as CUDA graphs (``mode="reduce-overhead"``)."""
    return device.type == "cuda"


class StaticDecoder(CachedDecoder):
    """A :class:`CachedDecoder` over a preallocated KV cache of fixed shape (Hugging Face's
    ``StaticCache``): its batch never shrinks (a finished row's slot is fed padding, its output
    dropped) and its length is the prompt width + the budget rounded up to a bucket, so that every
    step of a batch has one shape: what ``torch.compile(mode="reduce-overhead")`` and CUDA graphs
    need (``compiled``). Rows cannot be added (continuous batching falls back to batch after
    batch). The same events as the eager decoder; logits to float rounding (attention runs over the
    whole, masked, cache length)."""

    prefill_in_groups = False  # its rows cannot be joined (see can_add)

    def __init__(self, handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None,
                 budget: int = 0, compiled: bool = False) -> None:
        super().__init__(handle, models, capture, keep_on)
        self.budget, self.compiled = budget, compiled
        self.length = 0  # the cache's length (set with each fresh cache)
        self.graph_outputs = False  # whether the last step's outputs are CUDA-graph memory that the next step reuses
        self.slots: list[int] = []
        self.used: dict = {}  # where a compilation failure is recorded (new_decoder passes the run's)

    @property
    def can_add(self) -> bool:
        return False

    def _batch_rows(self) -> list[int]:
        return self.slots

    def _fresh_cache(self, batch: int, width: int):
        self.length = static_length(width + self.budget + 1)
        return caches.new_static_cache(self.handle, batch, self.length)

    def _attention_mask(self) -> torch.Tensor:
        """The padding mask over the cache's whole length, zeros past the tokens fed so far: one
        shape for every step of a batch, so that a compiled step is not traced, and a CUDA graph
        not recorded, again at every step (Hugging Face pads a shorter mask with zeros to the
        cache's length inside the forward, and builds its causal mask over the whole cache: the
        model computes exactly what it would with the shorter mask)."""
        return torch.nn.functional.pad(self.mask, (0, self.length - self.mask.shape[1]))

    def _forward(self, keep: int, real_tokens: int, **inputs) -> torch.Tensor:
        ids = inputs["input_ids"]
        inputs["cache_position"] = torch.arange(self.cursor, self.cursor + ids.shape[1], device=ids.device)
        # The prompt pass runs uncompiled, as Hugging Face's generate runs it: its width changes
        # with every batch, and a compiled prefill would be traced (and captured) for each.
        compiled = self._compiled() if self.cursor > 0 else None
        self.graph_outputs = compiled is not None and _graphs_on(self.handle.input_device)
        if compiled is not None:
            try:
                if self.graph_outputs:  # a new step: the outputs of the last one may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                return self._outlives(step_logits(self.handle, keep, real_tokens, forward=compiled, **inputs))
            except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the step runs uncompiled
                _COMPILED[self.handle.anatomy.model] = None
                self.graph_outputs = False
                self.used.update(mode="static", reason=f"torch.compile failed ({type(exc).__name__}): static, uncompiled")
        return step_logits(self.handle, keep, real_tokens, **inputs)

    def _outlives(self, t: torch.Tensor) -> torch.Tensor:
        """A copy where the step ran as a CUDA graph: its outputs (the logits, and the states the
        recorder's hooks took inside the graph) live in the graph's memory, which its next replay
        overwrites, and they are read long after (logits across the other model's step, states
        when events are scored)."""
        return t.clone() if self.graph_outputs else t

    def _compiled(self):
        """The model's forward compiled once per model (``compiled``; on CUDA with CUDA graphs), else
        None (uncompiled, or its compilation failed before)."""
        model = self.handle.anatomy.model
        if not self.compiled:
            return None
        if model not in _COMPILED:
            graphs = _graphs_on(self.handle.input_device)
            _COMPILED[model] = torch.compile(model, mode="reduce-overhead" if graphs else "default")
        return _COMPILED[model]

    def start(self, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
        self.cursor = 0
        self.slots = list(range(len(prompts)))
        logits = super().start(prompts, rows)
        self.cursor = max(len(p) for p in prompts)
        return logits

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        full = torch.full((len(self.mask), tokens.shape[1]), self.models.pad_id, dtype=tokens.dtype)
        full[self.slots] = tokens.cpu()
        rows = self.slots
        logits = super().feed(full)
        self.cursor += tokens.shape[1]
        return logits[rows]

    def select(self, keep: list[int]) -> None:
        self.slots = [self.slots[i] for i in keep]
        self.rows = [self.rows[i] for i in keep]
