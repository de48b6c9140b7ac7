#!/usr/bin/env bash
# The GPU checks and measurements of the rollout engine, in steps that each fit one
# 10-minute call on a lent machine. Logs and JSON go to $OUT (the device tool's output
# folder) or, without it, to benchmarks/results/.
#
#   bash benchmarks/gpu_session.sh tests      # GPU correctness tests (CUDA graphs, bf16, compile)
#   bash benchmarks/gpu_session.sh bench      # Llama-3-8B shape, batch 512 and 32, engine only
#   bash benchmarks/gpu_session.sh ablation   # batch 512: what fuse_weights / kv_block / compile buy
#   bash benchmarks/gpu_session.sh generate   # transformers generate at batch 512 and 32 (baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=.
py=${PYTHON:-python3}
case "${1:-}" in
  tests)
    $py -m pytest -q -m gpu tests/test_static_engine.py tests/test_causal_lm.py -p no:cacheprovider 2>&1 \
      | tee "$out/gpu_tests.log" ;;
  bench)
    $py benchmarks/gpu_rollout.py --models llama3-8b --batches 512,32 --no-generate --reps 2 \
      --out "$out/gpu_rollout_8b.json" 2>&1 | tee "$out/gpu_rollout_8b.log" ;;
  ablation)
    $py benchmarks/gpu_rollout.py --models llama3-8b --batches 512 --no-generate --reps 1 --ablation \
      --out "$out/gpu_ablation_8b_b512.json" 2>&1 | tee "$out/gpu_ablation_8b_b512.log" ;;
  generate)
    $py benchmarks/gpu_rollout.py --models llama3-8b --batches 512,32 --reps 1 \
      --out "$out/gpu_rollout_8b_with_generate.json" 2>&1 | tee "$out/gpu_rollout_8b_with_generate.log" ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh tests|bench|ablation|generate" >&2
    exit 2 ;;
esac
