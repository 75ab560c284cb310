#!/usr/bin/env bash
# Create or update .venv and run the test suite. Extra arguments go to pytest.
# TEST_WORKERS (default 2) test processes, whole files to a process; TEST_WORKERS=0 runs in this process.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
source scripts/setup_env.sh requirements-dev.txt
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
python -m ruff check .
python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
