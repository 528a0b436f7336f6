"""The seam between a run and the machinery that runs its trials. ENGINE-NEUTRAL: nothing here imports Docker.

A run hands an `Executor` one `TrialSpec` at a time and gets a `TrialOutcome` back; it never sees a container.

    executor = make("docker")                      # runner/sandbox/executor.py: the hardened Docker containers
    image = executor.resolve_image(policy)         # the image a new run pins in run.json (UserError: none built)
    executor.remove_leftovers(run_tag)             # what dead runs left behind (any tag whose lock is free)
    executor.start(policy, image=..., data_dir=..., run_tag=..., work_dir=...)   # start ahead for the next trial
    outcome = executor.run(spec, on_line, on_phase)                             # train, then eval
    executor.close()                               # whatever was started ahead, removed; idempotent

Several trials at once: after `start`, `slots` says how many `run` calls may be in flight together (each from its
own thread); `run` is thread-safe, picks a free slot itself, and records it in `outcome.slot`. A run keeps that many
trials in flight.

Contract of `run`: it never raises for anything the candidate did; engine and image failures come back as status
`infra` (never blamed on the candidate); a bad data directory is the user's (UserError). `val_bpb` is only ever
the trusted evaluator's validated score. `on_line` hears the train phase's log lines (escape them before showing
them), `on_phase` the names "training" and "evaluating" as those phases start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

EXECUTORS = ("docker", "ray")          # the kinds `make` knows


@dataclass
class TrialSpec:
    run_tag: str
    trial_id: str                     # unique in the run: "7", "7-confirm", "0-repeat-1"
    candidate_dir: Path               # a read-only copy of the candidate commit's files (train.py is used)
    data_dir: Path                    # prepared data: train/, val/, tokenizer/, manifest.json
    policy: object                    # runner.policy.Policy
    image: str                        # trial image tag or id (sha256:...)
    seed: int
    work_dir: Path                    # host dir for this trial's files (train.py copy, result.json, logs)
    keep_model: bool = False          # keep work_dir/model.pt2 after the trial (reproduce, debugging)
    # the evaluator probes every eval batch only when the score is below this (runner.decision.probe_bar: the score
    # a keep needs), else one batch; None: every batch whatever the score (baselines, re-checks of the best)
    every_batch_below: float | None = None


@dataclass
class TrialOutcome:
    status: str                       # ok | crash | timeout | over_budget | oom | export_failed | violation | infra
    val_bpb: float | None = None      # only from the eval container's validated result.json
    result: dict | None = None        # the validated result.json
    train_summary: dict = field(default_factory=dict)   # train.py's own `key: value` block; informational only
    log_tail: str = ""
    timings: dict = field(default_factory=dict)         # per phase, seconds (train_host_s: the host's clock)
    image_digest: str | None = None   # the image id (sha256:...) the trial ran on
    error: str = ""                   # one line when status != ok
    slot: str = ""                    # where it ran: "0", "gpu1", "node-ab12/0"
    attempts: int = 1                 # >1: an executor re-ran it after an infra failure (a node lost mid-trial)
    # how much compute the trial got, measured outside the candidate (None where it could not be measured)
    calibration_s: float | None = None   # the trusted launcher's fixed kernel, before the hand-over (lower: faster)
    cpu_share: float | None = None       # train container CPU s / (host train s x quota cores); 1.0: all of it
    throttled_s: float | None = None     # seconds the CPU quota held the train container back (cgroup)
    probe_scope: str | None = None       # the result's probes.scope: every_batch | one_batch (None: no result)


OnLine = Callable[[str], None]
OnPhase = Callable[[str], None]


class Executor(Protocol):
    name: str
    slots: int                        # trials that may run at once (valid after start)

    def resolve_image(self, policy) -> str:
        """The image tag a new run under `policy` pins (the one `autoresearch build` made); UserError if none."""

    def remove_leftovers(self, run_tag: str) -> int:
        """Remove what dead runs left behind, this run's earlier runners' at least (Docker: every run on the host
        whose lock is free); how many things were removed."""

    def start(self, policy, *, image: str, data_dir: Path, run_tag: str, work_dir: Path) -> None:
        """Get ready for this run's trials (start the next trial's sandbox ahead, where the engine can)."""

    def run(self, spec: TrialSpec, on_line: OnLine | None = None, on_phase: OnPhase | None = None) -> TrialOutcome:
        """One trial: train the candidate, score its model. See the module docstring for the contract."""

    def close(self) -> None:
        """Release whatever start() and run() left running, the trials still in flight included (an interrupt);
        after it run() starts nothing. Safe to call twice, and without start()."""


def make(kind: str = "docker", address: str | None = None) -> Executor:
    """The executor of this kind (`address`: a Ray cluster's); a one-line UserError naming the kinds otherwise."""
    if kind == "docker":
        from .sandbox.executor import DockerExecutor
        return DockerExecutor()
    if kind == "ray":
        from .ray_executor import RayExecutor          # needs the optional extra: pip install .[ray]
        return RayExecutor(address)
    from .errors import UserError
    raise UserError(f"unknown executor {kind!r}; use one of: {', '.join(EXECUTORS)}")
