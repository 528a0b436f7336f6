"""Benchmark: the loop's duty cycle and research result with the `mutate` proposer on CPU.

For each trial of a real run (real git, real containers), the share of its wall time spent inside the training
budget (train.py's own `training_seconds`: the ledger's claimed_training_seconds) versus everything else:
proposal, patch check, git, container start (taking or making the trial's containers, then hand-over -> first
step), the rest of the train container (the last step, export, exit), eval (model hand-over -> exit), bookkeeping (ledger, report, the gap to the next
trial). Then the best val_bpb after the run's trials versus the baseline, as a % improvement. Prints markdown tables (for docs/benchmarks.md).

    python benchmarks/loop_duty_cycle.py                       # 10 trials at a 60 s budget, `cpu` preset
    python benchmarks/loop_duty_cycle.py --trials 20 --budget 60 --data DIR --keep runs-dir
    python benchmarks/loop_duty_cycle.py --trials 20 --next-slot alternate    # A/B: when the next slot starts

`--next-slot alternate` runs odd candidates as a run did before 2026-12-01 (the next trial's slot starts at their
first training step, beside the training) and even ones as a run does now (at their export line), and prints
the steps and duty cycle of each side by side, in the same run.

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
from next_slot_timing import TimedStandby  # noqa: E402
from runner.executor import make  # noqa: E402
from runner.errors import AutoresearchError  # noqa: E402
from runner.ledger import Ledger, TrialRecord  # noqa: E402
from runner.live import PlainView  # noqa: E402
from runner.loop import Loop  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.runs import RunConfig  # noqa: E402
from runner.sandbox import images  # noqa: E402 - builds the image the run pins
from runner.sandbox.executor import DockerExecutor  # noqa: E402
from runner.sandbox.preflight import connect  # noqa: E402
from runner.workspace import init_repo  # noqa: E402
from trainer.shards import DataError  # noqa: E402


def policy_for(args):
    base = load_policy(args.policy)
    raw = base.model_dump()
    raw["preset"] = args.preset
    raw["train"] = {**raw["train"], "budget_seconds": args.budget, "allowance_seconds": 180}
    raw["eval"] = {**raw["eval"], "timeout_seconds": args.eval_timeout}
    raw["proposer"] = {**raw["proposer"], "kind": "mutate"}
    return type(base).model_validate(raw)


def phases(r: TrialRecord, wall: float) -> dict:
    t, tt = r.timings, r.trial_timings
    training = (r.claimed_training_seconds or 0.0) + ((r.confirm or {}).get("claimed_training_seconds") or 0.0)
    to_first_step = tt.get("train_startup_s") or 0.0       # hand-over of train.py -> its first step line
    startup = (tt.get("slot_s") or 0.0) + to_first_step     # + taking (or making) the trial's containers
    train_wall = tt.get("train_host_s") or 0.0            # from the hand-over of train.py to the exit
    evaluation = tt.get("eval_host_s") or 0.0             # from the hand-over of the model to the exit
    train_rest = max(0.0, train_wall - to_first_step - training)
    loop = sum(t.get(k, 0.0) for k in ("propose_s", "check_s", "git_s"))
    return {"wall": wall, "training": training, "share": 100 * training / wall if wall else 0.0,
            "proposal+git": loop, "start": startup, "train_rest": train_rest, "eval": evaluation,
            "other": max(0.0, wall - loop - startup - train_rest - training - evaluation)}


def walls(records: list[TrialRecord]) -> list[float]:
    """A trial's wall time: from its start to the next trial's start (the last one: to its end)."""
    return [(records[i + 1].started_at if i + 1 < len(records) else r.finished_at) - r.started_at
            for i, r in enumerate(records)]


def candidate_share(records: list[TrialRecord], first: int) -> tuple[float, float]:
    """(wall s, training s) of the first `first` candidate trials."""
    cands = [(r, w) for r, w in zip(records, walls(records)) if r.kind == "candidate"][:first]
    return sum(w for _, w in cands), sum(phases(r, w)["training"] for r, w in cands)


def table(records: list[TrialRecord]) -> tuple[str, float, float]:
    rows = ["| trial | status | wall s | training s | steps | in budget | proposal+git s | container start s | "
            "train rest s | eval s | other s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, wall in zip(records, walls(records)):
        p = phases(r, wall)
        steps = "-" if r.num_steps is None else r.num_steps
        rows.append(f"| {r.trial}{' (baseline)' if r.kind == 'baseline' else ''} | {r.status} | {p['wall']:.1f} | "
                    f"{p['training']:.1f} | {steps} | {p['share']:.1f}% | {p['proposal+git']:.2f} | {p['start']:.1f} | "
                    f"{p['train_rest']:.1f} | {p['eval']:.1f} | {p['other']:.1f} |")
    return ("\n".join(rows), *candidate_share(records, len(records)))


def next_slot_mode(trial: int, how: str) -> str:
    """When trial `trial` starts the next trial's slot: at its export line, or at its first training step."""
    if how == "alternate":
        return "training" if trial % 2 == 1 else "export"
    return how


