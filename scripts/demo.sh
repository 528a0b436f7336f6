#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: set up, prepare the synthetic data, build the trial
# image, create an experiment repository, run the baseline and a few trials with the offline `mutate` proposer on
# the CPU, and write the report.  Environment knobs: TRIALS (default 3), POLICY (default: policies/default.yaml),
# EXPERIMENT (default ./experiment), AUTORESEARCH_DATA (default ~/.cache/autoresearch/data).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TRIALS=${TRIALS:-3}
POLICY=${POLICY:-$ROOT/policies/default.yaml}
EXPERIMENT=${EXPERIMENT:-$ROOT/experiment}
export AUTORESEARCH_DATA=${AUTORESEARCH_DATA:-$HOME/.cache/autoresearch/data}

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
echo "== done: $EXPERIMENT/runs/$TAG/report.md, progress.png; branch autoresearch/$TAG holds the kept changes"
