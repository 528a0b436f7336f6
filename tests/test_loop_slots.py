"""Several trials in flight (issue 17) with the fake executor, in real git repositories: every slot busy, the
branch only ever holding code that was trained and scored, a winner whose parent moved re-applied and trained again
(or `stale`), proposals made ahead so a freed slot never waits, and a resume that loses and repeats nothing.
The same with the real engine is in test_loop_docker.py."""
from __future__ import annotations

import subprocess
import threading

import pytest

from runner.ledger import Ledger
from runner.loop import Loop
from runner.policy import Policy
from runner.runs import Events, RunConfig
from runner.workspace import Workspace
from tests.loop_fakes import FakeExecutor, Scripted, bonus, make_exp, set_score

AHEAD = Policy(proposer={"ahead": 2})


@pytest.fixture
def exp(tmp_path):
    return make_exp(tmp_path)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


class OnFinish(Events):
    """Sets the gate of trial `then` once trial `first` is recorded: orders two trials in flight."""

    def __init__(self, gates: dict, first: int, then: str):
        self.gates, self.first, self.then, self.heard = gates, first, then, []

    def phase(self, name, detail=""):
        self.heard.append(name)

    def trial_finished(self, rec, summary):
        if rec.trial == self.first:
            self.gates[self.then].set()


class Heard(Events):
    """Records the run phases it hears (a "proposing" phase: a slot waited for the proposer)."""

    def __init__(self):
        self.heard = []

    def phase(self, name, detail=""):
        self.heard.append(name)


def opening(proposer, gate: threading.Event, after_trial: int):
    """The proposer, setting `gate` once it has made the proposal of trial `after_trial`."""
    original = proposer.propose

    def propose(ctx):
        out = original(ctx)
        if ctx.trial_id == after_trial:
            gate.set()
        return out
    proposer.propose = propose
    return proposer


def in_flight_together(executor, gates) -> None:
    """Trial 1 ends only once trial 2 has started: both trained on the same best."""
    gates["1"] = threading.Event()
    executor.on_start = lambda trial_id: gates["1"].set() if trial_id == "2" else None


def run(exp, proposer, executor, *, max_trials, policy=AHEAD, events=None, resume=False):
    repo, data = exp
    cfg = RunConfig(repo=repo, tag="t", data_dir=None if resume else data, policy=None if resume else policy,
                    max_trials=max_trials, image="img:test", resume=resume)
    return Loop(cfg, executor=executor, proposer=proposer, events=events).run()


def trained(executor, repo, rec) -> bool:
    """The exact code of rec.commit was what some trial of it trained."""
    want = Workspace(repo).read_file(rec.commit, "train.py")
    return any((s.candidate_dir / "train.py").read_text() == want for s in executor.specs
               if s.trial_id.split("-")[0] == str(rec.trial))


def test_two_slots_keep_two_trials_in_flight_with_unique_ids_and_a_branch_of_trained_code_only(exp):
    repo, _ = exp
    executor = FakeExecutor(slots=2, seconds=0.3)
    summary = run(exp, Scripted(set_score(0.9), bonus(1), set_score(0.95), bonus(2)), executor, max_trials=4)
    recs = Ledger(repo / "runs" / "t").records()
    assert executor.most_at_once == 2
    assert sorted(r.trial for r in recs) == [0, 1, 2, 3, 4]                   # each id once, none lost
    kept = [r for r in recs if r.status == "keep"]
    assert git(repo, "rev-parse", "autoresearch/t") == summary.best_commit == kept[-1].commit
    branch = git(repo, "rev-list", "--reverse", f"{recs[0].commit}..autoresearch/t").split()
    assert branch == [r.commit for r in kept[1:]]                              # only keeps, in keep order
    assert all(trained(executor, repo, r) for r in kept[1:])


def test_a_winner_whose_parent_moved_is_re_applied_onto_the_new_best_and_trained_again(exp):
    repo, _ = exp
    gates = {"2": threading.Event()}
    executor = FakeExecutor(slots=2, gates=gates)
    in_flight_together(executor, gates)
    run(exp, Scripted(set_score(0.9), bonus(1)), executor, max_trials=2, events=OnFinish(gates, 1, "2"))
    base, first, second = Ledger(repo / "runs" / "t").records()
    assert first.status == "keep" and first.parent == base.commit
    assert second.status == "keep", second.reason
    assert second.proposed_on == base.commit and second.parent == first.commit == second.best_at_decision
    assert second.rebased["onto"] == first.commit and second.rebased["from_val_bpb"] == pytest.approx(0.8)
    assert second.val_bpb == pytest.approx(0.7)                                # SCORE 0.9 and the idea, together
    assert git(repo, "rev-parse", f"{second.commit}^") == first.commit == git(repo, "rev-parse", "autoresearch/t~1")
    assert git(repo, "rev-parse", "refs/autoresearch/t/rebased/2") == second.commit
    assert git(repo, "rev-parse", "refs/autoresearch/t/trials/2") == second.rebased["from_commit"]
    assert [s.trial_id for s in executor.specs][-1] == "2-rebased" and trained(executor, repo, second)


