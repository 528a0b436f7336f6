"""The decision: keep a candidate only when its val_bpb beats the best by more than the noise. TRUSTED CODE.

Rules (from the policy's `decision` section):
- the gain a candidate needs is `threshold = max(min_delta, noise_sigmas * noise_std)`; `noise_std` is the sample
  standard deviation of the baseline repeats (`baseline_repeats` runs of the start commit with seeds seed,
  seed+1, ...), or 0 with a single baseline run;
- a candidate is kept when `best - val_bpb > threshold` (strictly: a tie or a gain inside the noise is discarded);
- with `confirm_wins`, an apparent win is re-run with another seed first, and kept only if that run beats the best
  by more than the threshold as well.
Candidates all train with the run's seed, so the main comparison is paired: same data order, different code.
The bar is the baseline run with that seed, not the mean of the repeats: the seed moves val_bpb more than the
wall-clock budget's run-to-run spread does, and pairing cancels the seed's part (docs/benchmarks.md, "Seed noise").
A trial that did not end `ok` is never kept; its own status (crash, over_budget, ...) is its verdict.

A policy with no bar at all (min_delta 0 and no noise estimate) keeps a change that does nothing whenever the
run-to-run noise favours it, unless the runs are bit-reproducible: `train.max_steps` on the CPU makes a run of
unchanged code give exactly the best's val_bpb, which the strict rule never keeps. `noop_warning` says so in one
line; `run`, `baseline` and the report show it. A step-limited run that the time budget stopped before
max_steps (a loaded machine) is not reproducible either: `short_of_steps` says so, and such a run is never kept
(a baseline that falls short stops the run with the fix).

Comparisons on a machine of the same speed: with a wall-clock budget, a run that got more compute trains more
steps and scores better with the same code. Each trial's compute is measured outside the candidate: the trusted
launcher's fixed calibration kernel (`calibration_s`, the machine's speed; the code cannot change it) and the
train container's CPU share of its quota (`cpu_share`, the machine's load and the code's own use of its cores).
A candidate that would be kept but got more compute than the best by more than `decision.max_speed_drift`
(`more_compute`) is not kept on that basis: the best is re-run now, same seed (runner.candidate, trials/<n>/recheck),
and the candidate is judged against that re-run instead, provided the re-run's calibration matches the
candidate's (`speed_differs`: the machine changed again -> discard). Only the calibration is compared then: the
re-run measured the best's code under today's load, and a CPU share that still differs is the code's own doing.
A step-limited run that reached train.max_steps is compared step for step, so its speed does not matter
(`compared_by_steps`).

Training time, measured outside the candidate: the host kills a train phase at budget + allowance, and on the CPU
the cgroup bounds its CPU time (runner.sandbox.classify). On a GPU neither bounds the GPU's work: a candidate that
raises its own budget trains until just before the deadline. `decision.max_seconds_over_best` closes that: a
would-be keep whose train phase on the host's clock (hand-over of train.py to the container's exit, every run
that its keep rests on) took more than that many seconds longer than the best's (`trained_longer`) is
`over_budget`. Honest candidates differ there only in start-up before the first batch and export.

Probes where a score can be kept: a run's evaluation probes every eval batch for fairness when its score is below
`probe_bar` (the score a keep needs: best - threshold), one batch otherwise (trainer/evaluate.py); a peek that does
not beat the bar buys nothing. `unprobed` refuses a keep resting on a run probed on one batch only.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .policy import DecisionRules

CONFIRM_SEED_OFFSET = 10_000   # a confirmation of trial N uses seed + CONFIRM_SEED_OFFSET + N
EPS = 1e-12                    # float rounding: a gain equal to the threshold in decimal is not "more"

KEEP = "keep"                  # the candidate becomes the new best (a baseline run is recorded as kept)
DISCARD = "discard"            # scored, but not better than the best by more than the threshold
CONFIRM = "confirm"            # an apparent win, re-run with another seed first (an action, not a ledger status)
REJECTED = "rejected"          # refused before any container: the patch policy, or a proposer's unusable reply
# the ledger statuses the runner decides; every other ledger status is a trial's failure (crash, oom, ...)
STALE = "stale"                # beat the bar, but its change does not apply onto the newer best (trials in flight)
DECISION_STATUSES = (KEEP, DISCARD, REJECTED, STALE)


@dataclass
class Verdict:
    action: str        # KEEP | DISCARD | CONFIRM
    reason: str        # one line for the ledger
    threshold: float


def noise_std(bpbs: list[float]) -> float | None:
    """Sample standard deviation of repeated baseline BPBs; None with fewer than two."""
    vals = [b for b in bpbs if b is not None and math.isfinite(b)]
    return statistics.stdev(vals) if len(vals) >= 2 else None


def threshold(rules: DecisionRules, std: float | None) -> float:
    return max(rules.min_delta, rules.noise_sigmas * std if std else 0.0)


def noop_warning(policy) -> str | None:
    """One line when the policy can keep an unchanged train.py (a zero bar and runs that differ), else None."""
    rules, train = policy.decision, policy.train
    reproducible = train.max_steps is not None and not policy.wants_gpu   # CUDA kernels are not bit-reproducible
    no_noise_bar = rules.baseline_repeats < 2 or rules.noise_sigmas == 0
    if reproducible or rules.min_delta > 0 or not no_noise_bar:
        return None
    why = "on a GPU" if policy.wants_gpu and train.max_steps is not None else "no train.max_steps"
    return ("WARNING: this policy can keep a change that does nothing: decision.min_delta is 0, there is no noise "
            f"estimate (baseline_repeats 1 or noise_sigmas 0) and runs are not bit-reproducible ({why}), so noise "
            "alone can look like a gain; set decision.min_delta, decision.baseline_repeats >= 2 or train.max_steps")


def short_of_steps(max_steps: int | None, num_steps: int | None) -> str | None:
    """With train.max_steps: one line when the run reported fewer steps (the time budget stopped it first), which
    makes its val_bpb not comparable step for step; None otherwise (no step limit, or the count was not reported)."""
    if max_steps is None or num_steps is None or num_steps >= max_steps:
        return None
    return (f"trained {num_steps} of train.max_steps {max_steps} steps before the time budget ran out, so its "
            "val_bpb is not reproducible step for step; raise train.budget_seconds or lower train.max_steps "
            "(or run on a less loaded machine)")


def compared_by_steps(max_steps: int | None, num_steps: int | None) -> bool:
    """A step-limited run that reached train.max_steps: it did the same work whatever the machine's speed, so no
    re-run for speed. num_steps is the candidate's claim; a candidate that lies about it gains only what ignoring
    max_steps gains anyway (training up to the wall-clock budget, which the host enforces)."""
    return max_steps is not None and num_steps is not None and num_steps >= max_steps


def more_compute(run, ref, max_drift: float | None) -> str | None:
    """One line when `run` got measurably more compute than `ref` (TrialRecords or TrialOutcomes): its calibration
    faster than ref's by more than max_drift, or its CPU share higher by more than that; None otherwise, or when
    neither was measured on both."""
    if max_drift is None:
        return None
    c, r = getattr(run, "calibration_s", None), getattr(ref, "calibration_s", None)
    if c and r and r / c - 1 > max_drift + EPS:
        return (f"its calibration took {c:.3f} s against {r:.3f} s in the best's run, a machine {r / c - 1:.0%} "
                f"faster (decision.max_speed_drift {max_drift:.0%})")
    c, r = getattr(run, "cpu_share", None), getattr(ref, "cpu_share", None)
    if c and r and c / r - 1 > max_drift + EPS:
        return (f"its train container got {c:.0%} of its CPU quota against {r:.0%} in the best's run "
                f"(decision.max_speed_drift {max_drift:.0%})")
    return None


def speed_differs(run, rerun, max_drift: float | None) -> str | None:
    """One line when the machine's speed (the calibration) differs between `run` and `rerun` by more than
    max_drift either way; None otherwise, or when either has no calibration."""
    c, r = getattr(run, "calibration_s", None), getattr(rerun, "calibration_s", None)
    if max_drift is None or not c or not r:
        return None
    drift = max(c, r) / min(c, r) - 1
    if drift > max_drift + EPS:
        return (f"the machine's speed changed again: calibration {r:.3f} s in the re-run against {c:.3f} s in the "
                f"candidate's run ({drift:.0%} apart)")
    return None


def trained_longer(runs: list[tuple[str, float | None]], best_s: float | None, limit: float | None) -> str | None:
    """One line when one of `runs` ((what, host train seconds)) took more than `limit` seconds longer than the
    best's train phase (best_s); None otherwise, or when limit is None or a time was not measured."""
    if limit is None or best_s is None:
        return None
    for what, s in runs:
        if s is not None and s - best_s > limit + EPS:
            return (f"its {what} trained {s:.1f} s on the host's clock against {best_s:.1f} s for the best, "
                    f"{s - best_s:.1f} s longer (decision.max_seconds_over_best {limit:g} s): more training time, "
                    "not a better model")
    return None


