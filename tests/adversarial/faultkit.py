"""Helpers for the fault-injection tests: a real `autoresearch run` subprocess over a fresh experiment, and the
checks every fault must pass afterwards (nothing lost, no trial run twice, the branch at the best, nothing left on
the engine).

The runs use the `tiny` policy with a step limit and the offline `mutate` proposer (real edits to the real
train.py, real training); the run tag carries the test process id, so the suite's host check counts it.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from runner.ledger import Ledger
from runner.sandbox.cleanup import leftovers
from runner.workspace import Workspace, init_repo
from tests.sandbox_kit import REAL_TRAIN_PY, policy

FAULT_STEPS = 3                 # training steps per trial: enough to be real, short enough for CI


def experiment(root: Path) -> Path:
    repo = Path(root) / "exp"
    init_repo(repo, {"train.py": REAL_TRAIN_PY.read_text(), "program.md": "p\n", ".gitignore": "runs/\n"})
    return repo


def policy_file(root: Path) -> Path:
    pol = policy(train={"max_steps": FAULT_STEPS}, limits={"cpus": 1.0}, proposer={"kind": "mutate"})
    path = Path(root) / "policy.yaml"
    path.write_text(yaml.safe_dump(pol.model_dump(), sort_keys=False))
    return path


def start(repo: Path, tag: str, *args, log: Path) -> subprocess.Popen:
    """`autoresearch run` in the background, its output in `log`."""
    with open(log, "ab") as f:
        return subprocess.Popen(["autoresearch", "run", "--repo", str(repo), "--tag", tag, "--plain",
                                 *map(str, args)], stdout=f, stderr=subprocess.STDOUT)


def cli(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["autoresearch", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def wait_for(what: str, cond, proc: subprocess.Popen | None = None, log: Path | None = None,
             timeout: float = 600, every: float = 0.3):
    """Poll cond() until it returns something truthy; fail with `what` (and the run's log) on timeout or if the
    runner ended first."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the runner ended (rc {proc.returncode}) before {what}:\n"
                                 f"{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(every)


def training(client, tag: str, trial: int) -> bool:
    """True once trial `trial`'s train container runs (the slot is named after the trial at the hand-over)."""
    return any(c.status == "running" and c.name == f"autoresearch-{tag}-{trial}-train"
               for c in leftovers(tag, None, client)[0])


def ledger_trials(repo: Path, tag: str) -> list[int]:
    path = Path(repo) / "runs" / tag / "trials.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["trial"] for line in path.read_text().splitlines() if line.strip()]


def assert_intact(repo: Path, tag: str, client, trials: int) -> list:
    """The run holds trials 0..trials, each exactly once, parsed line by line; the branch is at the ledger's best;
    every candidate that reached git has its trial ref; nothing of the run is left on the engine."""
    run_dir = Path(repo) / "runs" / tag
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    assert [json.loads(line)["trial"] for line in lines] == list(range(trials + 1)), lines
    recs = Ledger(run_dir).records()
    best = [r for r in recs if r.status == "keep"][-1]
    ws = Workspace(repo)
    assert ws.rev(ws.branch_ref(tag)) == best.commit
    assert ws.trial_refs(tag) == {r.trial: r.commit for r in recs if r.commit is not None}
    containers, volumes = leftovers(tag, None, client)
    assert not containers and not volumes, (containers, volumes)
    return recs


def wait_gone(client, tag: str, timeout: float = 60) -> None:
    wait_for(f"the containers of {tag} to be removed", lambda: not any(leftovers(tag, None, client)),
             timeout=timeout, every=1)

