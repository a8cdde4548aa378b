#!/usr/bin/env bash
# The GPU measurements of issue #27 in one prepared script: run it first on the CPU with tiny
# settings (`benchmarks/gpu_check.sh --cpu-dry-run`), so that GPU minutes go to measuring, not
# debugging. Each part is one command under 10 minutes; run them one by one where a machine limits
# a command's time:
#
#   benchmarks/gpu_check.sh mid        # mid-size pair (134M, bf16): crosspatch (and its default run), nnsight,
#                                      # paper-style, both floors
#   benchmarks/gpu_check.sh large      # the 1.4B pair: crosspatch, paper-style, both floors
#   benchmarks/gpu_check.sh 7B         # a 7B-class random-init Llama pair built on the GPU: sequential and both
#   benchmarks/gpu_check.sh profile    # where the search's time goes on the GPU
#   benchmarks/gpu_check.sh all        # everything, one after the other
#
# Results merge into docs/benchmarks/gpu-check-<date>.json (the card is named there; the parts of
# one day merge) and docs/benchmarks.md is re-rendered with it beside the earlier GPU results. The machine needs the project and its bench extra installed (a GPU machine without
# a package index: `pip download nnsight psutil -d wheels/` here, then `pip install --no-index
# --find-links wheels/ nnsight psutil` there).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=()
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
    dry=(--cpu-dry-run)
    shift
fi
part="${1:-all}"
case "$part" in
    all) parts=(mid large 7B profile) ;;
    mid|large|7B|profile) parts=("$part") ;;
    *) echo "usage: $0 [--cpu-dry-run] [mid|large|7B|profile|all]" >&2; exit 2 ;;
esac
python -c "import crosspatch, nnsight" || { echo "install crosspatch with its bench extra first" >&2; exit 2; }
if [[ ${#dry[@]} -eq 0 ]]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --cpu-dry-run')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
out=(--out "$PWD/docs/benchmarks/gpu-check-$(date +%Y%m%d).json")
[[ ${#dry[@]} -gt 0 ]] && out=()  # the dry run writes to /tmp
for p in "${parts[@]}"; do
    echo "== $p"
    python benchmarks/bench_crosspatch.py --suite gpu "${dry[@]}" "${out[@]}" --only "$p"
done
