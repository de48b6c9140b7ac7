#!/usr/bin/env bash
# The closed-loop goal protocol (issue 20), resumable: every stage appends to its JSONL and a
# rerun skips finished (controller, prompt, seed) runs. Stages grow the prompt count on all three
# rewards together so that a stopped run leaves comparable partial results.
#   nice bash benchmarks/closed_loop_goal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-.venv/bin/python}
for stage in "default 4" "default 8" "gemma3-270m 4" "default 12" "default 16" "gemma3-270m 8"; do
  set -- $stage
  for reward in steering reference tradeoff; do
    echo "== $1 $reward prompts=$2 $(date -u +%H:%M:%S)"
    $py benchmarks/closed_loop.py --model "$1" --reward "$reward" --prompts "$2" --seeds 0 1
  done
done
