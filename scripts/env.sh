#!/usr/bin/env bash
# Build (once) and activate the project's Python environment.
#
# The virtualenv lives outside the clone, keyed by a hash of the pinned dependencies (pyproject.toml's
# dependency lists and constraints.txt), so a fresh machine builds it from nothing and later runs
# reuse it:  ${COSYML_ENV_ROOT:-~/.cache/cosyml}/venv-<hash>.     Use:  source scripts/env.sh
# onnxruntime: the CPU build by default; COSYML_ONNXRUNTIME=gpu takes onnxruntime-gpu (a separate venv).
#
# The venv is shared by every clone on the machine and holds only the pinned dependencies; the package
# itself is never installed into it. Each clone gets its own `cosyml` launcher (a folder keyed by the
# clone's path) and puts its own code first on PYTHONPATH, so two clones (or a clone and CI) can run at
# once without rewriting each other's files.
# Sourced: the caller's shell options are saved here and restored at the end, so `set -e` in a script
# that sources this file stays on (and an interactive shell keeps its own settings).
# ($- and `shopt -qo`, not "$(set +o)": a command substitution runs in a subshell that drops errexit.)
_cosyml_caller_flags="$-"
_cosyml_caller_pipefail=0
if shopt -qo pipefail; then _cosyml_caller_pipefail=1; fi
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_py="${COSYML_PYTHON:-python3.11}"
command -v "$_py" >/dev/null 2>&1 || _py=python3
_root="${COSYML_ENV_ROOT:-$HOME/.cache/cosyml}"
mkdir -p "$_root"
_ort="${COSYML_ONNXRUNTIME:-cpu}"
_reqs="$("$_py" - "$_repo/pyproject.toml" "$_ort" <<'PY'
import sys, tomllib
meta = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = meta["optional-dependencies"]
if sys.argv[2] not in ("cpu", "gpu"):
    sys.exit(f"COSYML_ONNXRUNTIME={sys.argv[2]}: expected cpu or gpu")
print("\n".join(meta["dependencies"] + extras[sys.argv[2]] + extras["postgres"] + extras["dev"]))
PY
)"
_key="$( (echo "$_reqs"; cat "$_repo/constraints.txt") | sha256sum | cut -c1-16)"
COSYML_VENV="$_root/venv-$_key"

if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[env] installing ffmpeg (decodes audio formats libsndfile cannot read)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
    || echo "[env] ffmpeg could not be installed; m4a/aac/wma input will be rejected as undecodable"
fi

(
  flock 9  # one builder at a time; others wait and then reuse the result
  if [ ! -f "$COSYML_VENV/.complete" ]; then
    echo "[env] building $COSYML_VENV (first run on this machine: a few minutes)"
    rm -rf "$COSYML_VENV"
    "$_py" -m venv "$COSYML_VENV"
    echo "$_reqs" > "$COSYML_VENV/requirements.txt"
    { "$COSYML_VENV/bin/pip" install -q --upgrade pip "setuptools>=68" wheel \
      && "$COSYML_VENV/bin/pip" install -q -c "$_repo/constraints.txt" -r "$COSYML_VENV/requirements.txt"; } \
      2>&1 | grep -v "^WARNING: Location" || true
    "$COSYML_VENV/bin/python" -c "import torch, mlflow, dvc, whisper, onnxruntime" # fail loudly on a broken build
    touch "$COSYML_VENV/.complete"
  fi
) 9>"$_root/.build.lock"
# This clone's launcher: written to a temporary name and renamed, so a concurrent reader never sees
# half a file; nothing of another clone is touched.
_bin="$_root/clones/$(printf '%s' "$_repo" | sha256sum | cut -c1-16)/bin"
mkdir -p "$_bin"
printf '#!/bin/sh\n# cosyml launcher for the clone %s (written by scripts/env.sh)\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" -m cosyml "$@"\n' \
  "$_repo" "$_repo" "$COSYML_VENV/bin/python" > "$_bin/.cosyml.$$"
chmod +x "$_bin/.cosyml.$$"
mv -f "$_bin/.cosyml.$$" "$_bin/cosyml"
export PATH="$_bin:$COSYML_VENV/bin:$PATH"
# This clone's code is what `python -m cosyml`, pytest and MLflow's subprocesses import.
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
export COSYML_VENV
export DVC_NO_ANALYTICS=1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
unset _repo _py _root _ort _reqs _key _bin
set +eu +o pipefail
case "$_cosyml_caller_flags" in *e*) set -e ;; esac
case "$_cosyml_caller_flags" in *u*) set -u ;; esac
if [ "$_cosyml_caller_pipefail" = 1 ]; then set -o pipefail; fi
unset _cosyml_caller_flags _cosyml_caller_pipefail
