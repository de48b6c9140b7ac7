#!/usr/bin/env bash
# Set up ./.venv (see setup.sh) and run the fast test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -m "not slow and not browser" -q "$@"
