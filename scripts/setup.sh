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

echo "== headless browser (the tests load report.html in it)"
if ! command -v chromium >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
fi

echo "== docker engine and trial image"
bash .ci/setup-docker.sh