def probe_bar(best_bpb: float, thresh: float) -> float:
    """The score under which a candidate's evaluation probes every batch: what a keep needs (best - thresh; `judge`
    keeps only below it), floored at a tiny positive number (nothing scores below it: nothing can be kept)."""
    return max(best_bpb - thresh, 1e-9)


def unprobed(runs: list[tuple[str, str | None]]) -> str | None:
    """One line when a run that a keep would rest on ((what, probes scope)) was probed on one batch only."""
    for what, scope in runs:
        if scope == "one_batch":
            return (f"its {what} was probed on one eval batch only (it scored above the bar it was given), so its "
                    "score cannot be kept")
    return None


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    return [seed + i for i in range(repeats)]


def confirm_seed(seed: int, trial_id: int) -> int:
    return seed + CONFIRM_SEED_OFFSET + trial_id


def judge(val_bpb: float, best: float, thresh: float, rules: DecisionRules) -> Verdict:
    """The verdict on an `ok` trial: keep, discard, or (with confirm_wins) confirm first."""
    gain = best - val_bpb
    if not math.isfinite(val_bpb) or not gain > thresh + EPS:
        what = "no gain" if gain <= 0 else f"gain {gain:.6f} within the threshold {thresh:.6f}"
        return Verdict(DISCARD, f"{val_bpb:.6f} vs best {best:.6f}: {what}", thresh)
    if rules.confirm_wins:
        return Verdict(CONFIRM, f"{val_bpb:.6f} beats {best:.6f} by {gain:.6f}; confirming with another seed",
                       thresh)
    return Verdict(KEEP, f"{val_bpb:.6f} beats {best:.6f} by {gain:.6f} (> {thresh:.6f})", thresh)


def judge_confirmation(first: float, confirm_status: str, confirm_bpb: float | None, best: float,
                       thresh: float) -> Verdict:
    """Keep an apparent win only if its confirmation run (another seed) also beats best by more than thresh."""
    if confirm_status != "ok" or confirm_bpb is None:
        return Verdict(DISCARD, f"{first:.6f} looked better but the confirmation run ended {confirm_status}",
                       thresh)
    gain = best - confirm_bpb
    if gain > thresh + EPS:
        return Verdict(KEEP, f"{first:.6f} and confirmation {confirm_bpb:.6f} both beat {best:.6f} "
                             f"by more than {thresh:.6f}", thresh)
    return Verdict(DISCARD, f"{first:.6f} beat {best:.6f} but the confirmation gave {confirm_bpb:.6f} "
                            f"(gain {gain:.6f}, needed > {thresh:.6f}): noise", thresh)