class SlotTimingView(PlainView):
    """PlainView that starts the next trial's slot at the first training step of the trials whose mode says so
    (the executor's TimedStandby then ignores their export line)."""

    def __init__(self, stream, how: str):
        super().__init__(stream)
        self.how, self.executor, self.trial, self.started = how, None, 0, False
        self.client = connect()

    def trial_started(self, trial_id: int, kind: str) -> None:
        super().trial_started(trial_id, kind)
        self.trial, self.started = trial_id, False
        self.executor.standby.auto = next_slot_mode(trial_id, self.how) == "export"

    def line(self, text: str) -> None:
        if not self.started and text.startswith("step="):
            self.started = True
            if next_slot_mode(self.trial, self.how) == "training":
                self.executor.standby.start_now(self.client)


class TimedExecutor(DockerExecutor):
    """The Docker executor with a TimedStandby: SlotTimingView starts the next slot where its mode says."""

    def start(self, policy, *, image, data_dir, run_tag, work_dir) -> None:
        super().start(policy, image=image, data_dir=data_dir, run_tag=run_tag, work_dir=work_dir)
        name, pol, standby = self._slots[0]
        standby.close()
        self._slots[0] = (name, pol, TimedStandby(pol, image=image, data_dir=data_dir, run_tag=run_tag,
                                                  base_dir=work_dir))


def by_mode(records: list[TrialRecord], how: str) -> str:
    """Per mode: the steps of its trials, the container start of the trial after each, and the duty cycle with
    that start counted in place of the trial's own."""
    rows = ["| next slot starts | trials | mean steps | steps | container start of the next trial s | in budget |",
            "|---|---|---|---|---|---|"]
    ws = walls(records)
    for mode in ("training", "export"):
        steps, starts, train, wall = [], [], 0.0, 0.0
        for i, r in enumerate(records[:-1]):
            if r.kind != "candidate" or next_slot_mode(r.trial, how) != mode:
                continue
            p, nxt = phases(r, ws[i]), phases(records[i + 1], ws[i + 1])
            steps.append(r.num_steps or 0)
            starts.append(nxt["start"])
            train += p["training"]
            wall += p["wall"] - p["start"] + nxt["start"]
        if steps:
            rows.append(f"| {mode} | {len(steps)} | {sum(steps) / len(steps):.1f} | {', '.join(map(str, steps))} | "
                        f"{sum(starts) / len(starts):.2f} | {100 * train / wall:.1f}% |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10, help="mutate trials after the baseline (default 10)")
    ap.add_argument("--budget", type=float, default=60.0, help="training budget per trial in s (default 60)")
    ap.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "h100"])
    ap.add_argument("--policy", default=None, help="base policy (default policies/default.yaml)")
    ap.add_argument("--data", type=Path, help="prepared data (default: synthetic, prepared into a temp dir)")
    ap.add_argument("--keep", type=Path, help="keep the experiment repository (and its runs/) here")
    ap.add_argument("--next-slot", choices=["export", "training", "alternate"], default="export",
                    help="when a trial starts the next one's slot (default export: what a run does)")
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
            view = PlainView(sys.stderr) if args.next_slot == "export" else SlotTimingView(sys.stderr, args.next_slot)
            executor = make() if args.next_slot == "export" else TimedExecutor()   # the view decides when
            view.executor = executor
            summary = Loop(RunConfig(repo=repo, tag="bench", data_dir=data, policy=policy, max_trials=args.trials,
                                     image=img.tag), executor=executor, events=view).run()
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
              f"**{100 * train / wall:.1f}%** (whole run incl. baseline: {elapsed:.0f} s)")
        if sum(r.kind == "candidate" for r in records) > 10:
            w10, t10 = candidate_share(records, 10)
            print(f"The first 10 candidate trials: {t10:.0f} s of {w10:.0f} s = **{100 * t10 / w10:.1f}%**")
        print()
        if args.next_slot == "alternate":
            print("## When the next slot starts (odd trials: at the first step; even: at the export line)\n")
            print(by_mode(records, args.next_slot) + "\n")
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
