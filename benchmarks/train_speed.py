"""Benchmark: the same train.py under the harness of two source trees, side by side (interleaved rounds).

Runs `python -m trainer.direct` (unsandboxed, DEVELOPMENT ONLY: it runs each tree's own trainer/train.py) from
each tree with PYTHONPATH=<tree>, the same interpreter, preset, seed and wall-clock budget, alternating the order
every round, and prints a markdown table: the steps the training made inside its budget, its tokens per second,
the process's CPU time in user and kernel mode, and val_bpb. With a time budget more steps is the gain: the
budget stays, the work per step shrinks. val_bpb is printed but not compared: a run that makes more steps is a
different run.

    python benchmarks/train_speed.py --data DIR --old /tmp/old-tree [--new .] [--preset cpu] [--budget 30] [--rounds 3]

Make the old tree with `git worktree add /tmp/old-tree <commit>`. Run it alone on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_once(tree: Path, data: Path, preset: str, budget: float, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-m", "trainer.direct", "--train-py", str(tree / "trainer" / "train.py"),
                        "--data", str(data), "--preset", preset, "--budget", f"{budget:g}", "--out", str(out)],
                       cwd=tree, env=env, capture_output=True, text=True, timeout=budget + 600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"train_speed: trainer.direct of {tree} failed (exit {p.returncode}): "
                         f"{p.stderr.strip().splitlines()[-1:]}")
    summary = dict(line.split(": ", 1) for line in p.stdout.splitlines()
                   if ": " in line and line.split(": ", 1)[0] in ("num_steps", "tokens_per_second"))
    bpb = next((ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("val_bpb: ")), "nan")
    return {"steps": int(summary["num_steps"]), "tok_s": float(summary["tokens_per_second"]),
            "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "val_bpb": float(bpb)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared data (e.g. ~/.cache/autoresearch/data)")
    ap.add_argument("--old", type=Path, required=True, help="source tree to compare against")
    ap.add_argument("--new", type=Path, default=REPO, help="source tree of the new harness (default: this one)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for r in range(args.rounds):
            for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                rows[name].append(run_once(trees[name], args.data.resolve(), args.preset, args.budget,
                                           Path(tmp) / name))
    print(f"## train.py, old ({trees['old']}) vs new ({trees['new']}), `{args.preset}` preset, "
          f"{args.budget:g} s budget, {args.rounds} interleaved rounds\n")
    print("| harness | round | steps | tokens/s | user s | sys s | val_bpb |")
    print("|---|---|---|---|---|---|---|")
    for name in ("old", "new"):
        for i, x in enumerate(rows[name]):
            print(f"| {name} | {i + 1} | {x['steps']} | {x['tok_s']:,.0f} | {x['user_s']:.1f} | {x['sys_s']:.1f} | "
                  f"{x['val_bpb']:.4f} |")
    print("\n| harness | steps | tokens/s | user s | sys s |")
    print("|---|---|---|---|---|")
    for name in ("old", "new"):
        m = {k: statistics.mean(x[k] for x in rows[name]) for k in ("steps", "tok_s", "user_s", "sys_s")}
        print(f"| {name} (mean) | **{m['steps']:.1f}** | {m['tok_s']:,.0f} | {m['user_s']:.1f} | {m['sys_s']:.1f} |")
    wins = sum(n["steps"] > o["steps"] for o, n in zip(rows["old"], rows["new"]))
    print(f"\nnew made more steps than old in {wins} of {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
