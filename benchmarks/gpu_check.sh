#!/usr/bin/env bash
# The GPU measurements of issue #27 in one prepared script: run it first on the CPU with tiny
# settings (`benchmarks/gpu_check.sh --cpu-dry-run`), so that GPU minutes go to measuring, not
# debugging. Each part is one command under 10 minutes:
#
#   benchmarks/gpu_check.sh zoo        # the default command on the zoo against the paper-style pipeline (the 5x
#                                      # target's table, fp32; a minute or two)
#   benchmarks/gpu_check.sh mid        # mid-size pair (134M, bf16): crosspatch in each decoding mode, its default
#                                      # run, nnsight, paper-style, both floors
#   benchmarks/gpu_check.sh large      # the 1.4B pair: crosspatch, paper-style, both floors
#   benchmarks/gpu_check.sh 7B         # a 7B-class random-init Llama pair built on the GPU: sequential and both
#   benchmarks/gpu_check.sh profile    # where the search's time goes on the GPU
#   benchmarks/gpu_check.sh batching   # continuous batching in the search, eager and static (the zoo, the mid-size
#                                      # pair in bf16; benchmarks/continuous_batching.py, its own JSON file)
#   benchmarks/gpu_check.sh exact      # the CUDA default decoding (static) and compiled against eager on the zoo's
#                                      # text and vision-language pairs: same events, the cells (decode_exactness.py)
#   benchmarks/gpu_check.sh all        # everything, one after the other
#
# Several parts run one after the other; `PART:SECONDS` stops a part after that many seconds (what
# it measured so far is kept: the results are saved after every method), so that a lease's minutes
# are shared out ahead: `benchmarks/gpu_check.sh mid:240 7B:220 large:100`.
# What a part took on an H200 (2026-12-04; with --repeats 1; each method is a fresh process): the
# 7B-class pair's build (random init on the GPU, 27 GB written) about 2 minutes, a 7B process loading
# it 20-40 s; a method that compiles (the fair floor's generate) tens of seconds per shape. A
# 15-minute lease (a minute to start, at most 10 a call) covers about three parts: e.g. a first call
# `--repeats 1 exact:90 zoo:90 7B:240 mid:150` (the default decoding's exactness on the device, the 5x
# target's table, the memory claim, the fair floor's rows), a second with what remains
# (`mid:300 large:150 batching:120`: a part run again replaces its tables).
# Options before the parts: `--out FILE` (default docs/benchmarks/gpu-check-<date>.json; the parts
# of one file merge), `--repeats N` (timed runs per method, default the benchmark's).
#
# Results name the card; docs/benchmarks.md is re-rendered from every stored result with
# `python benchmarks/bench_crosspatch.py --render`. The machine needs the project importable and its
# bench extra (a GPU machine without a package index: wheels downloaded here, e.g.
# `pip download nnsight ... -d .whl`, installed there with `pip install --no-index .whl/*.whl`).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(command -v python3 || command -v python)  # a GPU image's python3 holds its torch
dry=()
extra=()
out="$PWD/docs/benchmarks/gpu-check-$(date +%Y%m%d).json"
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --cpu-dry-run) dry=(--cpu-dry-run); out=""; shift ;;  # the dry run writes to /tmp
        --out) out="$2"; shift 2 ;;
        --repeats) extra+=(--repeats "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $# -eq 0 ]] && set -- all
parts=()
for p in "$@"; do
    case "${p%%:*}" in
        all) parts+=(exact zoo mid large 7B profile batching) ;;
        exact|zoo|mid|large|7B|profile|batching) parts+=("$p") ;;
        *) echo "usage: $0 [--cpu-dry-run] [--out FILE] [--repeats N] [exact|zoo|mid|large|7B|profile|batching|all][:SECONDS] ..." >&2
           exit 2 ;;
    esac
done
"$python" -c "import crosspatch, nnsight" || { echo "install crosspatch with its bench extra first" >&2; exit 2; }
if [[ ${#dry[@]} -eq 0 ]]; then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --cpu-dry-run')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
[[ -n "$out" ]] && extra+=(--out "$out")
status=0
for p in "${parts[@]}"; do
    name="${p%%:*}"
    limit=""
    [[ "$p" == *:* ]] && limit="${p#*:}"
    echo "== $name${limit:+ (at most $limit s)}"
    start=$SECONDS
    command=("$python" benchmarks/bench_crosspatch.py --suite gpu "${dry[@]}" "${extra[@]}" --only "$name")
    if [[ "$name" == batching ]]; then  # its own script and file (the dry run: the zoo on the CPU, to /tmp)
        if [[ ${#dry[@]} -eq 0 ]]; then
            command=("$python" benchmarks/continuous_batching.py --device cuda --dtype bfloat16
                     --out "$PWD/docs/benchmarks/continuous-batching-gpu.json")
        else
            command=("$python" benchmarks/continuous_batching.py --workloads zoo --out /tmp/continuous-batching-dry.json)
        fi
    fi
    if [[ "$name" == exact ]]; then  # its own script and file (the dry run: a few prompts on the CPU, to /tmp)
        if [[ ${#dry[@]} -eq 0 ]]; then
            command=("$python" benchmarks/decode_exactness.py --device cuda --compiled
                     --out "$PWD/docs/benchmarks/decode-exactness-gpu.json")
        else
            command=("$python" benchmarks/decode_exactness.py --prompts 4 --out /tmp/decode-exactness-dry.json)
        fi
    fi
    if [[ -n "$limit" ]]; then
        # timeout signals its whole process group: the methods' child processes stop with it
        timeout --signal=TERM --kill-after=10 "$limit" "${command[@]}" || { rc=$?; echo "== $name stopped (exit $rc)"; status=1; }
        pkill -f "bench_crosspatch.py --method" || true
    else
        "${command[@]}" || status=1
    fi
    echo "== $name: $((SECONDS - start)) s"
done
exit $status
