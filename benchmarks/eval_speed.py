"""Benchmark: the trusted evaluator of two source trees on the same model, side by side (interleaved rounds).

Runs `python -m trainer.evaluate --wait-for-model` as a subprocess from each tree (PYTHONPATH=<tree>, the same
interpreter, the same fixed probe seed) on one exported model, alternating the order every round, and prints a
markdown table: the evaluator's own timings after its warm-up (load, probes, scoring, total: what a trial waits
for once its model is handed over, as in a run, where the warm-up happens before), the process wall time (all of
its work: imports and warm-up too), the process's CPU time in user and kernel mode (the least noisy measure of
its work on a shared machine; page faults count as kernel time), val_bpb (it must be the same for both to the
last digits: a faster evaluator that scores differently is a different evaluator; the same to about 1e-15 when
only the order of the float64 sums changed) and the means. Then what each tree's probes covered: the eval batches
each probe checked and the causality passes per batch (K; an evaluator from before 2026-12-03 probes one batch).

    python benchmarks/eval_speed.py --model M.pt2 --data DIR --old /tmp/old-tree [--new .] [--rounds 5]

Make the old tree with `git worktree add /tmp/old-tree <commit>`. CPU threads: each process runs as its own
main() does (`cpu_threads()` of this machine). The old tree must have `--wait-for-model` (2026-11-25 or later).
Run it alone on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEYS = ("load_s", "probe_s", "eval_s", "total_s")


def run_once(tree: Path, model: Path, data: Path, preset: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", str(model), "--data", str(data),
                        "--preset", preset, "--out", str(out), "--probe-seed", "1", "--wait-for-model", "60"],
                       cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"eval_speed: the evaluator of {tree} failed (exit {p.returncode}): "
                         f"{p.stderr.strip().splitlines()[-1:]}")
    res = json.loads(out.read_text())
    pr = res["probes"]
    cover = {n: pr[n].get("batches", 1) for n in ("determinism", "batch_independence", "causality")}
    return {**{k: res["timings"][k] for k in KEYS}, "wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime, "val_bpb": res["val_bpb"],
            "status": res["status"], "cover": cover, "K": pr.get("causality_passes"),
            "miss_bound": pr.get("miss_bound")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an exported model.pt2 (e.g. from trainer.direct)")
    ap.add_argument("--data", type=Path, required=True, help="the prepared data it was trained on")
    ap.add_argument("--old", type=Path, required=True, help="source tree of the evaluator to compare against")
    ap.add_argument("--new", type=Path, default=REPO, help="source tree of the new evaluator (default: this one)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
        for name, tree in trees.items():                      # one untimed run each: page cache, .pyc files
            run_once(tree, args.model, args.data, args.preset, Path(tmp) / f"{name}.json")
        for r in range(args.rounds):
            for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                rows[name].append(run_once(trees[name], args.model, args.data, args.preset,
                                           Path(tmp) / f"{name}.json"))
    print(f"## Evaluator, old ({trees['old']}) vs new ({trees['new']}), `{args.preset}` preset, "
          f"{args.rounds} interleaved rounds\n")
    print("| evaluator | round | load s | probes s | scoring s | total s | process wall s | user s | sys s | val_bpb |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("old", "new"):
        for i, x in enumerate(rows[name]):
            print(f"| {name} | {i + 1} | {x['load_s']:.2f} | {x['probe_s']:.2f} | {x['eval_s']:.2f} | "
                  f"{x['total_s']:.2f} | {x['wall_s']:.2f} | {x['user_s']:.2f} | {x['sys_s']:.2f} | "
                  f"{x['val_bpb']:.10f} |")
    print()
    print("| evaluator | load s | probes s | scoring s | total s | process wall s | user s | sys s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("old", "new"):
        m = {k: statistics.mean(x[k] for x in rows[name]) for k in (*KEYS, "wall_s", "user_s", "sys_s")}
        print(f"| {name} (mean) | {m['load_s']:.2f} | {m['probe_s']:.2f} | {m['eval_s']:.2f} | "
              f"**{m['total_s']:.2f}** | {m['wall_s']:.2f} | {m['user_s']:.2f} | {m['sys_s']:.2f} |")
    wins = sum(n["total_s"] < o["total_s"] for o, n in zip(rows["old"], rows["new"]))
    print(f"\nnew faster than old (total s) in {wins} of {args.rounds} rounds")
    same = {x["val_bpb"] for x in rows["old"] + rows["new"]}
    spread = max(same) - min(same)
    print(f"\nval_bpb: {'identical in every run' if len(same) == 1 else f'{len(same)} values, {spread:.2g} apart'}")
    print("\n| evaluator | batches probed (determinism, batch independence, causality) | causality passes per batch | "
          "miss bound, peek at 1% |")
    print("|---|---|---|---|")
    for name in ("old", "new"):
        x = rows[name][0]
        c = x["cover"]
        k = x["K"] if x["K"] is not None else "4 passes on one batch"
        bound = f"{x['miss_bound']:.2g}" if x["miss_bound"] is not None else "-"
        print(f"| {name} | {c['determinism']}, {c['batch_independence']}, {c['causality']} | {k} | {bound} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
