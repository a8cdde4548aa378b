"""The three ways to compute the same first-divergence 2x2 that crosspatch is measured against.

All take plain Hugging Face models (``pt``, ``it``), token-id prompts and a list of boundaries,
and return ``(events, cells, work)``: ``events[prompt_id] = (position, t_pt, t_it, prefix)``,
``cells["<id>@<b>"] = {"upt_lit", "uit_lit", "upt_lpt", "uit_lpt"}`` (each late stack read out
by its own final norm and head) and the token-layers executed.

* :func:`paper_style`: lockstep greedy decoding of both models with KV caches at batch size 1,
  then six full ``use_cache=False`` passes per event (two natural with every hidden state, four
  with the residual entering layer b replaced by a forward pre-hook; the two diagonal ones are
  no-op checks), as the method's authors run it. A sweep adds four patched passes per boundary.
* :func:`paper_style_kinds`: the same pipeline as the authors run it by default, scoring every
  event kind (DESIGN 1.2): the lockstep goes on past the first divergence along the descendant's
  greedy history to its EOS or the budget, the kinds are found on that history, and each
  distinct event gets the six passes (kinds that fall on one event share them).
* :func:`nnsight_style`: the lockstep with caches through ``nnsight`` traces, then natural and
  patched traces batched over events (right padding, last real position read).
* :func:`lower_bound`: no search: exactly the tokens the cells need, given the events: one
  batched full pass of each model over the event prefixes and two late-only passes per
  boundary (the late layers run on the other model's state through the model's own forward).
"""

from __future__ import annotations

import contextlib

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _argmax(logits: torch.Tensor, vocab: int) -> int:
    return int(logits[..., :vocab].argmax(-1))


def _y(logits: torch.Tensor, t_pt: int, t_it: int) -> float:
    return float(logits[t_it].float() - logits[t_pt].float())


def lockstep(step_pt, step_it, prompt_ids: list[int], max_new_tokens: int, vocab: int, eos: set[int]):
    """Greedy decoding of both models in lockstep; ``step_*(ids, cache) -> (last logits, cache)``.
    Returns ``(position, t_pt, t_it, prefix)`` of the first disagreement, or None."""
    seq = list(prompt_ids)
    ids, cache_pt, cache_it = prompt_ids, None, None
    for position in range(max_new_tokens):
        logits_pt, cache_pt = step_pt(ids, cache_pt)
        logits_it, cache_it = step_it(ids, cache_it)
        a, c = _argmax(logits_pt, vocab), _argmax(logits_it, vocab)
        if a != c:
            return position, a, c, seq
        if a in eos:
            return None
        seq.append(a)
        ids = [a]
    return None


def lockstep_history(step_pt, step_it, prompt_ids: list[int], max_new_tokens: int, vocab: int, eos: set[int]):
    """Lockstep greedy decoding along the descendant's (IT's) history: at every generated
    position both models pick, IT's token is appended (after the first disagreement too), until
    IT's EOS (kept) or the budget; an EOS both pick before any disagreement ends it too (no
    event). Returns ``(history, pt_picks)``: the models disagreed wherever the two differ."""
    history, picks = [], []
    ids, cache_pt, cache_it = prompt_ids, None, None
    for _ in range(max_new_tokens):
        logits_pt, cache_pt = step_pt(ids, cache_pt)
        logits_it, cache_it = step_it(ids, cache_it)
        a, c = _argmax(logits_pt, vocab), _argmax(logits_it, vocab)
        history.append(c)
        picks.append(a)
        if c in eos:
            break
        ids = [c]
    return history, picks


