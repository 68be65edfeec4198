#!/usr/bin/env bash
# The test command: builds the environment if needed, then runs the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest -q "$@"
