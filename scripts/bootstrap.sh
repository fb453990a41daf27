#!/usr/bin/env bash
# Set up .venv with everything adapter-convert, its tests and its demo need. Safe to re-run.
# torch is pinned to 2.13.0 here and installed first: that release is a CPU wheel, and an unpinned
# torch would pull a multi-GB CUDA build. The package itself accepts torch>=2.4 (pyproject.toml),
# so the -e install below keeps this torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
