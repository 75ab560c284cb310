#!/usr/bin/env bash
# Create or update .venv and run the test suite. Extra arguments go to pytest.
# TEST_WORKERS (default 2) test processes, whole files to a process; TEST_WORKERS=0 runs in this process.
# With several processes each computes on one thread (OMP_NUM_THREADS=1 unless set): two processes of two threads
# each on two cores made the heaviest tests three to six times slower than alone.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
source scripts/setup_env.sh requirements-dev.txt
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
python -m ruff check .
WORKERS="${TEST_WORKERS:-2}"
if [ "$WORKERS" != 0 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"; fi
python -m pytest -n "$WORKERS" --dist loadfile "$@"
