"""Does the decoding mode a device chooses find the eager events, with the eager cells? On the
zoo's text pair and its vision-language pair (image prompts), float32 and the exact plan (cells
from the same full passes): ``eager`` against ``static`` (the default on CUDA) and, with
``--compiled``, ``compiled``. The CPU suite tests this on tiny models; this script checks it where
the default differs, on the device itself (``benchmarks/gpu_check.sh exact``).

    python benchmarks/decode_exactness.py --device cuda --compiled --out docs/benchmarks/decode-exactness-gpu.json

Prints one line per pair and mode (same events, largest cell difference) and exits 1 when a mode
finds other events. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path


def _events(result) -> dict:
    return {r.key: (r.position, r.t_pt, r.t_it) for r in result.records}


def _largest_gap(a, b) -> float:
    cells = {r.key: r.cells for r in b.records}
    return max((abs(y - cells[r.key][readout][c]) for r in a.records if r.key in cells
                for readout, ys in r.cells.items() for c, y in ys.items()), default=0.0)


def _vision_prompts(count: int) -> list[dict]:
    """The zoo's chart prompts with their images' paths resolved (the file names them relative to itself)."""
    from crosspatch.zoo import zoo_path

    charts = zoo_path() / "prompts" / "charts.jsonl"
    rows = [json.loads(line) for line in charts.read_text(encoding="utf-8").splitlines()[:count]]
    return [dict(r, image=str((charts.parent / r["image"]).resolve())) for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=24, help="prompts per pair")
    ap.add_argument("--compiled", action="store_true", help="check --decode compiled too (compiles each shape)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    args = ap.parse_args(argv)

    import torch

    from crosspatch.execution import load_pair
    from crosspatch.runner.pipeline import run
    from crosspatch.zoo import zoo_path

    zoo = zoo_path()
    raw = [json.loads(line) for line in (zoo / "prompts" / "raw.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = {"zoo text pair (base vs it-full)": ("base", "it-full", raw[: args.prompts]),
             "zoo vision-language pair (vl-base vs vl-it, chart prompts)": ("vl-base", "vl-it",
                                                                            _vision_prompts(args.prompts))}
    modes = ["static"] + (["compiled"] if args.compiled else [])
    options = dict(boundary=0.6, max_new_tokens=32, bootstrap=0, progress=False, controls="none", plan="exact")
    rows, failed = [], False
    for name, (base, tuned, prompts) in pairs.items():
        pair = load_pair(str(zoo / base), tuned=str(zoo / tuned), dtype="float32", device=args.device)
        eager = run(pair, prompts, decode="eager", **options)
        for mode in modes:
            other = run(pair, prompts, decode=mode, **options)
            same = _events(other) == _events(eager)
            used = other.summary["cost_this_session"].get("decode")
            rows.append({"pair": name, "mode": mode, "decode_used": used, "events": len(eager.records),
                         "same_events": same, "largest_cell_difference": _largest_gap(eager, other)})
            failed |= not same
            print(f"{name}: {mode} ({used}) {'the same' if same else 'OTHER'} {len(eager.records)} events, "
                  f"largest cell difference {rows[-1]['largest_cell_difference']:.3g}")
        pair.release()
    if args.out is not None:
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
