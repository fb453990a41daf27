#!/usr/bin/env bash
# The package as users get it: build the wheel, install it in a clean venv (torch first, then the
# wheel with its dependencies), and from a directory outside the repository run
# `adapter-convert --help`, a direct conversion and a short alignment (scripts/wheel_smoke.py).
# Catches data files left out of package-data, which an editable install never notices.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PYTHON="${PYTHON:-python3}"
PIP=(-m pip --disable-pip-version-check --quiet)
start=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/adapter-convert-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# build from a copy of the sources: no build/ or *.egg-info in the tree, nothing stale from an earlier build
mkdir "$WORK/src"
cp -R pyproject.toml README.md adapter_convert "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" "${PIP[@]}" wheel --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=("$WORK"/dist/adapter_convert-*.whl)
if [ "${#WHEEL[@]}" -ne 1 ] || [ ! -f "${WHEEL[0]}" ]; then
  echo "check_wheel: expected one built wheel, got: ${WHEEL[*]}" >&2
  exit 1
fi
echo "check_wheel: built $(basename "${WHEEL[0]}") in $((SECONDS - start)) s" >&2
"$VPY" "${PIP[@]}" install "torch==2.13.0"   # the CPU wheel on this machine; the package accepts torch>=2.4
"$VPY" "${PIP[@]}" install "${WHEEL[0]}"
echo "check_wheel: installed in a clean venv at $((SECONDS - start)) s" >&2

mkdir "$WORK/run"
cd "$WORK/run"   # outside the repository: the installed package gets imported, not the source tree
"$WORK/venv/bin/adapter-convert" --help >/dev/null
"$VPY" "$REPO/scripts/wheel_smoke.py" "$WORK/run/smoke"
echo "check_wheel: passed in $((SECONDS - start)) s" >&2
