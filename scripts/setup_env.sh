#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) and install brainmvp into it.
# Usage: source scripts/setup_env.sh [requirements-file]   (default: requirements.txt)
# Re-installs only when the requirements or pyproject.toml changed since the last run.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="${1:-requirements.txt}"
PYTHON="${PYTHON:-python3}"
VENV="$REPO_ROOT/.venv"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment .venv"
  "$PYTHON" -m venv "$VENV"
fi
digest_of() { cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/$1" "$REPO_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1; }
installed() { [ -f "$VENV/.brainmvp-installed-$(basename "$1")" ] && [ "$(cat "$VENV/.brainmvp-installed-$(basename "$1")")" = "$(digest_of "$1")" ]; }
stamp="$VENV/.brainmvp-installed-$(basename "$REQUIREMENTS")"
digest="$(digest_of "$REQUIREMENTS")"
# requirements-dev.txt includes requirements.txt: a current development install serves both
if installed "$REQUIREMENTS" || { [ "$REQUIREMENTS" = requirements.txt ] && installed requirements-dev.txt; }; then
  echo "[setup] .venv is up to date"
else
  echo "[setup] installing $REQUIREMENTS into .venv (torch is pinned in requirements.txt)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # requirements.txt pins torch first so that no dependency pulls a different build
  "$VENV/bin/python" -m pip install --quiet "$(grep -E '^torch==' "$REPO_ROOT/requirements.txt")"
  "$VENV/bin/python" -m pip install --quiet -r "$REPO_ROOT/$REQUIREMENTS"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO_ROOT"
  echo "$digest" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
