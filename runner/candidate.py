"""One candidate's life, on its own thread while other slots train: check -> commit -> trial -> decision. TRUSTED.

    run_candidate(loop, n, proposal, ctx, proposing_s, waited_s)   a new proposal (made ahead on ctx.parent)
    rerun_candidate(loop, n, commit)                      a candidate a dead run committed but never recorded

Invariants, with several trials in flight (the loop's lock guards the best, the ledger and the branch):
- A candidate is committed on the best of the moment it was proposed (`proposed_on`); if the best moved before it
  starts, its change is re-applied onto the new best first (git's three-way merge, `Workspace.merge`) and the
  re-applied commit is what trains; a change that no longer applies is `stale`, without a trial.
- It is judged against the best at decision time (`best_at_decision`), never the best it started from.
- The branch only ever holds commits whose exact code was trained and scored: a candidate that beats the best but
  whose parent is no longer the best is re-applied onto it and trained again (trials/<n>/rebased, the ref
  refs/autoresearch/<tag>/rebased/<n>) before it can be kept; if it does not apply it is `stale`. The best can
  move again meanwhile: after MAX_REAPPLY re-applications it is `stale` too.
- With decision.confirm_wins an apparent win is re-run with another seed; a keep needs both runs (for a
  re-applied candidate: the first run and the re-applied one) to beat the best by more than the threshold.
- A would-be keep that got more compute than the best (runner.decision.more_compute: a faster machine, a larger
  CPU share) is judged against the best re-run now with its seed (trials/<n>/recheck) instead; `rec.recheck`
  says why and what it gave. A re-run that failed or ran at another speed again means a discard.
- Every run a keep rests on (its run, confirmation, re-applied run) is evaluated with the bar of its moment
  (runner.decision.probe_bar: the evaluator probes every batch below it) and must have been probed on every batch
  (`decision.unprobed`, else discard), and must not have trained measurably longer than the best on the host's
  clock (`decision.trained_longer` with decision.max_seconds_over_best, else over_budget).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import decision, patch
from .executor import TrialOutcome
from .decision import DISCARD, KEEP, STALE
from .ledger import TrialRecord, fill, number
from .proposers import Context, Proposal
from .runs import fresh_dir
from .text import printable

MAX_REAPPLY = 2      # re-applications onto a newer best before a winning candidate is recorded stale


def run_candidate(loop, n: int, proposal: Proposal, ctx: Context, proposing_s: float,
                  waited_s: float = 0.0) -> TrialRecord:
    loop.events.trial_started(n, "candidate")
    loop.events.trial_phase(n, "proposed", f"by {loop.proposer.name} in {proposing_s:.1f} s")
    rec = _new_record(loop, n, ctx.parent, loop.proposer.name)
    rec.timings["propose_s"] = round(proposing_s, 3)      # the proposer's own time (made ahead, maybe)
    rec.timings["proposal_wait_s"] = round(waited_s, 3)   # what a free slot waited for it
    tick = _Stopwatch(rec.timings)
    trial_dir = fresh_dir(loop.dir / "trials" / str(n))
    rec.description = patch.clean_description(proposal.description)
    loop.events.trial_described(n, rec.description)
    rec.llm_usage = proposal.usage
    if proposal.raw_reply is not None:
        (trial_dir / "reply.txt").write_text(printable(proposal.raw_reply))   # for people: escaped

    # the patch policy, on the files the proposer saw: a refusal never reaches git or a container
    loop.events.trial_phase(n, "checking", rec.description)
    current = ctx.files
    verdict = (patch.PatchCheck(False, proposal.error) if proposal.error
               else patch.check(proposal, loop.policy.patch, loop.ws.tree(ctx.parent), current))
    rec.diff_lines = verdict.diff_lines
    tick("check_s")
    if not verdict.ok:
        return loop.record(rec, decision.REJECTED, verdict.reason)
    (trial_dir / "diff.patch").write_text(printable(verdict.diff))   # git holds the exact change

    # the candidate commit on the best it was proposed on, reachable from its trial ref
    loop.events.trial_phase(n, "committing", rec.description)
    rec.commit = loop.ws.commit_files(ctx.parent, proposal.files,
                                      f"trial {n}: {rec.description}\n\nAutoresearch-Run: {loop.tag}\n")
    loop.ws.set_trial_ref(loop.tag, n, rec.commit)
    tick("git_s")
    return _train_and_decide(loop, n, rec)


def rerun_candidate(loop, n: int, commit: str) -> TrialRecord:
    """A dead run's in-flight candidate: its commit runs again under the same id (recorded once)."""
    loop.events.trial_started(n, "candidate")
    parent, subject = loop.ws.commit_info(commit)
    rec = _new_record(loop, n, parent, loop.meta.get("proposer", ""))
    fresh_dir(loop.dir / "trials" / str(n))
    rec.description = patch.clean_description(subject.split(": ", 1)[-1]) + " (again after --resume)"
    loop.events.trial_described(n, rec.description)
    rec.commit = commit
    return _train_and_decide(loop, n, rec)


