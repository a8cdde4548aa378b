"""Sequential residency: one model in memory at a time (a 32B pair on one GPU).

Per chunk of prompts the phases are: rollout model R decodes greedily; R is freed and the other
model T is teacher-forced over prompt + rollout (events, T's states); T is freed and R runs its
natural pass over the event prefixes plus its late stack on T's boundary states; then T runs its
late stack on R's boundary states. Boundary and final states wait on the CPU in between. Both
models' final norm + ``lm_head`` stay resident as small copies, so every cell is read out with
both heads. The numbers equal the ``both`` residency's (test).
"""

from __future__ import annotations

import contextlib
import copy
import gc
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .cells import CellsConfig, build_records, natural_diagnostics, _pad_stack
from .divergence import DivergenceConfig, DivergenceEvent, NoDivergence, greedy_rollout, length_batches
from .models.anatomy import Anatomy
from .models.checks import check_special_tokens, compare_facts
from .models.execution import ModelHandle, capture_forward, late_forward, readout
from .models.loading import LoadOptions, _provenance, eos_token_ids, load_causal_lm, load_tokenizer, pad_token_id
from .models.vocab import RealVocabulary, build_real_vocabulary, masked_argmax
from .prompts import Prompt


class ReadoutHead:
    """A resident copy of one model's final norm + lm_head (+ final logit processing)."""

    def __init__(self, handle: ModelHandle) -> None:
        a = handle.anatomy
        self.role = handle.role
        self.anatomy = Anatomy(
            model=None, backbone=None, layers=nn.ModuleList(), final_norm=copy.deepcopy(a.final_norm),
            lm_head=copy.deepcopy(a.lm_head), logit_softcap=a.logit_softcap, logit_scale=a.logit_scale,
            logit_divisor=a.logit_divisor,
        )

    def active(self):
        return contextlib.nullcontext()


def model_facts(handle: ModelHandle) -> dict:
    """What the pair checks compare, kept after the model is freed."""
    a = handle.anatomy
    return {"class": type(a.model).__name__, "num_layers": a.num_layers, "hidden_size": a.hidden_size,
            "lm_head_rows": a.lm_head.weight.shape[0]}


@dataclass
class SequentialPair:
    """A pair whose models are loaded one at a time (``resident``); heads stay in memory."""

    paths: dict[str, str]
    options: LoadOptions
    tokenizer_pt: object
    tokenizer_it: object
    real_vocab: RealVocabulary
    heads: dict[str, ReadoutHead]
    facts: dict[str, dict]
    eos_ids: set[int]
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    residency: str = "sequential"

    @property
    def num_layers(self) -> int:
        return self.facts["PT"]["num_layers"]

    @property
    def hidden_size(self) -> int:
        return self.facts["PT"]["hidden_size"]

    @property
    def pt(self) -> ReadoutHead:
        return self.heads["PT"]

    @property
    def it(self) -> ReadoutHead:
        return self.heads["IT"]

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer_it)

    @contextlib.contextmanager
    def resident(self, role: str) -> Iterator[ModelHandle]:
        """Load ``role``'s model, yield its handle, free it afterwards."""
        handle = ModelHandle(role, load_causal_lm(self.paths[role], self.options))
        try:
            yield handle
        finally:
            del handle
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def load_sequential_pair(base: str, tuned: str, options: LoadOptions) -> SequentialPair:
    """Check and prepare a pair without ever holding both models in memory."""
    tok_pt, tok_it = load_tokenizer(base, options), load_tokenizer(tuned, options)
    warnings = check_special_tokens(tok_pt, tok_it, allow_mismatch=options.allow_special_token_mismatch)
    paths = {"PT": base, "IT": tuned}
    heads, facts, eos = {}, {}, set()
    for role, tok in (("PT", tok_pt), ("IT", tok_it)):
        handle = ModelHandle(role, load_causal_lm(paths[role], options))
        heads[role], facts[role] = ReadoutHead(handle), model_facts(handle)
        eos |= eos_token_ids(tok, handle.anatomy.model)
        del handle
        gc.collect()
    compare_facts(facts["PT"], facts["IT"])
    rows = min(facts["PT"]["lm_head_rows"], facts["IT"]["lm_head_rows"])
    provenance = {"base": _provenance(base, options), "tuned": _provenance(tuned, options),
                  "load_options": vars(options).copy()}
    return SequentialPair(paths, options, tok_pt, tok_it, build_real_vocabulary(tok_pt, tok_it, rows), heads,
                          facts, eos, warnings, provenance)


