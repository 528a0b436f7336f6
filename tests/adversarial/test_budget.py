"""Extra training time is never rewarded: attacks on the training budget, against the real engine.

The harness's budget lives in the candidate's own process, so a candidate can raise it (its environment, the
harness's Budget, run.progress). What decides is measured outside that process: the host's clock from the
hand-over of train.py to the container's exit (killed at budget + allowance), the engine's FinishedAt, and the
container's cgroup CPU time (at most cpus x budget + the CPU allowance). Each attack must end `over_budget`, the
status that is never kept; the honest train.py must end `ok`, and the ledger's training seconds are the host's.
Budgets are overridden small so each test costs seconds; the deadlines leave room for a loaded machine.
"""
from __future__ import annotations

import re
import time

import pytest

from runner.ledger import Ledger, TrialRecord, fill
from runner.loop import Loop
from runner.proposers.base import Proposal
from runner.runs import RunConfig
from runner.workspace import Workspace, init_repo
from tests.sandbox_kit import REAL_TRAIN_PY, candidate, policy, real_candidate, trial

pytestmark = pytest.mark.docker

LATE_S = 8              # how long after the deadline a kill may take to be seen on a loaded machine

# the three ways a candidate owns its budget: the environment the harness reads, the harness's Budget, run.progress
RAISE_BUDGET = {
    "environment": """
        import os
        os.environ["AUTORESEARCH_BUDGET_S"] = "3600"
        os.environ.pop("AUTORESEARCH_MAX_STEPS", None)
        """,
    "harness_budget": """
        import trainer.harness.budget as _budget
        _init = _budget.Budget.__init__
        _budget.Budget.__init__ = lambda self, seconds, max_steps=None, **kw: _init(self, 3600.0, None, **kw)
        """,
    "progress": """
        import trainer.harness as _harness
        _harness.Run.progress = lambda self, step: 0.0
        """,
}


@pytest.mark.parametrize("how", sorted(RAISE_BUDGET))
def test_candidate_that_raises_its_own_budget_is_over_budget(how, tmp_path, trial_image, sandbox_data):
    budget, allowance = 2, 12           # killed at the deadline whatever its start-up took; 12 s leaves room to
                                        # reach its first steps (3-4 s idle) on a loaded machine
    pol = policy(train={"budget_seconds": budget, "allowance_seconds": allowance, "max_steps": None})
    out, _ = trial(tmp_path, trial_image.tag, real_candidate(tmp_path, prefix=RAISE_BUDGET[how]), sandbox_data,
                   pol=pol)
    assert out.status == "over_budget", (out.status, out.error, out.log_tail[-800:])
    assert out.val_bpb is None and out.result is None                     # never scored, so never kept
    deadline = budget + allowance
    assert deadline - 0.5 <= out.timings["train_host_s"] <= deadline + LATE_S
    assert "step=" in out.log_tail                                        # it was training when it was stopped
    assert out.timings["train_cpu_s"] > pol.limits.cpus * budget              # and used more than the budget's CPU


def test_candidate_that_trains_past_the_budget_on_cpu_time_is_over_budget_before_the_deadline(
        tmp_path, trial_image, sandbox_data):
    """Two processes burn 8 CPU seconds (their own CPU clocks, so the same work on a loaded machine) and exit 0
    long before the wall-clock deadline: the cgroup's CPU time (2 cores x 1 s + 3 s allowed) catches it."""
    cand = candidate(tmp_path, """
        import os, time

        def burn(seconds):
            t = time.process_time()
            while time.process_time() - t < seconds:
                pass

        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                burn(4.0)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        print("burned 8 CPU seconds", flush=True)
        """)
    pol = policy(train={"budget_seconds": 1, "allowance_seconds": 90, "cpu_allowance_seconds": 3, "max_steps": None})
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data, pol=pol)
    assert out.status == "over_budget", (out.status, out.error, out.log_tail[-800:])
    assert "CPU seconds, over 5 (2 cores x the budget of 1 s plus the CPU allowance of 3 s)" in out.error
    assert out.timings["train_host_s"] < pol.train.deadline_seconds           # the clock alone would pass it
    assert out.timings["train_cpu_s"] > 5 and out.timings["train_cpu_quota_cores"] == 2.0


