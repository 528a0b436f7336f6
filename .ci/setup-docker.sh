#!/usr/bin/env bash
# The Docker side of set-up, for CI and fresh machines (root, Debian 12): the engine, then the trial image.
# Idempotent and cached across runs on the same machine; says what it does at each step.
#   1. the engine: Debian's docker.io when dockerd is missing (and docker-compose, to validate compose.yaml)
#   2. a running daemon: start dockerd when none answers, and wait for it
#   3. the air-gapped base image (debootstrap + docker import; images/build-base.sh) when its tag is missing
#   4. the wheelhouse (pip download; images/build-wheelhouse.sh), then the trial image when its content-hash
#      tag is missing (python -m runner.sandbox.images build --airgapped)
# Environment: FLAVOURS (default "cpu"; "cpu cuda" also builds the CUDA image, about 3.5 GB of wheels),
# AUTORESEARCH_REGISTRY_BASE=1 builds on python:3.11-slim from a registry instead of the local base.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FLAVOURS=${FLAVOURS:-cpu}
say() { echo "[setup-docker] $*"; }

# 1. engine
if ! command -v dockerd >/dev/null 2>&1; then
  say "no dockerd: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io >/dev/null
else
  say "engine installed: $(dockerd --version 2>/dev/null | head -n1)"
fi
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  say "no compose: installing Debian's docker-compose (the tests validate compose.yaml with it)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null || say "could not install docker-compose"
fi

# 2. daemon
if docker info >/dev/null 2>&1; then
  say "engine answers: $(docker info --format 'server {{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}')"
else
  say "no engine answers: starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    say "dockerd did not answer within 60 s; last lines of /var/log/dockerd.log:"
    tail -n 20 /var/log/dockerd.log >&2
    exit 1
  fi
  say "engine up: $(docker info --format 'server {{.ServerVersion}}')"
fi

# 3 + 4. images
for flavour in $FLAVOURS; do
  if [[ "${AUTORESEARCH_REGISTRY_BASE:-0}" == 1 ]]; then
    say "trial image ($flavour) on python:3.11-slim from a registry"
    tag=$($PY -m runner.sandbox.images build --flavour "$flavour" --registry)
  else
    if [[ "$flavour" == cuda ]]; then images/build-base.sh --with-cc; else images/build-base.sh; fi
    images/build-wheelhouse.sh "$flavour"
    tag=$($PY -m runner.sandbox.images tag --flavour "$flavour" --airgapped)
    if docker image inspect "$tag" >/dev/null 2>&1; then
      say "trial image $tag exists; reusing it"
    else
      say "building trial image $tag (air-gapped: local base + wheelhouse)"
      start=$(date +%s)
      tag=$($PY -m runner.sandbox.images build --flavour "$flavour" --airgapped --quiet)
      say "built $tag in $(( $(date +%s) - start )) s"
    fi
  fi
  say "trial image ($flavour): $tag = $(docker image inspect -f '{{.Id}}' "$tag" | cut -c1-19)"
done
