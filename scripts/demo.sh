#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: set up, prepare the synthetic data, build the trial
# image, create an experiment repository, run the baseline and a few trials with the offline `mutate` proposer on
# the CPU, and write the report.  Environment knobs: TRIALS (default 3), POLICY (default: policies/default.yaml;
# a path, or a built-in policy's name), EXPERIMENT (default ./experiment), AUTORESEARCH_DATA (default
# ~/.cache/autoresearch/data). A relative path is taken from the directory the script is started in.
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD

# A relative path means one from where the script was started (the commands below run in other directories).
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }

TRIALS=${TRIALS:-3}
POLICY=${POLICY:-$ROOT/policies/default.yaml}
# a policy file by its path; a bare name (default, tiny, h100) is one of the built-in policies
if [ -e "$(absolute "$POLICY")" ]; then POLICY=$(absolute "$POLICY"); fi
EXPERIMENT=$(absolute "${EXPERIMENT:-$ROOT/experiment}")
AUTORESEARCH_DATA=$(absolute "${AUTORESEARCH_DATA:-$HOME/.cache/autoresearch/data}")
export AUTORESEARCH_DATA

bash scripts/setup.sh

echo "== data: $AUTORESEARCH_DATA"
if [ -f "$AUTORESEARCH_DATA/manifest.json" ]; then
  echo "already prepared (delete it, or run 'autoresearch prepare synthetic --out $AUTORESEARCH_DATA --force', to redo)"
else
  autoresearch prepare synthetic --out "$AUTORESEARCH_DATA"
fi

echo "== trial image"
autoresearch build

echo "== experiment repository: $EXPERIMENT"
[ -d "$EXPERIMENT/.git" ] || autoresearch init "$EXPERIMENT"
cd "$EXPERIMENT"

TAG=demo-$(date +%Y%m%d-%H%M%S)
echo "== run $TAG: baseline + $TRIALS mutate trials ($POLICY)"
autoresearch run --tag "$TAG" --policy "$POLICY" --proposer mutate --max-trials "$TRIALS"
autoresearch report --tag "$TAG"
echo "== done: $EXPERIMENT/runs/$TAG/report.html (report.md, progress.png, loss_curves.png); branch autoresearch/$TAG holds the kept changes"
