"""Benchmark: the loop's duty cycle and research result with the `mutate` proposer on CPU.

For each trial of a real run (real git, real containers), the share of its wall time spent inside the training
budget (train.py's own `training_seconds`) versus everything else: proposal, patch check, git, container start
(taking or making the trial's containers, then hand-over -> first step), the rest of the train container (the
last step, export, exit), eval (model hand-over -> exit), bookkeeping (ledger, report, the gap to the next
trial). Then the best val_bpb after the run's trials versus the baseline, as a % improvement. Prints markdown tables (for docs/benchmarks.md).

    python benchmarks/loop_duty_cycle.py                       # 10 trials at a 60 s budget, `cpu` preset
    python benchmarks/loop_duty_cycle.py --trials 20 --budget 60 --data DIR --keep runs-dir

Needs the Docker engine and the trial image (built here if missing). Without --data it prepares the synthetic
data set into a temp directory first (not timed).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import prepare_synthetic  # noqa: E402
from runner import images  # noqa: E402
from runner.errors import AutoresearchError  # noqa: E402
from runner.ledger import Ledger, TrialRecord  # noqa: E402
from runner.live import PlainView  # noqa: E402
from runner.loop import Run, RunConfig  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.workspace import init_repo  # noqa: E402
from trainer.shards import DataError  # noqa: E402


def policy_for(args):
    base = load_policy(args.policy)
    raw = base.model_dump()
    raw["preset"] = args.preset
    raw["train"] = {**raw["train"], "budget_seconds": args.budget, "timeout_seconds": args.budget + 180}
    raw["eval"] = {**raw["eval"], "timeout_seconds": args.eval_timeout}
    raw["proposer"] = {**raw["proposer"], "kind": "mutate"}
    return type(base).model_validate(raw)


def phases(r: TrialRecord, wall: float) -> dict:
    t, tt = r.timings, r.trial_timings
    training = (r.training_seconds or 0.0) + ((r.confirm or {}).get("training_seconds") or 0.0)
    to_first_step = tt.get("train_startup_s") or 0.0       # hand-over of train.py -> its first step line
    startup = (tt.get("slot_s") or 0.0) + to_first_step     # + taking (or making) the trial's containers
    train_wall = tt.get("train_host_s") or 0.0            # from the hand-over of train.py to the exit
    evaluation = tt.get("eval_host_s") or 0.0             # from the hand-over of the model to the exit
    train_rest = max(0.0, train_wall - to_first_step - training)
    loop = sum(t.get(k, 0.0) for k in ("propose_s", "check_s", "git_s"))
    return {"wall": wall, "training": training, "share": 100 * training / wall if wall else 0.0,
            "proposal+git": loop, "start": startup, "train_rest": train_rest, "eval": evaluation,
            "other": max(0.0, wall - loop - startup - train_rest - training - evaluation)}


def table(records: list[TrialRecord]) -> tuple[str, float, float]:
    rows = ["| trial | status | wall s | training s | steps | in budget | proposal+git s | container start s | "
            "train rest s | eval s | other s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    tot_wall = tot_train = 0.0
    for i, r in enumerate(records):
        nxt = records[i + 1].started_at if i + 1 < len(records) else r.finished_at
        p = phases(r, nxt - r.started_at)
        if r.kind == "candidate":
            tot_wall += p["wall"]
            tot_train += p["training"]
        steps = "-" if r.num_steps is None else r.num_steps
        rows.append(f"| {r.trial}{' (baseline)' if r.kind == 'baseline' else ''} | {r.status} | {p['wall']:.1f} | "
                    f"{p['training']:.1f} | {steps} | {p['share']:.1f}% | {p['proposal+git']:.2f} | {p['start']:.1f} | "
                    f"{p['train_rest']:.1f} | {p['eval']:.1f} | {p['other']:.1f} |")
    return "\n".join(rows), tot_wall, tot_train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10, help="mutate trials after the baseline (default 10)")
    ap.add_argument("--budget", type=float, default=60.0, help="training budget per trial in s (default 60)")
    ap.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "h100"])
    ap.add_argument("--policy", default=None, help="base policy (default policies/default.yaml)")
    ap.add_argument("--data", type=Path, help="prepared data (default: synthetic, prepared into a temp dir)")
    ap.add_argument("--keep", type=Path, help="keep the experiment repository (and its runs/) here")
    ap.add_argument("--eval-timeout", type=float, default=900.0,
                    help="eval container limit in s (default 900)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="loop-bench-"))
    try:
        data = args.data or prepare_synthetic(work)
        policy = policy_for(args)
        img = images.build(policy.flavour)
        repo = (args.keep or work) / "exp"
        init_repo(repo, {"train.py": resources.files("trainer").joinpath("train.py").read_text(),
                         "program.md": resources.files("runner").joinpath("program.md").read_text(),
                         ".gitignore": "runs/\n"})
        t0 = time.monotonic()
        try:
            summary = Run(RunConfig(repo=repo, tag="bench", data_dir=data, policy=policy, max_trials=args.trials,
                                    image=img.tag), events=PlainView(sys.stderr)).run()
        except (AutoresearchError, DataError) as e:
            print(f"loop_duty_cycle: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
        elapsed = time.monotonic() - t0
        records = Ledger(summary.run_dir).records()
        rows, wall, train = table(records)
        base, best = summary.baseline_bpb, summary.best_bpb
        print(f"## Loop duty cycle: mutate, `{args.preset}` preset, {args.budget:.0f} s budget, "
              f"{args.trials} trials\n")
        print(rows)
        print(f"\nCandidate trials: {train:.0f} s of {wall:.0f} s wall inside training budgets = "
              f"**{100 * train / wall:.1f}%** (whole run incl. baseline: {elapsed:.0f} s)\n")
        print("## Research result\n")
        print("| baseline val_bpb | best val_bpb | improvement | kept | discarded | failed |")
        print("|---|---|---|---|---|---|")
        c = summary.counts
        failed = sum(v for k, v in c.items() if k not in ("keep", "discard"))
        print(f"| {base:.6f} | {best:.6f} | {100 * (base - best) / base:.2f}% | {c.get('keep', 1) - 1} | "
              f"{c.get('discard', 0)} | {failed} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)          # the prepared data; with --keep the repo is elsewhere


if __name__ == "__main__":
    sys.exit(main())
