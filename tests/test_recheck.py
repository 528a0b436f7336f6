"""A keep never rests on the machine's speed: a candidate that got more compute than the best (runner.decision
.more_compute) is judged against the best re-run now, with the best's commit and seed, and the ledger says why.
The loop runs in real git repositories; the executor is tests/loop_fakes.py's, whose score here depends on the
compute a trial got, as a wall-clock budget's does (the real engine's runs: test_calibration_docker.py)."""
from __future__ import annotations

import re

import pytest

from runner.ledger import Ledger
from runner.policy import Policy
from tests.loop_fakes import FakeExecutor, Scripted, make_exp, set_score
from tests.test_loop import start


@pytest.fixture
def exp(tmp_path):
    return make_exp(tmp_path)


def noop(ctx):
    from runner.proposers.base import Proposal
    return Proposal({"train.py": ctx.files["train.py"] + "# a comment\n"}, "a change that does nothing")


class Machine(FakeExecutor):
    """A trial's calibration comes from `speeds` (trial id -> seconds, default FAST); a fast machine trains more
    steps, which lowers the score by SPEED_GAIN: what a wall-clock budget does."""
    FAST, SLOW, SPEED_GAIN = 0.4, 0.9, 0.3

    def __init__(self, speeds=None, steps=None, **kw):
        super().__init__(**kw)
        self.speeds, self.steps = speeds or {}, steps

    def _outcome(self, spec, on_line, on_phase):
        out = super()._outcome(spec, on_line, on_phase)
        out.calibration_s = self.speeds.get(spec.trial_id, self.FAST)
        out.cpu_share = 0.95 if out.calibration_s == self.FAST else 0.5
        if out.status == "ok" and out.calibration_s == self.FAST and self.steps is None:
            out.val_bpb -= self.SPEED_GAIN
        if self.steps is not None:
            out.train_summary["num_steps"] = self.steps
        return out


def wall_clock(**decision):
    return Policy.model_validate({"proposer": {"ahead": 0}, "decision": {"min_delta": 0.05, **decision}})


def test_a_no_op_after_a_baseline_on_a_busy_machine_is_rechecked_and_not_kept(exp):
    repo, _ = exp
    machine = Machine(speeds={"0": Machine.SLOW})                  # the baseline ran beside a CPU hog
    start(exp, Scripted(noop), machine, max_trials=1, policy=wall_clock())
    base, cand = Ledger(repo / "runs" / "t").records()
    assert (base.calibration_s, cand.calibration_s) == (0.9, 0.4)
    assert cand.status == "discard" and cand.reason.endswith("no gain (the best re-run now)")
    assert cand.best_bpb_before == pytest.approx(0.7) and cand.val_bpb == pytest.approx(0.7)
    assert re.match(rf"re-ran the best {base.commit[:12]} \(seed 1337\) before deciding: its calibration took "
                    r"0\.400 s against 0\.900 s in the best's run, a machine 125% faster .*; the re-run gave "
                    r"val_bpb 0\.700000, calibration 0\.400 s, CPU share 95%$", cand.recheck), cand.recheck
    recheck = machine.specs[-1]                                   # the best's commit, its seed, its own directory
    assert (recheck.trial_id, recheck.seed, recheck.work_dir.name) == ("1-recheck", 1337, "recheck")
    assert (recheck.candidate_dir / "train.py").read_text() == (repo / "train.py").read_text()
    assert cand.timings["recheck_s"] >= 0


def test_a_real_gain_is_still_kept_against_the_rerun(exp):
    repo, _ = exp
    start(exp, Scripted(set_score(0.8)), Machine(speeds={"0": Machine.SLOW}), max_trials=1, policy=wall_clock())
    cand = Ledger(repo / "runs" / "t").records()[1]
    assert cand.status == "keep" and cand.reason.endswith("(the best re-run now)") and cand.recheck


def test_a_rerun_at_another_speed_again_discards(exp):
    repo, _ = exp
    machine = Machine(speeds={"0": Machine.SLOW, "1-recheck": Machine.SLOW})   # the hog came back for the re-run
    start(exp, Scripted(set_score(0.8)), machine, max_trials=1, policy=wall_clock())
    cand = Ledger(repo / "runs" / "t").records()[1]
    assert cand.status == "discard" and "ran at another speed again" in cand.reason
    assert "the machine's speed changed again: calibration 0.900 s in the re-run" in cand.recheck


@pytest.mark.parametrize("why, policy, machine", [
    ("same speed", wall_clock(), Machine()),
    ("rule off", wall_clock(max_speed_drift=None), Machine(speeds={"0": Machine.SLOW})),
    ("step for step", Policy.model_validate({"proposer": {"ahead": 0}, "train": {"max_steps": 10}}),
     Machine(speeds={"0": Machine.SLOW}, steps=10)),
])
def test_no_rerun_when_the_speeds_match_the_rule_is_off_or_the_runs_are_step_for_step(exp, why, policy, machine):
    repo, _ = exp
    start(exp, Scripted(set_score(0.8)), machine, max_trials=1, policy=policy)
    cand = Ledger(repo / "runs" / "t").records()[1]
    assert cand.status == "keep" and cand.recheck == "" and "re-run" not in cand.reason, why
    assert [s.trial_id for s in machine.specs] == ["0", "1"]
