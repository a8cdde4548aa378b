"""The verdict's false-positive rate on harmless descendants (docs/verdict.md): 50 synthetic
nulls of a tiny fine-tune, each scored against the base as if it were the descendant, with two
further synthetic nulls as the yardstick. Writes docs/benchmarks/null-fpr.json.

    python benchmarks/null_fpr.py [--count 50]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crosspatch.testing.nulls import null_false_positives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "benchmarks" / "null-fpr.json")
    args = parser.parse_args()
    started = time.perf_counter()
    outcome = null_false_positives(args.count, prompts=args.prompts)
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(outcome, indent=2) + "\n")
    print(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main()
