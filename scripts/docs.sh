#!/usr/bin/env bash
# Build or serve the documentation site (mkdocs-material + mkdocstrings, see mkdocs.yml).
#   bash scripts/docs.sh          build into ./site with --strict (any warning fails)
#   bash scripts/docs.sh serve    live preview at http://127.0.0.1:8000 (extra args go to mkdocs)
# Uses ./.venv if present; needs the docs extra: pip install -e ".[docs]", and the npm registry
# (npm, or HTTPS to it) on the first build, for MathJax (scripts/vendor_mathjax.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
if ! python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null; then
  echo "docs tooling missing: run  python -m pip install -e \".[docs]\"" >&2
  exit 1
fi
export NO_MKDOCS_2_WARNING=1
cmd=${1:-build}
shift || true
# MathJax inside the site, not from a CDN: the pinned npm release, fetched once (needs the npm
# registry on the first build only), into docs/vendor/mathjax/ (git-ignored).
python scripts/vendor_mathjax.py
case "$cmd" in
  build) exec python -m mkdocs build --strict "$@" ;;
  serve) exec python -m mkdocs serve --strict "$@" ;;
  *) echo "usage: bash scripts/docs.sh [build|serve] [mkdocs options]" >&2; exit 2 ;;
esac
