#!/usr/bin/env bash
# The test command: builds the environment if needed, installs the system tools the tests use
# (ffmpeg; headless chromium + a CJK font to render the evaluation report; a PostgreSQL server for the
# Optuna multi-worker test), then runs the suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium and fonts-noto-cjk (the report test renders a page headless)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) \
    || echo "[test] chromium could not be installed; the browser test will be skipped"
fi
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing postgresql (tune's multi-worker test starts a throwaway server)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "[test] postgresql could not be installed; the PostgreSQL tests will be skipped"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest -q "$@"
