#!/usr/bin/env bash
# Set up ./.venv (see setup.sh) and run the main job: align one prompt on the default model
# (SmolLM2-135M-Instruct, packaged; converted once to a safetensors cache) and show it
# against the plain model. Usage: bash scripts/main.sh ["PROMPT"] [ctrlalign align options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
prompt=${1:-"Write one sentence about your weekend."}
shift || true
exec .venv/bin/ctrlalign align "$prompt" "$@"