def test_candidate_that_sleeps_forever_is_killed_at_the_deadline_and_is_over_budget(
        tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import time
        print("sleeping", flush=True)
        time.sleep(3600)
        """)
    budget, allowance = 2, 4
    t0 = time.monotonic()
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data,
                   pol=policy(train={"budget_seconds": budget, "allowance_seconds": allowance}))
    elapsed = time.monotonic() - t0
    assert out.status == "over_budget", out.error
    assert out.error.startswith("train.py was still running 6 s after its hand-over and was killed")
    assert 6 - 0.5 <= out.timings["train_host_s"] <= 6 + LATE_S                # at the deadline, no later timeout
    assert out.timings["train_engine_s"] <= 6 + LATE_S                          # the engine's clock agrees
    assert out.timings["train_cpu_s"] is not None and out.timings["train_cpu_s"] < 10  # it slept (the launcher
                                                                                     # may still import torch)
    assert elapsed < 6 + 60                                                      # slot start + kill + cleanup


def test_the_honest_train_py_on_tiny_is_ok_and_its_ledger_training_seconds_are_the_hosts(
        tmp_path, trial_image, sandbox_data):
    pol = policy(eval={"timeout_seconds": 600})           # policies/tiny.yaml's train phase as shipped; the eval
                                                          # is not what this test is about (slow on a loaded machine)
    out, _ = trial(tmp_path, trial_image.tag, real_candidate(tmp_path), sandbox_data, pol=pol)
    assert out.status == "ok", (out.error, out.log_tail[-800:])
    t = out.timings
    assert 0 < t["train_host_s"] <= pol.train.deadline_seconds
    assert abs(t["train_engine_s"] - t["train_host_s"]) < 2                     # two clocks, one story
    cpu_max = t["train_cpu_quota_cores"] * pol.train.budget_seconds + pol.train.cpu_allowance_seconds
    assert 0 < t["train_cpu_s"] <= cpu_max
    rec = TrialRecord(trial=1, kind="candidate", status="keep", description="honest")
    fill(rec, out)
    assert rec.training_seconds == t["train_host_s"]
    assert rec.claimed_training_seconds == out.train_summary["training_seconds"] != rec.training_seconds
    assert rec.num_steps == out.train_summary["num_steps"] <= pol.train.max_steps


class _TrainLonger:
    """A proposer whose one candidate raises its own budget by EXTRA_S and stops well before the deadline; it
    also restores the learning rates the start commit cut (_crippled), so its score beats the best for certain
    (training 12 s instead of 3 s alone scored worse once on a loaded CI machine)."""
    name = "train-longer"

    def propose(self, ctx):
        prefix = f"import os\nos.environ['AUTORESEARCH_BUDGET_S'] = '{GPU_LIKE['budget_seconds'] + EXTRA_S:g}'\n"
        return Proposal({"train.py": prefix + REAL_TRAIN_PY.read_text()}, "train a little longer")


def _crippled(train_py: str) -> str:
    """train.py with every learning rate cut a thousandfold: a start commit that barely learns."""
    out, n = re.subn(r"^((?:MATRIX|EMBEDDING|UNEMBEDDING|SCALAR)_LR = [\d.]+)", r"\1 * 1e-3", train_py, flags=re.M)
    assert n == 4, "train.py's learning-rate constants moved: update _crippled"
    return out


# as on a GPU: the CPU time does not bound the train phase (a huge CPU allowance), only the wall clock does
GPU_LIKE = {"budget_seconds": 3, "allowance_seconds": 40, "cpu_allowance_seconds": 600, "max_steps": None}
EXTRA_S, TOLERANCE_S = 9, 3


def test_a_candidate_that_trains_longer_than_the_best_within_its_deadline_is_over_budget_where_cpu_time_cannot_tell(
        tmp_path, trial_image, sandbox_data):
    """The real loop: the baseline (learning rates cut) trains 3 s; the candidate (restored) 12 s, within the 43 s
    deadline and with CPU time to spare, so only the comparison with the best's host-clock train phase
    (decision.max_seconds_over_best) stops it. Its reason shows it would have been kept on its score."""
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": _crippled(REAL_TRAIN_PY.read_text()), "program.md": "Lower val_bpb.\n",
                     ".gitignore": "runs/\n"})
    pol = policy(train=GPU_LIKE, eval={"timeout_seconds": 600}, proposer={"ahead": 0},
                 decision={"min_delta": 0.0, "max_speed_drift": None, "max_seconds_over_best": TOLERANCE_S})
    Loop(RunConfig(repo=repo, tag="longer", data_dir=sandbox_data, policy=pol, max_trials=1, image=trial_image.tag),
         proposer=_TrainLonger()).run()
    base, cand = Ledger(repo / "runs" / "longer").records()
    assert base.status == "keep" and cand.outcome == "ok", (cand.reason, cand.log_tail[-800:])
    assert cand.training_seconds > base.training_seconds + TOLERANCE_S                  # the host's clock saw it
    assert cand.training_seconds < GPU_LIKE["budget_seconds"] + GPU_LIKE["allowance_seconds"]  # not the deadline
    assert cand.status == "over_budget", cand.reason
    assert re.match(r"\d\.\d+ beats \d\.\d+ by \d\.\d+ .*, but its run trained [\d.]+ s on the host's clock "
                    r"against [\d.]+ s for the best", cand.reason), cand.reason
    assert Workspace(repo).rev(Workspace(repo).branch_ref("longer")) == base.commit        # the branch: the baseline
