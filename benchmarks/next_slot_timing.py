"""Benchmark: what starting the next trial's slot costs the training, by when it starts. An interleaved A/B/C of
the same sandboxed trial (runner.sandbox.trial.run_trial, one run's Standby), each round in a new order:

    export    the next slot starts at the harness's export line (what a run does now)
    training  the next slot starts at the first training step (what a run did before: beside the training)
    none      no next slot (the training alone)

Every measured trial takes a slot started ahead and left to finish its imports, so the three differ only in what
happens beside their training. Prints a markdown table of steps, tokens/s and val_bpb per trial, and the means.

    python benchmarks/next_slot_timing.py --data DIR [--budget 30] [--rounds 4] [--preset cpu]

Needs the Docker engine and the trial image (built here if missing). Run it alone on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import prepare_synthetic  # noqa: E402
from runner.executor import TrialSpec  # noqa: E402
from runner.sandbox import images  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.sandbox.preflight import connect  # noqa: E402
from runner.sandbox.slot import Standby  # noqa: E402
from runner.sandbox.trial import run_trial  # noqa: E402

MODES = ("export", "training", "none")
SETTLE_S = 8          # after a slot is started ahead: its containers finish their imports on the idle machine


class TimedStandby(Standby):
    """A run's Standby whose automatic start of the next slot (at the export line, or at the end of training)
    can be switched off, so that the benchmark decides when it starts."""
    auto = True

    def prepare_soon(self, client) -> None:
        if self.auto:
            super().prepare_soon(client)

    def start_now(self, client) -> None:
        Standby.prepare_soon(self, client)


def policy_for(preset: str, budget: float):
    base = load_policy("default")
    return base.model_validate({**base.model_dump(), "preset": preset,
                                "train": {"budget_seconds": budget, "allowance_seconds": 120},
                                "eval": {"timeout_seconds": 300}})


def settle(standby: TimedStandby, client) -> None:
    """A slot waits, its imports done, and the used slots are gone: every measured trial starts alike."""
    standby.wait()                 # a thread the last trial started, if any; then one that starts and removes
    standby.start_now(client)
    standby.wait()
    time.sleep(SETTLE_S)


def one(mode: str, n: int, standby: TimedStandby, client, pol, data: Path, image: str, tmp: Path, seed: int) -> dict:
    settle(standby, client)
    cand = tmp / f"cand-{n}"
    cand.mkdir()
    shutil.copy(REPO / "trainer" / "train.py", cand / "train.py")
    spec = TrialSpec(run_tag=standby.run_tag, trial_id=str(n), candidate_dir=cand, data_dir=data, policy=pol,
                     image=image, seed=seed, work_dir=tmp / f"trial-{n}")
    standby.auto = mode == "export"
    marks: dict[str, float] = {}

    def on_line(line: str) -> None:
        if line.startswith("step=") and "first_step" not in marks:
            marks["first_step"] = time.monotonic()
            if mode == "training":
                standby.start_now(client)
    out = run_trial(spec, on_line, standby=standby)
    standby.auto = True
    if out.status != "ok" or not out.timings.get("slot_prestarted"):
        raise SystemExit(f"trial {n} ({mode}): {out.status}, slot_prestarted {out.timings.get('slot_prestarted')}: "
                         f"{out.error}\n{out.log_tail}")
    s = out.train_summary
    return {"mode": mode, "trial": n, "steps": int(float(s["num_steps"])), "tok_s": float(s["tokens_per_second"]),
            "val_bpb": out.val_bpb, "training_s": float(s["training_seconds"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--data", type=Path, help="prepared data dir (default: a fresh synthetic one in a temp dir)")
    args = ap.parse_args()
    client = connect()
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-bench-"))
    os.chmod(tmp, 0o755)
    pol = policy_for(args.preset, args.budget)
    rows = []
    try:
        img = images.build("cpu", client=client)
        data = args.data or prepare_synthetic(tmp)
        print(f"image {img.tag}; data {data}; preset {args.preset}; budget {args.budget:g} s", file=sys.stderr)
        standby = TimedStandby(pol, image=img.tag, data_dir=data, run_tag=f"bench-{os.getpid()}",
                               base_dir=tmp / "slots")
        try:
            n = 0
            for r in range(args.rounds):
                for mode in MODES[r % 3:] + MODES[:r % 3]:          # a new order each round
                    n += 1
                    rows.append(one(mode, n, standby, client, pol, data, img.tag, tmp, args.seed))
                    print(rows[-1], file=sys.stderr, flush=True)
        finally:
            errors = standby.close()
            if errors:
                print(f"cleanup: {errors}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n### When the next slot starts ({args.preset} preset, {args.budget:g} s budget, seed {args.seed}, "
          f"{args.rounds} interleaved rounds)\n")
    print("| trial | next slot starts | steps | tokens/s | val_bpb |\n|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['trial']} | {x['mode']} | {x['steps']} | {x['tok_s']:,.0f} | {x['val_bpb']:.4f} |")
    print("\n| next slot starts | mean steps | steps (each round) | mean tokens/s | mean val_bpb |\n|---|---|---|---|---|")
    for mode in MODES:
        xs = [x for x in rows if x["mode"] == mode]
        print(f"| {mode} | {statistics.mean(x['steps'] for x in xs):.1f} | "
              f"{', '.join(str(x['steps']) for x in xs)} | {statistics.mean(x['tok_s'] for x in xs):,.0f} | "
              f"{statistics.mean(x['val_bpb'] for x in xs):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
