"""What remembering weight digests saves: the sha256 of a weight file read and hashed, against the
same file's digest remembered from an earlier run (``crosspatch.models.digests``), in one run.

    python benchmarks/digests.py --gib 1

Writes nothing; the numbers go to docs/benchmarks/findings.md by hand.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the weight file to hash (GiB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        os.environ["CROSSPATCH_CACHE_DIR"] = str(Path(root) / "cache")
        from crosspatch.models.digests import sha256_file

        weights = Path(root) / "model.safetensors"
        block = os.urandom(64 << 20)
        with open(weights, "wb") as fh:
            for _ in range(max(1, round(args.gib * 16))):
                fh.write(block)
        size = weights.stat().st_size
        started = time.perf_counter()
        read = sha256_file(weights)
        first = time.perf_counter() - started
        started = time.perf_counter()
        remembered = sha256_file(weights)
        again = time.perf_counter() - started
        assert read == remembered
        print(f"{size / 2**30:.2f} GiB: read and hashed {first:.3f} s ({size / first / 2**30:.2f} GiB/s), "
              f"remembered {again * 1e3:.2f} ms: {first / again:.0f}x")


if __name__ == "__main__":
    main()