def hf_step(model, device: str):
    def step(ids, cache):
        out = model(torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        return out.logits[0, -1], out.past_key_values
    return step


@contextlib.contextmanager
def replace_input(layer, state: torch.Tensor):
    """Forward pre-hook: the hidden state entering ``layer`` becomes ``state``."""
    def hook(module, args, kwargs):
        if args:
            return (state,) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = state
        return args, kwargs
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def paper_style(pt, it, prompts: dict[str, list[int]], boundaries: list[int], max_new_tokens: int,
                vocab: int, eos: set[int], device: str):
    L = pt.config.num_hidden_layers
    events, cells, work = {}, {}, 0
    step_pt, step_it = hf_step(pt, device), hf_step(it, device)
    for pid, ids in prompts.items():
        event = lockstep(step_pt, step_it, ids, max_new_tokens, vocab, eos)
        steps = max_new_tokens if event is None else event[0] + 1
        work += 2 * (len(ids) + steps - 1) * L  # prompt prefill + one token per later step, both models
        if event is None:
            continue
        position, t_pt, t_it, prefix = event
        events[pid] = event
        rows, passes_work = _six_passes(pt, it, prefix, t_pt, t_it, boundaries, device)
        work += passes_work
        cells.update({f"{pid}@{b}": row for b, row in rows.items()})
    return events, cells, work


def _six_passes(pt, it, prefix: list[int], t_pt: int, t_it: int, boundaries: list[int], device: str):
    """The authors' cells of one event: two natural passes with every hidden state, then four
    passes per boundary with the residual entering layer b replaced (each late stack read out by
    its own head). Returns ``({b: cells}, token-layers)``."""
    L = pt.config.num_hidden_layers
    x = torch.tensor([prefix], device=device)
    n = len(prefix)
    out_pt = pt(x, use_cache=False, output_hidden_states=True)
    out_it = it(x, use_cache=False, output_hidden_states=True)
    work, rows = 2 * n * L, {}
    for b in boundaries:
        u_pt, u_it = out_pt.hidden_states[b], out_it.hidden_states[b]
        row = {}
        for name, model, state in (("upt_lpt", pt, u_pt), ("uit_lit", it, u_it),
                                   ("upt_lit", it, u_pt), ("uit_lpt", pt, u_it)):
            with replace_input(model.model.layers[b], state):
                logits = model(x, use_cache=False).logits[0, -1]
            row[name] = _y(logits, t_pt, t_it)
            work += n * L
        rows[b] = row
    return rows, work


def paper_style_kinds(pt, it, tokenizer, prompts: dict[str, list[int]], boundaries: list[int], max_new_tokens: int,
                      vocab: int, eos: set[int], device: str):
    """The authors' pipeline with its default event kinds. Returns ``(events, cells, work,
    kind_events, kind_cells)``: the first divergences as :func:`paper_style` returns them, and
    every kind's event keyed ``"<prompt id>/<kind>"`` (cells ``"<prompt id>/<kind>@<b>"``). The
    kinds are told apart with crosspatch's own token rule (``find_event_kinds``: a definition,
    not the cost measured here: it runs on token ids already decoded)."""
    from crosspatch.core.tokens import TokenDescriber, find_event_kinds

    L = pt.config.num_hidden_layers
    describe = TokenDescriber(tokenizer)
    events, cells, kind_events, kind_cells, work = {}, {}, {}, {}, 0
    step_pt, step_it = hf_step(pt, device), hf_step(it, device)
    for pid, ids in prompts.items():
        history, picks = lockstep_history(step_pt, step_it, ids, max_new_tokens, vocab, eos)
        work += 2 * (len(ids) + len(history) - 1) * L  # prompt prefill + one token per later step, both models
        found = find_event_kinds(history, picks, describe, describe.text, ids[-1], describe.continues)  # none: no disagreement
        scored: dict[tuple, dict] = {}
        for kind, j in found.items():
            event = (j, picks[j], history[j], ids + history[:j])
            if event[:3] not in scored:  # kinds on one event share its passes, as the authors count it once
                scored[event[:3]], w = _six_passes(pt, it, event[3], event[1], event[2], boundaries, device)
                work += w
            kind_events[f"{pid}/{kind}"] = event
            for b, row in scored[event[:3]].items():
                kind_cells[f"{pid}/{kind}@{b}"] = row
            if kind == "first_diff":
                events[pid] = event
                cells.update({f"{pid}@{b}": row for b, row in scored[event[:3]].items()})
    return events, cells, work, kind_events, kind_cells


def nnsight_style(pt, it, prompts: dict[str, list[int]], boundaries: list[int], max_new_tokens: int,
                  vocab: int, eos: set[int], device: str, batch_size: int):
    from nnsight import NNsight

    L = pt.config.num_hidden_layers
    wrapped = {"pt": NNsight(pt), "it": NNsight(it)}
    work = 0

    def nn_step(name):
        model = wrapped[name]

        def step(ids, cache):
            saved = {}
            with model.trace(torch.tensor([ids], device=device), past_key_values=cache, use_cache=True):
                saved["out"] = model.output.save()
            return saved["out"].logits[0, -1], saved["out"].past_key_values
        return step

    events = {}
    for pid, ids in prompts.items():
        event = lockstep(nn_step("pt"), nn_step("it"), ids, max_new_tokens, vocab, eos)
        steps = max_new_tokens if event is None else event[0] + 1
        work += 2 * (len(ids) + steps - 1) * L
        if event is not None:
            events[pid] = event

    cells = {}
    for chunk, x, mask, last, rows in event_batches(events, batch_size, device):
        states, natural = {}, {}
        for name in ("pt", "it"):
            model, saved = wrapped[name], {}  # filled inside the trace (nnsight runs its body separately)
            with model.trace(x, attention_mask=mask, use_cache=False):
                for b in boundaries:
                    saved[b] = model.model.layers[b - 1].output.save()
                saved["logits"] = model.lm_head.output[rows, last].save()
            states[name] = {b: _first(saved[b]) for b in boundaries}
            natural[name] = saved["logits"]
        work += 2 * int(mask.sum()) * L
        for b in boundaries:
            crossed = {}
            for name, other in (("it", "pt"), ("pt", "it")):
                model, saved = wrapped[name], {}
                with model.trace(x, attention_mask=mask, use_cache=False):
                    layer_out = model.model.layers[b - 1].output
                    if isinstance(layer_out, tuple):
                        model.model.layers[b - 1].output = (states[other][b],) + layer_out[1:]
                    else:
                        model.model.layers[b - 1].output = states[other][b]
                    saved["logits"] = model.lm_head.output[rows, last].save()
                crossed[name] = saved["logits"]
            work += 2 * int(mask.sum()) * L
            cell_rows(events, chunk, b, natural, crossed, cells)
    return events, cells, work


def event_batches(events: dict[str, tuple], batch_size: int, device: str):
    """Events sorted by prefix length, in batches: ``(ids, right-padded prefixes, mask, last real
    position, row index)``."""
    order = sorted(events, key=lambda k: len(events[k][3]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        x, mask, last = right_padded([events[k][3] for k in chunk], device)
        yield chunk, x, mask, last, torch.arange(len(chunk), device=device)


def cell_rows(events: dict, chunk: list[str], b: int, natural: dict, crossed: dict, cells: dict) -> None:
    """The four cells of each event of ``chunk`` at boundary ``b`` (each late stack's own head)."""
    for i, k in enumerate(chunk):
        _, t_pt, t_it, _ = events[k]
        cells[f"{k}@{b}"] = {"upt_lit": _y(crossed["it"][i], t_pt, t_it), "uit_lit": _y(natural["it"][i], t_pt, t_it),
                             "upt_lpt": _y(natural["pt"][i], t_pt, t_it), "uit_lpt": _y(crossed["pt"][i], t_pt, t_it)}


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def right_padded(seqs: list[list[int]], device: str):
    n = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    last = torch.tensor([len(s) - 1 for s in seqs])
    return x.to(device), mask.to(device), last.to(device)


def lower_bound(pt, it, events: dict[str, tuple], boundaries: list[int], device: str, batch_size: int):
    """Cells of the given events with the least model work: 2 full + 2 late-only passes."""
    L = pt.config.num_hidden_layers
    cells, work = {}, 0
    for chunk, x, mask, last, rows in event_batches(events, batch_size, device):
        natural, states = {}, {}
        for name, model in (("pt", pt), ("it", it)):
            out = model.model(x, attention_mask=mask, use_cache=False, output_hidden_states=True)
            natural[name] = model.lm_head(out.last_hidden_state[rows, last])
            states[name] = {b: out.hidden_states[b] for b in boundaries}
        work += 2 * int(mask.sum()) * L
        for b in boundaries:
            crossed = {}
            for name, model, other in (("it", it, "pt"), ("pt", pt, "it")):
                crossed[name] = model.lm_head(late_only(model, states[other][b], mask, b)[rows, last])
            work += 2 * int(mask.sum()) * (L - b)
            cell_rows(events, chunk, b, natural, crossed, cells)
    return cells, work


def late_only(model, state: torch.Tensor, mask: torch.Tensor, b: int) -> torch.Tensor:
    """Layers b..L-1 and the final norm of ``model`` on ``state`` (the model's own forward, with
    its layer list cut to the late stack and ``state`` given as the input embeddings)."""
    inner = model.model
    layers = inner.layers
    inner.layers = torch.nn.ModuleList(list(layers)[b:])
    try:
        return inner(inputs_embeds=state, attention_mask=mask, use_cache=False).last_hidden_state
    finally:
        inner.layers = layers


class _RealVocabulary:
    """A logits processor: only the tokenizer's real tokens can be picked (as crosspatch's search)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, input_ids, scores):
        scores[:, self.vocab:] = float("-inf")
        return scores


def fair_floor(pt, it, prompts: dict[str, list[int]], boundaries: list[int], max_new_tokens: int, vocab: int,
               eos: set[int], device: str, batch_size: int, pad_id: int, compile_step: bool = False):
    """The fastest plain Hugging Face way a user would find the same events and cells: greedy
    ``generate`` of the rolling model (IT) with a static KV cache (and ``torch.compile`` of the
    step where it helps: CUDA), keeping its hidden states and logits; one teacher-forced pass of
    the other model (PT) over prompt + rollout (its argmax per position gives the first
    disagreement; its states and logits at the event are PT's natural cells); the two late-only
    passes per boundary. Batched by ``batch_size`` (left padding for generation). A compiled
    ``generate`` (``compile_step``) runs its steps as CUDA graphs, whose outputs the next step
    overwrites: it keeps only its logits (copied out), and the rolling model's states at the event
    prefixes come from one teacher-forced pass of it over them, the way a user gets them there."""
    from transformers import GenerationConfig, LogitsProcessorList

    L = pt.config.num_hidden_layers
    events, cells, work = {}, {}, 0
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, cache_implementation="static",
                              eos_token_id=sorted(eos), pad_token_id=pad_id, return_dict_in_generate=True,
                              output_hidden_states=not compile_step, output_logits=True)
    config.disable_compile = not compile_step  # generate compiles its static-cache step itself (on CUDA)
    order = sorted(prompts, key=lambda k: len(prompts[k]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[k]) for k in chunk)
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, k in enumerate(chunk):
            x[i, width - len(prompts[k]):] = torch.tensor(prompts[k])
            mask[i, width - len(prompts[k]):] = 1
        out = it.generate(x.to(device), attention_mask=mask.to(device), generation_config=config,
                          logits_processor=LogitsProcessorList([_RealVocabulary(vocab)]))
        steps = len(out.logits)
        rollouts = []
        for i in range(len(chunk)):
            row = out.sequences[i, width:].tolist()
            end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            rollouts.append(row[:end])
        work += (int(mask.sum()) + sum(max(len(r) - 1, 0) for r in rollouts)) * L
        # the other model, teacher-forced over prompt + rollout: its pick at every position
        seqs = [prompts[k] + r for k, r in zip(chunk, rollouts)]
        xs, ms, _ = right_padded(seqs, device)
        natural_pt = pt.model(xs, attention_mask=ms, use_cache=False, output_hidden_states=True)
        work += int(ms.sum()) * L
        picks = pt.lm_head(natural_pt.last_hidden_state)[..., :vocab].argmax(-1)
        found = []
        for i, (k, r) in enumerate(zip(chunk, rollouts)):
            n = len(prompts[k])
            for j, tok in enumerate(r):
                t_pt = int(picks[i, n + j - 1])
                if t_pt != tok:
                    events[k] = (j, t_pt, tok, prompts[k] + r[:j])
                    found.append((i, k, j))
                    break
                if tok in eos:
                    break
        if not found:
            continue
        # the rolling model's states at each event prefix: generate's own hidden states, or (compiled)
        # one teacher-forced pass over the event prefixes
        if compile_step:
            x_it, m_it, _ = right_padded([events[k][3] for _, k, _ in found], device)
            forced_it = it.model(x_it, attention_mask=m_it, use_cache=False, output_hidden_states=True).hidden_states
            work += int(m_it.sum()) * L
        pre = None if compile_step else out.hidden_states[0]  # prompt: per layer [B, width, d]; then [B, 1, d] per step
        for b in boundaries:
            u_it, u_pt, lens = [], [], []
            for q, (i, k, j) in enumerate(found):
                if compile_step:
                    u_it.append(forced_it[b][q, : len(prompts[k]) + j])
                else:
                    pad = width - len(prompts[k])
                    parts = [pre[b][i, pad:]] + [out.hidden_states[s][b][i] for s in range(1, min(j, steps - 1) + 1)]
                    u_it.append(torch.cat(parts)[: len(prompts[k]) + j])
                u_pt.append(natural_pt.hidden_states[b][i, : len(prompts[k]) + j])
                lens.append(len(prompts[k]) + j)
            n = max(lens)
            ms_b = torch.zeros(len(found), n, dtype=torch.long, device=device)
            s_it = torch.zeros(len(found), n, u_it[0].shape[-1], dtype=u_it[0].dtype, device=device)
            s_pt = torch.zeros_like(s_it)
            for q, (a, c, m) in enumerate(zip(u_it, u_pt, lens)):
                s_it[q, :m], s_pt[q, :m], ms_b[q, :m] = a, c, 1
            last = torch.tensor([m - 1 for m in lens], device=device)
            rows = torch.arange(len(found), device=device)
            crossed = {"it": it.lm_head(late_only(it, s_pt, ms_b, b)[rows, last]),
                       "pt": pt.lm_head(late_only(pt, s_it, ms_b, b)[rows, last])}
            work += 2 * int(ms_b.sum()) * (L - b)
            natural = {"it": torch.stack([out.logits[j][i] for i, _, j in found]),
                       "pt": pt.lm_head(torch.stack([natural_pt.last_hidden_state[i, len(prompts[k]) + j - 1]
                                                      for i, k, j in found]))}
            cell_rows(events, [k for _, k, _ in found], b, natural, crossed, cells)
    return events, cells, work
