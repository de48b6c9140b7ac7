#!/usr/bin/env bash
# The closed-loop goal protocol (issue 20), resumable: every stage appends to its JSONL and a
# rerun skips finished (controller, prompt, seed) runs. Stages grow the prompt count on all three
# rewards together so that a stopped run leaves comparable partial results.
#   nice bash benchmarks/closed_loop_goal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-.venv/bin/python}
# The learning preset (aisp-learning, half of a stage's time) runs in the first two stages only:
# it is the open-loop reference, not a candidate for the goal.
closed="bon-pool sr-64 sr-128 sr-256 sr-128a smc-32 smc-32s srf-32 srf-64 srf-128w"
for stage in "default 4 all" "default 8 all" "default 12 closed" "default 16 closed" "gemma3-270m 4 closed" \
             "gemma3-270m 8 closed"; do
  set -- $stage
  which=()
  if [ "$3" = closed ]; then which=(--controllers $closed); fi
  for reward in steering reference tradeoff; do
    echo "== $1 $reward prompts=$2 $3 $(date -u +%H:%M:%S)"
    $py benchmarks/closed_loop.py --model "$1" --reward "$reward" --prompts "$2" --seeds 0 1 "${which[@]}"
  done
done
