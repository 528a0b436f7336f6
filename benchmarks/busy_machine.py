"""Benchmark and end-to-end check: a machine made busy on purpose keeps nothing on throughput alone (issue 18).

One real run (real engine, image and loop) of the unchanged `train.py` under a wall-clock policy (the `tiny`
preset without max_steps): a CPU hog (a container of processes spinning on every core, at HOG_SHARES, 8x a
running trial's CPU weight, so it starves the trial whatever else the machine runs) runs during the baseline's
calibration and training only and is removed as the baseline's export starts (its EXPORTING_LINE; at the latest
as the baseline is recorded), then one candidate that changes nothing (a comment) trains on the quieter machine.
(Starved through its export too, the baseline took 35-48 s from hand-over to exit, at the edge of tiny's 40 s
allowance, and its evaluation with every batch probed about a minute.)
Judged against the slow baseline the no-op would be kept on speed alone; with decision.max_speed_drift the best is
re-run first and the no-op is judged against that re-run. Prints each trial's val_bpb, steps, calibration, CPU
share and throttled time, the decision and the ledger's `recheck` line.

    python benchmarks/busy_machine.py --data DIR [--hogs 2] [--budget 8] [--min-delta 0.05] [--no-rule]

--no-rule turns the rule off (max_speed_drift: null): the same run then keeps the no-op, which shows what the rule
prevents. tests/test_busy_machine_docker.py runs `busy_run` with the rule on.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.ledger import Ledger, TrialRecord  # noqa: E402
from runner.loop import Loop  # noqa: E402
from runner.policy import Policy, load_policy  # noqa: E402
from runner.proposers.base import Proposal  # noqa: E402
from runner.runs import Events, RunConfig  # noqa: E402
from runner.workspace import init_repo  # noqa: E402
from trainer.contract import EXPORTING_LINE  # noqa: E402

HOG_SHARES = 8 * 1024              # the hog's CPU weight: 8x a running trial's (spec.RUNNING_CPU_SHARES)
HOG = "import os\nfor _ in range({n} - 1):\n    if os.fork() == 0:\n        break\nwhile True:\n    pass\n"


class _NoOp:
    """A proposer whose one proposal changes nothing the trial runs (a comment at the end of train.py)."""
    name = "no-op"

    def propose(self, ctx):
        return Proposal({"train.py": ctx.files["train.py"] + "# a comment: nothing changes\n"},
                        "a change that does nothing")


class _HogsDuringBaseline(Events):
    """Removes the hog as the baseline's export starts (on a thread: the line comes from the log's pump), or at
    the latest as the baseline's record is written."""

    def __init__(self, hogs):
        self.hogs = hogs

    def trial_line(self, trial_id: int, text: str) -> None:
        if trial_id == 0 and text == EXPORTING_LINE and self.hogs:
            threading.Thread(target=stop, args=(self.hogs,), daemon=True).start()

    def trial_finished(self, rec: TrialRecord, summary) -> None:
        if rec.kind == "baseline":
            stop(self.hogs)


def start_hogs(n: int, image: str) -> list:
    """A container of n processes spinning, at HOG_SHARES, no network ([] for n == 0)."""
    if n < 1:
        return []
    from runner.sandbox import preflight
    client = preflight.connect()
    return [client.containers.run(image, ["python", "-c", HOG.format(n=n)], entrypoint=[], detach=True,
                                  name=f"busy-machine-hog-{os.getpid()}", cpu_shares=HOG_SHARES,
                                  network_mode="none", user="65534:65534", read_only=True)]


def stop(hogs: list) -> None:
    """Remove the hogs; safe to call from two threads at once (each hog is popped by one)."""
    while True:
        try:
            hog = hogs.pop()
        except IndexError:
            return
        hog.remove(force=True)


def wall_clock_policy(budget: float, min_delta: float, rule: bool) -> Policy:
    """policies/tiny.yaml without max_steps (the budget is wall-clock time), with a bar and the rule on or off."""
    raw = load_policy("tiny").model_dump()
    raw["train"].update(budget_seconds=budget, max_steps=None)
    raw["eval"]["timeout_seconds"] = 600
    raw["decision"].update(min_delta=min_delta, max_speed_drift=0.10 if rule else None)
    raw["proposer"]["ahead"] = 0
    return Policy.model_validate(raw)


def busy_run(root: Path, data: Path, image: str, *, hogs: int = 2, budget: float = 8.0, min_delta: float = 0.05,
             rule: bool = True) -> list[TrialRecord]:
    """The run described in the module docstring, in root/exp; its ledger records (baseline, candidate)."""
    repo = root / "exp"
    init_repo(repo, {"train.py": (REPO / "trainer" / "train.py").read_text(), "program.md": "Lower val_bpb.\n",
                     ".gitignore": "runs/\n"})
    running = start_hogs(hogs, image)
    try:
        cfg = RunConfig(repo=repo, tag=f"busy-{os.getpid()}", data_dir=data,
                        policy=wall_clock_policy(budget, min_delta, rule), max_trials=1, image=image)
        Loop(cfg, proposer=_NoOp(), events=_HogsDuringBaseline(running)).run()
    finally:
        stop(running)
    return Ledger(repo / "runs" / cfg.tag).records()


def describe(rec: TrialRecord) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)
    return (f"trial {rec.trial} {rec.kind:9} {rec.status:8} val_bpb {num(rec.val_bpb, '.4f')} steps "
            f"{num(rec.num_steps, 'd')} (claimed) calibration {num(rec.calibration_s, '.3f')} s cpu_share "
            f"{num(rec.cpu_share, '.2f')} throttled {num(rec.throttled_s, '.1f')} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared data directory")
    ap.add_argument("--image", default=None, help="trial image tag (default: the one `autoresearch build` made)")
    ap.add_argument("--hogs", type=int, default=2, help="processes spinning during the baseline (0: none)")
    ap.add_argument("--budget", type=float, default=8.0, help="train.budget_seconds (wall clock)")
    ap.add_argument("--min-delta", type=float, default=0.05, help="decision.min_delta")
    ap.add_argument("--no-rule", action="store_true", help="decision.max_speed_drift: null (the rule off)")
    args = ap.parse_args()
    if args.image is None:
        from runner.sandbox import images
        args.image = images.build("cpu", airgapped=None).tag
    with tempfile.TemporaryDirectory(prefix="busy-machine-") as tmp:
        records = busy_run(Path(tmp), args.data, args.image, hogs=args.hogs, budget=args.budget,
                           min_delta=args.min_delta, rule=not args.no_rule)
    for rec in records:
        print(describe(rec))
    cand = records[-1]
    print(f"decision: {cand.status}: {cand.reason}")
    print(f"recheck: {cand.recheck or '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
