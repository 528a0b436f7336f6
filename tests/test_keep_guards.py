"""What a keep must rest on besides a lower score (issue 16): every run it rests on probed on every eval batch, and
no more training time than the best got. In real git repositories with the fake executor, which picks the probe
scope as trainer/evaluate.py does (one batch when the score is not below the bar the trial was given) and reports
the train phase's host seconds a candidate's `TRAIN_S` line names. The real engine's side: test_probe_scope_docker.py
and tests/adversarial/test_budget.py."""
from __future__ import annotations

import re

import pytest

from runner import decision
from runner.ledger import Ledger
from runner.loop import Loop
from runner.policy import Policy
from runner.runs import RunConfig
from tests.loop_fakes import FakeExecutor, Scripted, make_exp, set_score

BASE = 1.0                      # the fake baseline's score (tests/loop_fakes.TRAIN)


@pytest.fixture
def exp(tmp_path):
    return make_exp(tmp_path)


def run(exp, *edits, **decision_rules):
    repo, data = exp
    executor = FakeExecutor()
    policy = Policy(proposer={"ahead": 0}, decision=decision_rules)
    Loop(RunConfig(repo=repo, tag="t", data_dir=data, policy=policy, max_trials=len(edits), image="img:test"),
         executor=executor, proposer=Scripted(*edits)).run()
    return Ledger(repo / "runs" / "t").records(), executor


def also(edit, line):
    """`edit`, with `line` appended to train.py."""
    def propose(ctx):
        p = edit(ctx)
        p.files["train.py"] += line + "\n"
        return p
    return propose


def longer(score, seconds):
    return also(set_score(score), f"TRAIN_S = {seconds}  # the fake host clock of its train phase")


# ------------------------------------------------------------------------------------------- training time

def test_a_better_score_bought_with_more_training_time_is_over_budget_not_kept(exp):
    recs, _ = run(exp, longer(0.5, 9.0), max_seconds_over_best=3.0)
    base, cand = recs
    assert cand.outcome == "ok" and cand.status == "over_budget", cand.reason
    assert cand.reason.startswith("0.500000 beats 1.000000")                  # it would have been kept
    assert "trained 9.0 s on the host's clock against 2.5 s for the best, 6.5 s longer" in cand.reason
    assert cand.training_seconds == 9.0


def test_a_train_phase_within_the_tolerance_of_the_best_is_kept(exp):
    recs, _ = run(exp, longer(0.5, 5.0), max_seconds_over_best=3.0)
    assert recs[1].status == "keep", recs[1].reason


def test_without_the_rule_more_training_time_is_kept_which_is_why_a_gpu_policy_sets_it(exp):
    recs, _ = run(exp, longer(0.5, 9.0))
    assert recs[1].status == "keep"


def test_a_confirmation_run_that_trains_longer_is_over_budget_too(exp):
    repo, data = exp
    executor = FakeExecutor()
    real = executor._outcome

    def outcome(spec, on_line, on_phase):
        out = real(spec, on_line, on_phase)
        if spec.trial_id.endswith("-confirm"):
            out.timings["train_host_s"] = 12.0
        return out
    executor._outcome = outcome             # the first run on the best's clock, its confirmation 9.5 s longer
    policy = Policy(proposer={"ahead": 0}, decision={"confirm_wins": True, "max_seconds_over_best": 3.0})
    Loop(RunConfig(repo=repo, tag="t", data_dir=data, policy=policy, max_trials=1, image="img:test"),
         executor=executor, proposer=Scripted(set_score(0.5))).run()
    cand = Ledger(repo / "runs" / "t").records()[1]
    assert cand.confirm["training_seconds"] == 12.0
    assert cand.status == "over_budget" and "its confirmation run trained 12.0 s" in cand.reason


# ------------------------------------------------------------------------------------------- probe scope

def test_each_candidate_run_is_told_the_score_under_which_every_batch_is_probed(exp):
    recs, executor = run(exp, set_score(1.5), set_score(0.5), set_score(0.7), confirm_wins=True)
    below = {s.trial_id: s.every_batch_below for s in executor.specs}
    assert below["0"] is None                                       # the baseline: every batch, whatever it scores
    assert below["1"] == below["2"] == BASE                         # the bar: best - threshold (0 here)
    assert below["2-confirm"] == BASE                               # its confirmation: the same bar
    assert below["3"] == 0.5                                        # after the keep: the new best
    by = {r.trial: r for r in recs}
    assert by[1].status == "discard" and by[1].probe_scope == "one_batch"     # scored above: one batch was enough
    assert by[2].status == "keep" and by[2].probe_scope == "every_batch"
    assert by[2].confirm["probe_scope"] == "every_batch"


def test_a_keep_never_rests_on_a_run_probed_on_one_batch_only(exp):
    """An evaluator that broke its rule (or a bar that moved up) must not make a keep: the host checks the scope."""
    recs, _ = run(exp, also(set_score(0.5), "UNPROBED = 1  # the fake evaluator probes one batch"))
    cand = recs[1]
    assert cand.probe_scope == "one_batch" and cand.status == "discard"
    assert re.search(r"but its run was probed on one eval batch only", cand.reason), cand.reason


# ------------------------------------------------------------------------------------------- the rules themselves

def test_trained_longer_compares_each_run_with_the_best_and_ignores_what_was_not_measured():
    assert decision.trained_longer([("run", 10.0)], 7.0, 3.0) is None                  # exactly at the tolerance
    assert "its run trained 10.1 s" in decision.trained_longer([("run", 10.1)], 7.0, 3.0)
    assert decision.trained_longer([("run", 99.0)], 7.0, None) is None                 # the rule off
    assert decision.trained_longer([("run", None)], 7.0, 3.0) is None
    assert decision.trained_longer([("run", 99.0)], None, 3.0) is None
    assert "confirmation" in decision.trained_longer([("run", 7.0), ("confirmation", 11.0)], 7.0, 3.0)


def test_the_probe_bar_is_what_a_keep_needs_and_never_zero():
    assert decision.probe_bar(1.25, 0.25) == 1.0
    assert decision.probe_bar(0.1, 0.5) == 1e-9
    assert decision.unprobed([("run", "every_batch"), ("confirmation run", None)]) is None
    assert "confirmation run" in decision.unprobed([("run", "every_batch"), ("confirmation run", "one_batch")])