def cache_bytes(pair: SequentialPair, prompt_ids: list[list[int]], max_new_tokens: int, n_boundaries: int) -> int:
    """Upper bound of the CPU state cache of one chunk: both models' boundary and final states
    over prompt + budget tokens, in the compute dtype."""
    itemsize = torch.empty((), dtype={"float32": torch.float32, "bfloat16": torch.bfloat16,
                                      "float16": torch.float16}[pair.options.dtype]).element_size()
    tokens = sum(len(p) + max_new_tokens for p in prompt_ids)
    return 2 * tokens * pair.hidden_size * itemsize * (n_boundaries + 1)


def score_chunk_sequentially(
    pair: SequentialPair, prompts: list[Prompt], prompt_ids: list[list[int]], boundaries: list[int],
    div: DivergenceConfig, cells: CellsConfig,
):
    """Events, no-divergence outcomes and records of one chunk, one model resident at a time."""
    roll, check = ("IT", "PT") if div.rollout_model == "IT" else ("PT", "IT")
    batches = length_batches(len(prompts), [len(p) for p in prompt_ids], div.batch_size)
    rollouts: dict[int, list[int]] = {}
    with pair.resident(roll) as model:  # phase 1: greedy rollout
        for batch in batches:
            for k, r in zip(batch, greedy_rollout(model, [prompt_ids[k] for k in batch], div.max_new_tokens, pair)):
                rollouts[k] = r
    events: list[DivergenceEvent] = []
    none: list[NoDivergence] = []
    check_states: dict[str, dict] = {}
    with pair.resident(check) as model:  # phase 2: teacher-forced pass, events, T's states
        for batch in batches:
            seqs = [prompt_ids[k] + rollouts[k] for k in batch]
            cap = capture_forward(model, seqs, boundaries, pair.pad_id, keep_on="cpu")
            for row, k in enumerate(batch):
                p, r = prompt_ids[k], rollouts[k]
                picks = masked_argmax(readout(model, cap.final_states[row, len(p) - 1 : len(p) - 1 + len(r)]),
                                      pair.real_vocab).tolist()
                i = next((j for j, (a, b) in enumerate(zip(r, picks)) if a != b), None)
                prompt = prompts[k]
                if i is None:
                    reason = "agreed_eos" if r and r[-1] in pair.eos_ids else "budget_exhausted"
                    none.append(NoDivergence(prompt.id, prompt.category, reason, len(r)))
                    continue
                t_it, t_pt = (r[i], picks[i]) if roll == "IT" else (picks[i], r[i])
                ev = DivergenceEvent(prompt.id, prompt.category, len(p), i, p + r[:i], t_pt, t_it)
                events.append(ev)
                check_states[ev.key] = cap.event_states(row, len(ev.prefix_ids), boundaries)
    ev_batches = length_batches(len(events), [len(e.prefix_ids) for e in events], cells.batch_size)
    roll_states: dict[str, object] = {}
    cross: dict[tuple[str, str, int], torch.Tensor] = {}  # (late-stack role, event key, b) -> final state
    for phase_role, upstream in ((roll, check_states), (check, roll_states)):
        with pair.resident(phase_role) as model:  # phases 3 and 4: natural pass (R) and late stacks
            for batch in ev_batches:
                evs = [events[k] for k in batch]
                seqs = [e.prefix_ids for e in evs]
                last, rows = torch.tensor([len(s) - 1 for s in seqs]), torch.arange(len(seqs))
                if phase_role == roll:
                    cap = capture_forward(model, seqs, boundaries, pair.pad_id, keep_on="cpu")
                    for row, ev in enumerate(evs):
                        roll_states[ev.key] = cap.event_states(row, len(ev.prefix_ids), boundaries)
                for b in boundaries:
                    u = _pad_stack([upstream[e.key].boundary[b] for e in evs])
                    out = late_forward(model, b, u, seqs, pair.pad_id, keep_on="cpu")[rows, last]
                    for row, ev in enumerate(evs):
                        cross[(phase_role, ev.key, b)] = out[row]
    records = []
    nat = {roll: roll_states, check: check_states}
    for batch in ev_batches:
        evs = [events[k] for k in batch]
        nat_pt = torch.stack([nat["PT"][e.key].final for e in evs])
        nat_it = torch.stack([nat["IT"][e.key].final for e in evs])
        t_pt, t_it = torch.tensor([e.t_pt for e in evs]), torch.tensor([e.t_it for e in evs])
        diag = natural_diagnostics((pair.pt, pair.it), pair.real_vocab, nat_pt, nat_it, t_pt, t_it)
        for b in boundaries:
            states = {"upt_lpt": nat_pt, "uit_lit": nat_it,
                      "uit_lpt": torch.stack([cross[("PT", e.key, b)] for e in evs]),  # L_PT on U_IT
                      "upt_lit": torch.stack([cross[("IT", e.key, b)] for e in evs])}  # L_IT on U_PT
            records += build_records((pair.pt, pair.it), pair.tokenizer_it, evs, b, states, diag, cells)
    return events, none, records
