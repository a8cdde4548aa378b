"""The three ways to compute the same first-divergence 2x2 that crosspatch is measured against.

All take plain Hugging Face models (``pt``, ``it``), token-id prompts and a list of boundaries,
and return ``(events, cells, work)``: ``events[prompt_id] = (position, t_pt, t_it, prefix)``,
``cells["<id>@<b>"] = {"upt_lit", "uit_lit", "upt_lpt", "uit_lpt"}`` (each late stack read out
by its own final norm and head) and the token-layers executed.

* :func:`paper_style`: lockstep greedy decoding of both models with KV caches at batch size 1,
  then six full ``use_cache=False`` passes per event (two natural with every hidden state, four
  with the residual entering layer b replaced by a forward pre-hook; the two diagonal ones are
  no-op checks), as the method's authors run it. A sweep adds four patched passes per boundary.
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
        x = torch.tensor([prefix], device=device)
        n = len(prefix)
        out_pt = pt(x, use_cache=False, output_hidden_states=True)
        out_it = it(x, use_cache=False, output_hidden_states=True)
        work += 2 * n * L
        for b in boundaries:
            u_pt, u_it = out_pt.hidden_states[b], out_it.hidden_states[b]
            row = {}
            for name, model, state in (("upt_lpt", pt, u_pt), ("uit_lit", it, u_it),
                                       ("upt_lit", it, u_pt), ("uit_lpt", pt, u_it)):
                with replace_input(model.model.layers[b], state):
                    logits = model(x, use_cache=False).logits[0, -1]
                row[name] = _y(logits, t_pt, t_it)
                work += n * L
            cells[f"{pid}@{b}"] = row
    return events, cells, work


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
