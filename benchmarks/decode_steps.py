"""Where a decoding step's time goes: plain Hugging Face decoding against crosspatch's cached
decoder, on the same batch of prompts, one addition at a time.

    python benchmarks/decode_steps.py --workload mid                                # CPU, fp32
    python benchmarks/decode_steps.py --workload mid --device cuda --dtype bfloat16 --rows 96

The divergence search is sequential greedy decoding; on a GPU its steps, not the model's
arithmetic, set the wall time (docs/benchmarks/findings.md). Every variant prefills the same rows
and then decodes ``--steps`` greedy tokens (no row ever leaves, so all variants do the same
work); each adds one thing to the one before:

- ``hf-equal``: ``model(ids, cache=DynamicCache)`` on prompts cut to one length (no
  padding, no mask: the cheapest a batched decoder can be);
- ``hf-padded``: the real prompt lengths, left-padded, with the attention mask and position ids
  every batched decoder needs;
- ``crosspatch``: :class:`crosspatch.execution.search.CachedDecoder` (the same inputs, the argmax
  over the real vocabulary, the work counter);
- ``crosspatch-capture``: the same, keeping every row's boundary and final-norm states, as the
  divergence search does.

Prints the prefill time and the mean time per step of each, and each step's ratio to
``hf-padded``; ``--json PATH`` writes them. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import sync  # noqa: E402
from workloads import workload_paths  # noqa: E402


def hf_decode(handle, prompts: list[list[int]], steps: int, pad: int, masked: bool, device: str) -> tuple[float, float]:
    """Prefill then ``steps`` greedy tokens with the model's own forward; (prefill s, s per step)."""
    from crosspatch.execution.caches import new_dynamic_cache
    from crosspatch.models.forward import cache_keyword

    model = handle.anatomy.model
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"attention_mask": mask, "position_ids": positions} if masked else {}
    kw = cache_keyword(handle)
    cache = new_dynamic_cache(handle, growing=False)  # plain Hugging Face: a cache that concatenates
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache}, **extra).logits
        sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            tokens = logits[:, -1].argmax(-1, keepdim=True)
            tokens.tolist()  # the search decides on the host each step
            if masked:
                mask = torch.cat([mask, torch.ones_like(tokens)], 1)
                positions = positions[:, -1:] + 1
                extra = {"attention_mask": mask, "position_ids": positions}
            logits = model(input_ids=tokens, use_cache=True, logits_to_keep=1, **{kw: cache}, **extra).logits
        sync(device)
    return prefill, (time.perf_counter() - start) / steps


def crosspatch_decode(pair, handle, prompts: list[list[int]], steps: int, capture: list[int] | None,
                      device: str) -> tuple[float, float]:
    from crosspatch.execution.search import CachedDecoder
    from crosspatch.models import masked_argmax
    from crosspatch.models.forward import counting_work

    decoder = CachedDecoder(handle, pair, capture)
    with counting_work():
        sync(device)
        start = time.perf_counter()
        logits = decoder.start(prompts)
        sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            tokens = masked_argmax(logits, pair.real_vocab).tolist()
            logits = decoder.feed(torch.tensor([[t] for t in tokens]))[:, 0]
        sync(device)
    return prefill, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="mid", choices=["zoo", "mid", "large"])
    parser.add_argument("--root", default="/tmp/crosspatch-bench", help="where benchmark workloads are built")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rows", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--steps", type=int, default=32, help="greedy steps after the prefill")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant; the fastest is kept")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from crosspatch.execution import load_pair
    from crosspatch.inputs.prompts import load_prompts

    paths = workload_paths(args.workload, Path(args.root))
    if not Path(paths["base"]).exists():
        raise SystemExit(f"no {args.workload} workload under {args.root}: build it with "
                         f"`python benchmarks/bench_crosspatch.py --suite smoke` (or any suite) first")
    pair = load_pair(paths["base"], tuned=paths["tuned"], dtype=args.dtype, device=args.device, hash_weights=False)
    tok = pair.tokenizers[pair.base]
    prompts = [tok(p.prompt)["input_ids"] for p in load_prompts(paths["prompts"])[: args.rows]]
    shortest = min(len(p) for p in prompts)
    equal = [p[:shortest] for p in prompts]
    boundary = round(0.6 * pair.num_layers)
    with pair.use(pair.base) as handle:
        variants = {
            "hf-equal": lambda n: hf_decode(handle, equal, n, pair.pad_id, False, args.device),
            "hf-padded": lambda n: hf_decode(handle, prompts, n, pair.pad_id, True, args.device),
            "crosspatch": lambda n: crosspatch_decode(pair, handle, prompts, n, None, args.device),
            "crosspatch-capture": lambda n: crosspatch_decode(pair, handle, prompts, n, [boundary], args.device),
        }
        for fn in variants.values():  # warm-up: kernels, allocator pools
            fn(2)
        results = {}
        for name, fn in variants.items():
            runs = [fn(args.steps) for _ in range(args.repeats)]
            results[name] = {"prefill_s": min(r[0] for r in runs), "step_ms": 1e3 * min(r[1] for r in runs)}
    base = results["hf-padded"]["step_ms"]
    widths = sorted(len(p) for p in prompts)
    print(f"{args.workload}, {args.dtype} on {args.device}: {len(prompts)} rows, prompts of {widths[0]}-{widths[-1]} "
          f"tokens (hf-equal: all cut to {shortest}), {args.steps} steps, best of {args.repeats}")
    print(f"{'variant':<20} {'prefill s':>10} {'ms/step':>9} {'vs hf-padded':>13}")
    for name, r in results.items():
        r["vs_hf_padded"] = r["step_ms"] / base
        print(f"{name:<20} {r['prefill_s']:>10.3f} {r['step_ms']:>9.2f} {r['vs_hf_padded']:>12.2f}x")
    if args.json:
        env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
               else platform.machine(), "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "environment": env,
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