def _new_record(loop, n: int, parent: str, proposer: str) -> TrialRecord:
    return TrialRecord(trial=n, kind="candidate", status=decision.REJECTED, description="", run=loop.tag,
                       parent=parent, proposed_on=parent, proposer=proposer, seed=loop.policy.seed,
                       threshold=loop.thresh, started_at=time.time(), policy_sha256=loop.policy.sha256(),
                       data_manifest_sha256=loop.meta["data_manifest_sha256"], image=loop.image)


def _train_and_decide(loop, n: int, rec: TrialRecord) -> TrialRecord:
    # the best moved since the proposal: train the change re-applied onto it (or give up: stale, no trial)
    with loop.lock:
        best = loop.best
        if rec.parent != best.commit:
            merged = _reapply(loop, n, rec, best)
            if merged is None:
                return loop.record(rec, STALE, f"its change does not apply onto the newer best {best.commit[:12]} "
                                               "(committed while it waited for a slot)")
            rec.commit, rec.parent = merged, best.commit
            loop.ws.set_trial_ref(loop.tag, n, merged)
        below = decision.probe_bar(best.val_bpb, loop.thresh)

    tick = _Stopwatch(rec.timings)
    outcome = loop.trial(n, rec.commit, loop.policy.seed, "", below)
    tick("trial_s")
    fill(rec, outcome)
    if outcome.status != "ok":
        with loop.lock:
            return loop.record(rec, outcome.status, outcome.error)
    if short := decision.short_of_steps(loop.policy.train.max_steps, rec.num_steps):
        with loop.lock:
            return loop.record(rec, DISCARD, short)
    return _decide(loop, n, rec, outcome.val_bpb)


