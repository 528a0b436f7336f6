"""Benchmark: how much val BPB moves with the trial seed alone, for the unchanged `train.py` (issue 5's noise note).

The seed orders the training data and initialises the model; the code, data and budget stay fixed. The spread
of val BPB over seeds is the noise that a kept change must beat: the policy's `decision.min_delta` should sit above
it, or `baseline_repeats` > 1 should measure it in every run. Runs are unsandboxed (`trainer.direct`), one after
another; run it on an otherwise idle machine.

    python benchmarks/seed_noise.py --data DIR [--budget 60] [--seeds 4] [--preset cpu]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.direct import direct_trial  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared data directory")
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--seeds", type=int, default=4, help="number of seeds: 1337, 1338, ... (default 4)")
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args()
    if args.seeds < 2:
        raise SystemExit("--seeds must be at least 2 to measure a spread")
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-bench-seeds-"))
    rows = []
    try:
        for k in range(args.seeds):
            seed = 1337 + k
            print(f"... seed {seed}", file=sys.stderr, flush=True)
            r = direct_trial(data=args.data, preset=args.preset, budget=args.budget, seed=seed,
                             out=tmp / str(seed), device="cpu")
            if r["status"] != "ok":
                raise SystemExit(f"seed {seed}: status {r['status']}: {r['error']}")
            rows.append((seed, r["val_bpb"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bpbs = [b for _, b in rows]
    print(f"\n### Seed noise ({args.preset} preset, {args.budget:g} s, unchanged train.py, {args.seeds} seeds)\n")
    print("| seed | val BPB |\n|---|---|")
    for seed, b in rows:
        print(f"| {seed} | {b:.6f} |")
    print(f"\nmean {statistics.mean(bpbs):.6f}, sample std {statistics.stdev(bpbs):.6f}, "
          f"range {max(bpbs) - min(bpbs):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