def test_a_winner_whose_change_conflicts_with_the_new_best_is_stale_and_never_kept(exp):
    repo, _ = exp
    gates = {"2": threading.Event()}
    executor = FakeExecutor(slots=2, gates=gates)
    in_flight_together(executor, gates)
    run(exp, Scripted(set_score(0.9), set_score(0.8, "the same line")), executor, max_trials=2,
        events=OnFinish(gates, 1, "2"))
    base, first, second = Ledger(repo / "runs" / "t").records()
    assert (first.status, second.status) == ("keep", "stale")
    assert "does not apply onto the newer best" in second.reason and second.val_bpb == pytest.approx(0.8)
    assert git(repo, "rev-parse", "autoresearch/t") == first.commit


def test_the_next_proposal_is_made_while_a_trial_trains_so_the_slot_never_waits_for_it(exp):
    repo, _ = exp
    gates = {"1": threading.Event()}
    proposer = opening(Scripted(set_score(0.9), bonus(1)), gates["1"], after_trial=2)   # trial 1 ends only then
    events = Heard()
    executor = FakeExecutor(slots=1, gates=gates)
    run(exp, proposer, executor, max_trials=2, policy=Policy(proposer={"ahead": 1}), events=events)
    recs = Ledger(repo / "runs" / "t").records()
    assert [r.status for r in recs] == ["keep", "keep", "keep"]
    assert events.heard.count("proposing") <= 1                               # only the first could wait
    second = recs[2]                                                           # proposed on the baseline ...
    assert second.proposed_on == recs[0].commit and second.parent == recs[1].commit   # ... trained on trial 1
    assert second.rebased is None and trained(executor, repo, second)         # re-applied before it trained


def test_the_first_proposal_is_made_while_the_baseline_trains(exp):
    repo, _ = exp
    gates = {"0": threading.Event()}
    proposer = opening(Scripted(set_score(0.9)), gates["0"], after_trial=1)   # the baseline ends only then
    events = Heard()
    executor = FakeExecutor(slots=1, gates=gates)
    run(exp, proposer, executor, max_trials=1, policy=Policy(proposer={"ahead": 1}), events=events)
    recs = Ledger(repo / "runs" / "t").records()
    assert [(r.trial, r.kind, r.status) for r in recs] == [(0, "baseline", "keep"), (1, "candidate", "keep")]
    assert "proposing" not in events.heard                                     # the slot never waited for it
    first = proposer.contexts[0]
    assert first.trial_id == 1 and first.best_bpb is None and first.history == []   # nothing measured yet
    assert recs[1].proposed_on == recs[1].parent == recs[0].commit


def test_baseline_repeats_run_side_by_side_when_there_are_two_slots(exp):
    repo, _ = exp
    gates = {"0": threading.Event(), "0-repeat-1": threading.Event()}   # each ends once the other has started
    executor = FakeExecutor(slots=2, gates=gates, seed_offsets={1338: 0.01})
    executor.on_start = lambda trial_id: gates["0-repeat-1" if trial_id == "0" else "0"].set()
    run(exp, Scripted(), executor, max_trials=0, policy=Policy(decision={"baseline_repeats": 2}))
    base = Ledger(repo / "runs" / "t").records()[0]
    assert executor.most_at_once == 2                                          # both seeds trained at once
    assert sorted(s.trial_id for s in executor.specs) == ["0", "0-repeat-1"]
    assert [r["seed"] for r in base.repeats] == [1337, 1338] and base.noise_std > 0


def test_a_run_stopped_with_two_trials_in_flight_resumes_each_once(exp):
    repo, _ = exp
    gates, one_started = {"1": threading.Event()}, threading.Event()
    executor = FakeExecutor(slots=2, gates=gates, interrupt_at="2")
    executor.on_start = lambda trial_id: one_started.set() if trial_id == "1" else None

    def second(ctx):                       # trial 2 starts (and is interrupted) only once trial 1 trains
        assert one_started.wait(10)
        return bonus(1)(ctx)
    with pytest.raises(KeyboardInterrupt):
        run(exp, Scripted(set_score(0.9), second), executor, max_trials=3)
    gates["1"].set()                       # the abandoned trial 1 ends now: it must not write to the ledger
    assert [r.trial for r in Ledger(repo / "runs" / "t").records()] == [0]
    refs = Workspace(repo).trial_refs("t")
    assert sorted(refs) == [0, 1, 2]
    executor = FakeExecutor(slots=2)
    run(exp, Scripted(bonus(3)), executor, max_trials=None, resume=True)
    recs = Ledger(repo / "runs" / "t").records()
    assert sorted(r.trial for r in recs) == [0, 1, 2, 3]                      # max_trials 3: nothing lost, none twice
    now = Workspace(repo).trial_refs("t")
    for r in (r for r in recs if r.trial in (1, 2)):    # the trial ref names the commit it trained (first)
        assert now[r.trial] == (r.rebased or {}).get("from_commit", r.commit)
        if r.parent == r.proposed_on and not r.rebased:  # nothing kept before it trained: the commit it was left with
            assert r.commit == refs[r.trial]             # (else trial 1, kept first, moved trial 2 onto it: a race)
    assert {"1", "2"} <= {s.trial_id for s in executor.specs}                 # the two in flight ran again
    assert git(repo, "rev-parse", "autoresearch/t") == next(r for r in reversed(recs) if r.status == "keep").commit
