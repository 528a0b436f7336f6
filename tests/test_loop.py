"""The research loop in real git repositories with a fake executor (the Docker runs are in
test_loop_docker.py): keep/discard/crash/rejected, the branch, refs, ledger and results.tsv agree; seeds, noise,
confirmation; resume after an interruption runs every trial exactly once."""
import json
import subprocess
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.ledger import Ledger
from runner.loop import Loop
from runner.runs import Events, RunConfig
from runner.policy import DecisionRules, Policy
from runner.workspace import Workspace
from trainer.shards import atomic_write_json

from tests.loop_fakes import (TRAIN, FakeExecutor, Scripted, crash, escape, make_exp, overtrain, set_score, slow,
                              unusable)
from tests.test_workspace import arm_repository


@pytest.fixture
def exp(tmp_path):
    return make_exp(tmp_path)


ON_DEMAND = Policy(proposer={"ahead": 0})    # each proposal sees every result before it (as one at a time)


def start(exp, proposer, executor, *, tag="t", max_trials=None, policy="default", resume=False, data=True):
    """Run the loop; policy=None means 'the run's own' (--resume without --policy)."""
    repo, data_dir = exp
    cfg = RunConfig(repo=repo, tag=tag, data_dir=data_dir if data else None,
                    policy=ON_DEMAND if policy == "default" else policy,
                    max_trials=max_trials, resume=resume, image="autoresearch-trial:test")
    return Loop(cfg, executor=executor, proposer=proposer).run()


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_good_is_kept_bad_discarded_crash_recorded_refusal_never_runs(exp):
    repo, _ = exp
    trial = FakeExecutor()
    proposer = Scripted(set_score(0.9), set_score(0.95), crash, escape, set_score(0.8))
    summary = start(exp, proposer, trial, max_trials=5)
    recs = Ledger(repo / "runs" / "t").records()
    assert [(r.trial, r.kind, r.status) for r in recs] == [
        (0, "baseline", "keep"), (1, "candidate", "keep"), (2, "candidate", "discard"),
        (3, "candidate", "crash"), (4, "candidate", "rejected"), (5, "candidate", "keep")]
    assert len(trial.specs) == 5  # baseline + 4: the refused patch never reached a trial
    ws = Workspace(repo)
    start_commit = recs[0].commit
    # every candidate is built on the best at the time; the branch holds only the kept ones
    assert recs[1].parent == start_commit and recs[2].parent == recs[1].commit == recs[3].parent
    assert recs[5].parent == recs[1].commit
    assert ws.history("t", start_commit) == [recs[1].commit, recs[5].commit]
    assert git(repo, "rev-parse", "autoresearch/t") == summary.best_commit == recs[5].commit
    assert summary.best_bpb == 0.8 and summary.baseline_bpb == 1.0
    refs = ws.trial_refs("t")
    assert refs == {0: start_commit, 1: recs[1].commit, 2: recs[2].commit, 3: recs[3].commit, 5: recs[5].commit}
    # the ledger says why, and results.tsv agrees line by line
    assert recs[3].log_tail.endswith("RuntimeError: boom") and "exited with 1" in recs[3].reason
    assert "'..'" in recs[4].reason and recs[4].commit is None
    tsv = (repo / "runs" / "t" / "results.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[3] for line in tsv] == [r.status for r in recs]
    assert [line.split("\t")[0] for line in tsv] == [(r.commit or "-")[:7] for r in recs]
    assert tsv[1].split("\t")[1] == "0.900000" and tsv[1].split("\t")[2] == "0.5"
    # what else a trial records
    r1 = recs[1]
    assert r1.seed == 1337 and r1.image == "autoresearch-trial:test" and r1.image_digest == "sha256:fake"
    assert r1.policy_sha256 == ON_DEMAND.sha256() and len(r1.data_manifest_sha256) == 64
    assert r1.training_seconds == 2.5 and r1.claimed_training_seconds == 2.0   # the host's clock; the claim aside
    assert r1.train_tokens == 200 and r1.best_bpb_before == 1.0
    assert {"propose_s", "check_s", "git_s", "trial_s"} <= set(r1.timings)
    run_dir = repo / "runs" / "t"
    assert (run_dir / "trials" / "1" / "train.log").read_text() == "step=1 loss=3.0 progress=0.5 remaining_s=1.0\n"
    assert "+SCORE = 0.9" in (run_dir / "trials" / "1" / "diff.patch").read_text()
    assert git(repo, "status", "--porcelain") == ""  # the user's tree: untouched (runs/ is ignored)
    assert (repo / "train.py").read_text() == TRAIN


def test_a_candidate_over_budget_is_a_failure_never_kept_and_the_next_proposal_sees_why(exp):
    repo, _ = exp
    proposer = Scripted(overtrain, set_score(0.9))
    summary = start(exp, proposer, FakeExecutor(), max_trials=2)
    recs = Ledger(repo / "runs" / "t").records()
    assert [r.status for r in recs] == ["keep", "over_budget", "keep"]
    over = recs[1]
    assert over.val_bpb is None and over.outcome == "over_budget" and "allowance of 12 s" in over.reason
    assert over.training_seconds == 31.0 and over.claimed_training_seconds == 7.9
    assert summary.counts["over_budget"] == 1 and summary.best_commit == recs[2].commit
    tsv = (repo / "runs" / "t" / "results.tsv").read_text().splitlines()
    assert tsv[2].split("\t")[3] == "over_budget"
    from runner.proposers.prompt import history_table
    row = [line for line in history_table(proposer.contexts[1].history, 10).splitlines() if line.startswith("| 1 |")]
    assert row and "over_budget" in row[0] and "allowance of 12 s" in row[0]


def test_with_a_step_limit_a_run_the_time_budget_cut_short_is_never_kept(exp):
    repo, _ = exp
    steps10 = Policy.model_validate({"train": {"budget_seconds": 8, "max_steps": 10}})
    start(exp, Scripted(slow, set_score(0.9)), FakeExecutor(), max_trials=2, policy=steps10)
    recs = Ledger(repo / "runs" / "t").records()
    assert [r.status for r in recs] == ["keep", "discard", "keep"]      # 0.5 < 0.9, but trained 5 of 10 steps
    assert recs[1].reason.startswith("trained 5 of train.max_steps 10 steps before the time budget ran out")
    steps20 = Policy.model_validate({"train": {"budget_seconds": 8, "max_steps": 20}})
    with pytest.raises(UserError, match=r"baseline .* ended discard: trained 10 of train.max_steps 20 steps"):
        start(exp, Scripted(), FakeExecutor(), max_trials=1, policy=steps20, tag="t20")


def test_a_whole_run_runs_no_hook_filter_or_configured_command_of_the_repository(exp, tmp_path):
    repo, _ = exp
    marker = tmp_path / "marker"
    arm_repository(repo, marker)
    start(exp, Scripted(set_score(0.9), set_score(0.95), escape), FakeExecutor(), max_trials=3)
    assert [r.status for r in Ledger(repo / "runs" / "t").records()] == ["keep", "keep", "discard", "rejected"]
    assert not marker.exists(), marker.read_text()


def test_a_proposer_that_gives_up_gives_a_rejected_trial_with_its_reason(exp):
    repo, _ = exp
    trial = FakeExecutor()
    start(exp, Scripted(unusable), trial, max_trials=1)
    rec = Ledger(repo / "runs" / "t").records()[1]
    assert rec.status == "rejected" and "no '<<<<<<< SEARCH" in rec.reason and rec.llm_usage == {"calls": 4}
    assert (repo / "runs" / "t" / "trials" / "1" / "reply.txt").read_text() == "I cannot"
    assert len(trial.specs) == 1  # the baseline only


def test_the_proposer_sees_the_best_files_program_and_history(exp):
    proposer = Scripted(set_score(0.9), set_score(0.95))
    start(exp, proposer, FakeExecutor(), max_trials=2)
    second = proposer.contexts[1]
    assert "SCORE = 0.9" in second.files["train.py"] and second.program == "lower SCORE\n"
    assert [h["status"] for h in second.history] == ["keep", "keep"] and second.best_bpb == 0.9


def test_every_candidate_trains_with_the_run_seed_and_a_trial_sees_a_read_only_copy(exp):
    trial = FakeExecutor()
    start(exp, Scripted(set_score(0.9), set_score(0.8)), trial, max_trials=2)
    assert {s.seed for s in trial.specs} == {1337}
    for s in trial.specs:
        assert (Path(s.candidate_dir) / "train.py").stat().st_mode & 0o777 == 0o444


def test_baseline_repeats_measure_noise_and_a_gain_inside_it_is_discarded(exp):
    repo, _ = exp
    policy = Policy(decision=DecisionRules(baseline_repeats=3, noise_sigmas=2.0), proposer={"ahead": 0})
    trial = FakeExecutor(seed_offsets={1338: 0.02, 1339: -0.02})
    start(exp, Scripted(set_score(0.97), set_score(0.9)), trial, max_trials=2, policy=policy)
    recs = Ledger(repo / "runs" / "t").records()
    base = recs[0]
    assert [r["seed"] for r in base.repeats] == [1337, 1338, 1339]
    assert base.noise_std == pytest.approx(0.02) and base.threshold == pytest.approx(0.04)
    assert recs[1].status == "discard" and "within the threshold" in recs[1].reason
    assert recs[2].status == "keep"


def test_a_win_is_confirmed_with_another_seed_before_it_is_kept(exp):
    repo, _ = exp
    policy = Policy(decision=DecisionRules(confirm_wins=True), proposer={"ahead": 0})
    lucky_seed = 1337 + 10_000 + 1    # the confirmation of trial 1
    trial = FakeExecutor(seed_offsets={lucky_seed: 0.2})
    start(exp, Scripted(set_score(0.9), set_score(0.9, "the same change again")), trial, max_trials=2,
          policy=policy)
    recs = Ledger(repo / "runs" / "t").records()
    assert recs[1].status == "discard" and recs[1].confirm["seed"] == lucky_seed and "noise" in recs[1].reason
    assert recs[2].status == "keep" and recs[2].confirm["val_bpb"] == 0.9
    assert [s.seed for s in trial.specs] == [1337, 1337, lucky_seed, 1337, 1337 + 10_000 + 2]


def test_a_failing_baseline_stops_the_run_with_one_line(exp):
    repo, _ = exp
    (repo / "x").write_text("")
    ws = Workspace(repo)
    broken = ws.commit_files(ws.head_commit(), {"train.py": "CRASH = 1  # broken\n"}, "broken")
    git(repo, "update-ref", "HEAD", broken)
    (repo / "train.py").write_text("CRASH = 1  # broken\n")                    # the working tree as committed
    with pytest.raises(UserError, match=r"the baseline .* ended crash: train.py exited with 1"):
        start(exp, Scripted(), FakeExecutor(), max_trials=1)
    assert Ledger(repo / "runs" / "t").records()[0].status == "crash"


def test_the_loop_clears_a_dead_runs_leftovers_starts_its_executor_and_closes_it_even_when_interrupted(exp):
    done = FakeExecutor()
    start(exp, Scripted(set_score(0.9)), done, max_trials=1)
    assert done.calls == ["remove_leftovers t", "start autoresearch-trial:test", "close"]
    broken = FakeExecutor(interrupt_at="2")
    with pytest.raises(KeyboardInterrupt):
        start(exp, Scripted(set_score(0.8)), broken, resume=True, data=False, policy=None, max_trials=2)
    assert broken.calls == ["remove_leftovers t", "start autoresearch-trial:test", "close"]


def test_a_new_run_without_an_image_pins_the_one_its_executor_resolves(exp):
    repo, data_dir = exp
    executor = FakeExecutor()
    Loop(RunConfig(repo=repo, tag="img", data_dir=data_dir, policy=Policy(), max_trials=0), executor=executor,
         proposer=Scripted()).run()
    assert executor.calls[0] == "resolve_image" and "start img:fake" in executor.calls
    assert json.loads((repo / "runs" / "img" / "run.json").read_text())["image"] == "img:fake"


def test_an_uncommitted_edit_to_program_md_or_train_py_stops_a_new_run_naming_the_files(exp):
    repo, _ = exp
    head = git(repo, "rev-parse", "HEAD")
    (repo / "program.md").write_text("lower SCORE, and try a bigger LR\n")
    (repo / "train.py").write_text(TRAIN + "EDITED = 1  # by hand\n")
    with pytest.raises(UserError, match=r"^program.md, train.py in .* has uncommitted changes, which the run would "
                                        r"not use .*; commit them, or pass --commit-changes$"):
        start(exp, Scripted(), FakeExecutor(), max_trials=0)
    assert not (repo / "runs" / "t").exists() and git(repo, "rev-parse", "HEAD") == head
    assert not git(repo, "branch", "--list", "autoresearch/t")                  # nothing left behind
    (repo / "notes.txt").write_text("an untracked file the run does not read is fine\n")
    executor = FakeExecutor()
    Loop(RunConfig(repo=repo, tag="t", data_dir=exp[1], policy=Policy(), max_trials=0, image="img:test",
                   commit_changes=True), executor=executor, proposer=Scripted()).run()
    new = git(repo, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", f"{new}^") == head and git(repo, "rev-parse", "autoresearch/t") == new
    assert "EDITED = 1" in (Path(executor.specs[0].candidate_dir) / "train.py").read_text()   # the edit trained
    assert git(repo, "status", "--porcelain", "--", "train.py", "program.md") == ""           # index and tree agree


def test_an_interrupted_run_resumes_without_losing_or_repeating_a_trial(exp):
    repo, _ = exp
    edits = [set_score(0.9), set_score(0.95), set_score(0.85), set_score(0.99)]
    with pytest.raises(KeyboardInterrupt):
        start(exp, Scripted(*edits), FakeExecutor(interrupt_at="3"), max_trials=4)
    assert [r.trial for r in Ledger(repo / "runs" / "t").records()] == [0, 1, 2]
    committed = git(repo, "rev-parse", "refs/autoresearch/t/trials/3")    # trial 3 was committed, never recorded
    trial = FakeExecutor()
    summary = start(exp, Scripted(edits[3]), trial, resume=True, data=False, policy=None)
    recs = Ledger(repo / "runs" / "t").records()
    assert [r.trial for r in recs] == [0, 1, 2, 3, 4] and [s.trial_id for s in trial.specs] == ["3", "4"]
    assert recs[3].commit == committed and "(again after --resume)" in recs[3].description   # the same code
    assert [r.status for r in recs] == ["keep", "keep", "discard", "keep", "discard"]
    assert summary.best_commit == recs[3].commit == git(repo, "rev-parse", "autoresearch/t")


def test_resume_moves_a_branch_left_behind_by_a_kill_between_ledger_and_update_ref(exp):
    repo, _ = exp
    start(exp, Scripted(set_score(0.9)), FakeExecutor(), max_trials=1)
    recs = Ledger(repo / "runs" / "t").records()
    git(repo, "update-ref", "refs/heads/autoresearch/t", recs[0].commit)   # as if killed before update-ref
    start(exp, Scripted(), FakeExecutor(), resume=True, data=False, policy=None)
    assert git(repo, "rev-parse", "autoresearch/t") == recs[1].commit


def test_resume_refuses_a_branch_moved_to_a_foreign_commit(exp):
    repo, _ = exp
    start(exp, Scripted(set_score(0.9)), FakeExecutor(), max_trials=1)
    ws = Workspace(repo)
    foreign = ws.commit_files(ws.head_commit(), {"train.py": "X = 1\n"}, "mine")
    git(repo, "update-ref", "refs/heads/autoresearch/t", foreign)
    with pytest.raises(UserError, match="did not make"):
        start(exp, Scripted(), FakeExecutor(), resume=True, data=False, policy=None)


def test_an_existing_tag_needs_resume_and_resume_needs_a_run(exp):
    start(exp, Scripted(), FakeExecutor(), max_trials=0)
    with pytest.raises(UserError, match="--resume"):
        start(exp, Scripted(), FakeExecutor(), max_trials=0)
    with pytest.raises(UserError, match="no run other to resume"):
        start(exp, Scripted(), FakeExecutor(), tag="other", resume=True, policy=None)


def test_resume_refuses_changed_data_or_another_policy(exp):
    repo, data = exp
    start(exp, Scripted(), FakeExecutor(), max_trials=0)
    with pytest.raises(UserError, match="another policy"):
        start(exp, Scripted(), FakeExecutor(), resume=True, policy=Policy(seed=1))
    atomic_write_json(data / "manifest.json", {"schema": "autoresearch.data/1", "files": {"x": {}}})
    with pytest.raises(UserError, match="changed since run t started"):
        start(exp, Scripted(), FakeExecutor(), resume=True, data=False, policy=None)


def test_run_json_records_what_the_run_needs_to_resume(exp):
    repo, data = exp
    start(exp, Scripted(), FakeExecutor(), max_trials=0)
    meta = json.loads((repo / "runs" / "t" / "run.json").read_text())
    assert meta["start_commit"] == Workspace(repo).head_commit() and meta["data_dir"] == str(data.resolve())
    assert meta["policy_sha256"] == ON_DEMAND.sha256() and meta["branch"] == "autoresearch/t"


def test_the_live_view_hears_each_phase_of_a_candidate_in_order(exp):
    repo, data_dir = exp
    heard = []

    class Recorder(Events):
        def trial_started(self, trial_id, kind):
            heard.append(f"trial {trial_id}")

        def phase(self, name, detail=""):
            heard.append(name)

    cfg = RunConfig(repo=repo, tag="t", data_dir=data_dir, policy=ON_DEMAND, max_trials=1,
                    image="autoresearch-trial:test")
    Loop(cfg, executor=FakeExecutor(), proposer=Scripted(set_score(0.9)), events=Recorder()).run()
    assert heard[heard.index("trial 1") - 1:] == ["proposing", "trial 1", "proposed", "checking", "committing",
                                                  "starting", "training", "evaluating"]
