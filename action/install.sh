#!/usr/bin/env bash
# The action's install step: torch first (the CPU wheel unless told otherwise: an unpinned torch
# pulls a multi-GB CUDA build), then adapter-convert, a PyPI release or the action's own checkout.
set -euo pipefail
PY="${INPUT_PYTHON:-python3}"
if [ -n "${INPUT_TORCH_VERSION:-}" ]; then
  if [ -n "${INPUT_TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install --disable-pip-version-check "torch==${INPUT_TORCH_VERSION}" --index-url "$INPUT_TORCH_INDEX_URL"
  else
    "$PY" -m pip install --disable-pip-version-check "torch==${INPUT_TORCH_VERSION}"
  fi
fi
if [ -n "${INPUT_VERSION:-}" ]; then
  "$PY" -m pip install --disable-pip-version-check "adapter-convert==${INPUT_VERSION}"
else
  "$PY" -m pip install --disable-pip-version-check "${ACTION_PATH:?ACTION_PATH must name the folder of action.yml}"
fi
"$PY" -m adapter_convert version
