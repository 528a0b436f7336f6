"""Benchmark: how much val BPB moves with the trial seed alone, for the unchanged `train.py` (issue 5's noise note).

The seed orders the training data and initialises the model; the code, data and budget stay fixed. The spread
of val BPB over seeds is the noise that a kept change must beat: the policy's `decision.min_delta` should sit above
it, or `baseline_repeats` > 1 should measure it in every run. Runs are unsandboxed (`trainer.direct`), one after
another; run it on an otherwise idle machine.

    python benchmarks/seed_noise.py --data DIR [--budget 60] [--seeds 4] [--preset cpu]
    python benchmarks/seed_noise.py --data DIR --same-seed     # + the same seed again between the seeds

With --same-seed, seed 1337 runs again between every two seeds (1337, 1338, 1337, 1339, ...), and the spread of
the repeats of one seed is printed beside the spread over seeds. The budget is wall-clock time, so the same seed
does not give the same number twice; which of the two spreads dominates decides whether comparing a candidate
with the baseline run of its own seed (paired) or with the mean of the baseline's runs is the less noisy bar.
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
    ap.add_argument("--same-seed", action="store_true", help="run seed 1337 again between every two seeds")
    args = ap.parse_args()
    if args.seeds < 2:
        raise SystemExit("--seeds must be at least 2 to measure a spread")
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-bench-seeds-"))
    seeds = [1337 + k for k in range(args.seeds)]
    if args.same_seed:                                  # 1337, 1338, 1337, 1339, ..., 1337
        seeds = [x for k in seeds for x in (k, 1337)][1:]   # (--seeds >= 2 was checked above)
    rows = []
    try:
        for i, seed in enumerate(seeds):
            print(f"... run {i + 1}/{len(seeds)}: seed {seed}", file=sys.stderr, flush=True)
            summary = {}
            r = direct_trial(data=args.data, preset=args.preset, budget=args.budget, seed=seed,
                             out=tmp / str(i), device="cpu",
                             on_line=lambda line: summary.update([line.split(": ", 1)]) if ": " in line else None)
            if r["status"] != "ok":
                raise SystemExit(f"seed {seed}: status {r['status']}: {r['error']}")
            rows.append((seed, r["val_bpb"], summary.get("num_steps", "-")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n### Seed noise ({args.preset} preset, {args.budget:g} s, unchanged train.py, {args.seeds} seeds"
          f"{', seed 1337 between them' if args.same_seed else ''})\n")
    print("| run | seed | steps | val BPB |\n|---|---|---|---|")
    for i, (seed, b, steps) in enumerate(rows, 1):
        print(f"| {i} | {seed} | {steps} | {b:.6f} |")
    first = {}
    for seed, b, _ in rows:
        first.setdefault(seed, b)
    print()
    print(_spread(f"over {len(first)} seeds (each seed's first run)", list(first.values())))
    if args.same_seed:
        print(_spread(f"seed 1337 alone, {sum(s == 1337 for s, _, _ in rows)} runs",
                      [b for s, b, _ in rows if s == 1337]))
    return 0


def _spread(label: str, bpbs: list[float]) -> str:
    return (f"- {label}: mean {statistics.mean(bpbs):.6f}, sample std **{statistics.stdev(bpbs):.4f}**, "
            f"range {max(bpbs) - min(bpbs):.4f}")


if __name__ == "__main__":
    sys.exit(main())
