#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine (root): the Python package, the Docker Engine, the trial image.
# Idempotent: everything already present is reused. Used by the README's two commands and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== python package"
# The CPU build of torch first: a plain `pip install torch` would pull a multi-GB CUDA build.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test,ray]"

echo "== docker engine and trial image"
bash .ci/setup-docker.sh