def _decide(loop, n: int, rec: TrialRecord, val: float) -> TrialRecord:
    """Keep, discard or stale against the best at decision time, running the confirmation and re-applied trials
    that takes outside the lock (other slots decide meanwhile). `val`: the worse of the runs that must all win."""
    rules, confirmed, reapplied = loop.policy.decision, False, 0
    rerun: _Rerun | None = None                        # the best re-run now, when the candidate got more compute
    runs = [("run", rec.probe_scope, rec.training_seconds)]   # every run a keep would rest on: scope, host train s
    while True:
        with loop.lock:
            best = loop.best
            bar = _bar(best, rerun)
            again = " (the best re-run now)" if rerun is not None and rerun.commit == best.commit else ""
            rec.best_at_decision, rec.best_bpb_before = best.commit, bar
            v = decision.judge(val, bar, loop.thresh, rules)
            if v.action == DISCARD:
                return loop.record(rec, DISCARD, v.reason + (" (the worse of its runs)" if confirmed else "") + again)
            if refused := _refuse(loop, rec, v.reason, runs, best, rerun):
                return refused
            below = decision.probe_bar(bar, loop.thresh)   # for a confirmation or re-applied run of it
            why = _recheck_reason(loop, rec, best, rerun)   # a keep would rest on more compute: re-run the best
            if not why and rec.parent == best.commit and (v.action == KEEP or confirmed):
                return loop.record(rec, KEEP, v.reason.replace("; confirming with another seed", "")
                                   + (", confirmed by a second run" if confirmed else "") + again)
            if not why and rec.parent != best.commit:
                if reapplied >= MAX_REAPPLY:
                    return loop.record(rec, STALE, f"the best moved {reapplied} times while it was re-applied")
                merged = _reapply(loop, n, rec, best)
                if merged is None:
                    return loop.record(rec, STALE, f"beat the best but its change does not apply onto the newer "
                                                   f"best {best.commit[:12]}")
        if why:                                        # the best again, now, on the machine as it is
            rerun = _recheck(loop, n, rec, best, why)
            if rerun.unusable:
                with loop.lock:
                    return loop.record(rec, DISCARD, rerun.unusable)
        elif rec.parent != best.commit:                # train the re-applied commit; it alone can be kept
            reapplied += 1
            seed = decision.confirm_seed(loop.policy.seed, n) if rules.confirm_wins else loop.policy.seed
            loop.events.trial_phase(n, "re-applied", f"onto the newer best {best.commit[:12]}, seed {seed}")
            t = time.monotonic()
            ro = loop.trial(n, merged, seed, "rebased", below)
            rec.timings["rebased_s"] = round(rec.timings.get("rebased_s", 0.0) + time.monotonic() - t, 3)
            rec.rebased = {"from_commit": rec.commit, "from_val_bpb": rec.val_bpb, "onto": best.commit,
                           **_summary(ro, seed)}
            if ro.status != "ok":
                with loop.lock:
                    return loop.record(rec, DISCARD, f"re-applied onto {best.commit[:12]}, its run ended "
                                                     f"{ro.status}: {ro.error}")
            rec.commit, rec.parent = merged, best.commit
            fill(rec, ro)
            runs.append(("re-applied run", ro.probe_scope, number(ro.timings.get("train_host_s"))))
            val, confirmed = max(val, ro.val_bpb), confirmed or rules.confirm_wins
        else:                                          # v.action == CONFIRM: the same code with another seed
            seed = decision.confirm_seed(loop.policy.seed, n)
            loop.events.trial_phase(n, "confirming", f"seed {seed}")
            t = time.monotonic()
            co = loop.trial(n, rec.commit, seed, "confirm", below)
            rec.timings["confirm_s"] = round(time.monotonic() - t, 3)
            rec.confirm = _summary(co, seed)
            runs.append(("confirmation run", co.probe_scope, number(co.timings.get("train_host_s"))))
            with loop.lock:
                best = loop.best
                if co.status != "ok" or rec.parent == best.commit:
                    rec.best_at_decision, rec.best_bpb_before = best.commit, _bar(best, rerun)
                    v = decision.judge_confirmation(val, co.status, co.val_bpb, _bar(best, rerun), loop.thresh)
                    refused = _refuse(loop, rec, v.reason, runs, best, rerun) if v.action == KEEP else None
                    return refused or loop.record(rec, v.action, v.reason)
            val, confirmed = max(val, co.val_bpb), True       # the best moved meanwhile: re-applied next


@dataclass
class _Rerun:
    """The best re-run now (a recheck): which commit, its outcome, and why it cannot be compared (or "")."""
    commit: str
    outcome: TrialOutcome
    unusable: str = ""


def _bar(best: TrialRecord, rerun: _Rerun | None) -> float:
    """What the candidate must beat: the best's val_bpb, or its re-run's when the best was re-run now."""
    return rerun.outcome.val_bpb if rerun is not None and rerun.commit == best.commit else best.val_bpb


def _refuse(loop, rec: TrialRecord, reason: str, runs: list, best: TrialRecord,
            rerun: _Rerun | None) -> TrialRecord | None:
    """Record a would-be keep (`reason`) as not kept when a run it rests on (`runs`: (what, probes scope, host
    train s)) was probed on one batch only (discard), or trained measurably longer than the best (over_budget);
    None when neither (call under the loop's lock)."""
    if unprobed := decision.unprobed([(what, scope) for what, scope, _ in runs]):
        return loop.record(rec, DISCARD, f"{reason}, but {unprobed}")
    if longer := decision.trained_longer([(what, s) for what, _, s in runs], _best_seconds(best, rerun),
                                         loop.policy.decision.max_seconds_over_best):
        return loop.record(rec, "over_budget", f"{reason}, but {longer}")
    return None


def _best_seconds(best: TrialRecord, rerun: _Rerun | None) -> float | None:
    """The best's train phase on the host's clock: the longer of its own run and its re-run now, if any."""
    again = number(rerun.outcome.timings.get("train_host_s")) if rerun is not None and rerun.commit == best.commit \
        else None
    times = [s for s in (best.training_seconds, again) if s is not None]
    return max(times) if times else None


def _recheck_reason(loop, rec: TrialRecord, best: TrialRecord, rerun: _Rerun | None) -> str | None:
    """Why the best must be re-run before this candidate can be kept (runner.decision.more_compute), or None: not
    built on the best (its re-applied run comes first), already re-run, or compared step for step (a step-limited
    run that reached max_steps did the same work whatever the machine's speed)."""
    if rec.parent != best.commit or (rerun is not None and rerun.commit == best.commit):
        return None
    if decision.compared_by_steps(loop.policy.train.max_steps, rec.num_steps):
        return None
    return decision.more_compute(rec, best, loop.policy.decision.max_speed_drift)


def _recheck(loop, n: int, rec: TrialRecord, best: TrialRecord, why: str) -> _Rerun:
    """Re-run the best with its seed in trials/<n>/recheck; rec.recheck says why and what it gave."""
    seed = best.seed if best.seed is not None else loop.policy.seed
    loop.events.trial_phase(n, "rechecking", f"the best {best.commit[:12]} again, seed {seed}: {why}")
    t = time.monotonic()
    ro = loop.trial(n, best.commit, seed, "recheck")
    rec.timings["recheck_s"] = round(rec.timings.get("recheck_s", 0.0) + time.monotonic() - t, 3)
    differs = decision.speed_differs(rec, ro, loop.policy.decision.max_speed_drift) if ro.status == "ok" else None
    got = (f"it ended {ro.status}: {ro.error}" if ro.status != "ok" else
           f"val_bpb {ro.val_bpb:.6f}, calibration {_num(ro.calibration_s, '.3f', ' s')}, CPU share "
           f"{_num(ro.cpu_share, '.0%')}" + (f"; {differs}" if differs else ""))
    rec.recheck = f"re-ran the best {best.commit[:12]} (seed {seed}) before deciding: {why}; the re-run gave {got}"
    unusable = "" if ro.status == "ok" and not differs else (
        f"not kept: it got more compute than the best's run, and the best's re-run "
        f"{'ended ' + ro.status if ro.status != 'ok' else 'ran at another speed again'}, so its gain cannot be "
        "told from the machine's speed")
    return _Rerun(best.commit, ro, unusable)


def _num(x: float | None, fmt: str, unit: str = "") -> str:
    return "unmeasured" if x is None else f"{x:{fmt}}{unit}"


def _reapply(loop, n: int, rec: TrialRecord, best: TrialRecord) -> str | None:
    """rec's change re-applied onto best (a new commit under refs/autoresearch/<tag>/rebased/<n>), or None."""
    files = loop.ws.merge(rec.parent, best.commit, rec.commit, loop.allowed)
    if files is None:
        return None
    check = patch.check(Proposal(files, rec.description), loop.policy.patch, loop.ws.tree(best.commit),
                        loop.ws.read_files(best.commit, loop.allowed))
    if not check.ok:
        return None
    merged = loop.ws.commit_files(best.commit, files, f"trial {n}: {rec.description} (re-applied onto "
                                                      f"{best.commit[:12]})\n\nAutoresearch-Run: {loop.tag}\n")
    loop.ws.git("update-ref", loop.ws.rebased_ref(loop.tag, n), merged)
    return merged


def _summary(o, seed: int) -> dict:
    return {"seed": seed, "status": o.status, "val_bpb": o.val_bpb, "error": o.error,
            "training_seconds": number(o.timings.get("train_host_s")),
            "claimed_training_seconds": number(o.train_summary.get("training_seconds")), "trial_timings": o.timings,
            "calibration_s": o.calibration_s, "cpu_share": o.cpu_share, "probe_scope": o.probe_scope}


class _Stopwatch:
    """tick(name): seconds since the previous tick, added to timings[name]."""

    def __init__(self, timings: dict):
        self.timings, self.last = timings, time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.last, 3)
        self.last = now
