"""The research loop: propose -> check -> commit -> trial -> decide -> ledger + branch. TRUSTED CODE.

Reads top to bottom as the data flow of one run (`Run.run`):
    open the run     runs/<tag>/ (run.json, lock), the branch autoresearch/<tag>, the ledger; on --resume reconcile
                     the branch with the ledger and remove containers the dead run left behind
    baseline         the start commit, trained `baseline_repeats` times (seeds seed, seed+1, ...): best + noise
    each trial       proposal (mutate / openai) -> patch policy (refused: `rejected`, no container) -> candidate
                     commit on the best, ref refs/autoresearch/<tag>/trials/<n> -> read-only export -> trial
                     (train + eval containers) -> decision (optional confirmation with another seed) ->
                     ledger line (fsynced) -> branch advanced only on keep
Ordering makes a kill at any point safe: the ledger line is written before the branch moves, a trial without a
ledger line is run again on --resume, and a branch one step behind its ledger is moved forward.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from trainer.shards import atomic_write_json, manifest_sha256

from . import decision, patch
from .errors import InfraError, UserError
from .ledger import LOG_TAIL_CHARS, Ledger, TrialRecord, fill as _fill, number as _num  # noqa: F401 (re-exported)
from .policy import Policy
from .proposers import Context, Proposer, make
from .text import printable
from .workspace import Workspace, check_tag

MAX_INFRA_IN_A_ROW = 3
MAX_LOG_BYTES = 4 << 20        # train.log kept per trial


class Events:
    """What the loop reports as it goes; the live view (runner.live) overrides these. Defaults do nothing."""

    def run_started(self, info: dict) -> None: ...
    def trial_started(self, trial_id: int, kind: str) -> None: ...
    def phase(self, name: str, detail: str = "") -> None: ...
    def line(self, text: str) -> None: ...
    def trial_finished(self, rec: TrialRecord, summary: "RunSummary") -> None: ...


@dataclass
class RunConfig:
    repo: Path
    tag: str
    data_dir: Path | None = None       # None on --resume: the run's own
    policy: Policy | None = None       # None on --resume: the run's own
    proposer: str | None = None        # mutate | openai; None: the policy's (or, on --resume, the run's)
    max_trials: int | None = None      # candidate trials in the whole run (baseline excluded); None: no limit
    hours: float | None = None         # stop starting trials after this long (from this invocation)
    resume: bool = False
    image: str | None = None           # trial image tag; None: policy.image, else the tag `build` makes


@dataclass
class RunSummary:
    tag: str
    run_dir: Path
    start_commit: str = ""
    best_commit: str = ""
    best_bpb: float | None = None
    baseline_bpb: float | None = None
    counts: dict = field(default_factory=dict)     # status -> number of trials
    trials: int = 0                                # ledger lines
    stopped: str = ""                              # why the loop ended


def run_dir_of(repo: Path, tag: str) -> Path:
    return Path(repo) / "runs" / check_tag(tag)


def existing_run_dir(repo: Path, tag: str) -> Path:
    """run_dir_of a run that was started (it has run.json); a UserError naming the tag otherwise."""
    run_dir = run_dir_of(repo, tag)
    if not (run_dir / "run.json").exists():
        raise UserError(f"no run {tag} in {run_dir.parent}; `autoresearch status` lists the runs")
    return run_dir


def default_trial_fn():
    from .trial import run_trial
    return run_trial


def default_cleanup(tag: str) -> None:
    """Remove containers a dead run with this tag left behind (by label)."""
    from .sandbox.cleanup import remove_leftovers
    remove_leftovers(run_tag=tag)


class Run:
    def __init__(self, cfg: RunConfig, *, trial_fn: Callable | None = None, proposer: Proposer | None = None,
                 events: Events | None = None, cleanup: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.tag = check_tag(cfg.tag)
        self.trial_fn = trial_fn
        self.proposer = proposer
        self.events = events or Events()
        self.cleanup = cleanup or default_cleanup
        self.ws = Workspace(cfg.repo)
        self.dir = run_dir_of(self.ws.root, self.tag)
        self.ledger = Ledger(self.dir)
        self.standby = None                                  # set while run() runs

    # =========================================================================== the run, top to bottom
    def run(self) -> RunSummary:
        self.dir.mkdir(parents=True, exist_ok=True)
        with _RunLock(self.dir / ".lock", self.tag), contextlib.ExitStack() as stack:
            meta = self._open()                              # run.json + branch (+ reconcile on resume)
            self.cleanup(self.tag)                           # containers of a dead run with this tag
            self.standby = stack.enter_context(self._standby())   # each trial starts the next one's containers
            self.trial_fn = self.trial_fn or default_trial_fn()
            records = self.ledger.records()
            self.events.run_started({**meta, "resume": self.cfg.resume, "trials_done": len(records)})
            best = best_of(records)
            if best is None:
                best = self._baseline(_next_id(records))     # raises when the unchanged train.py fails
                records = self.ledger.records()
            thresh = decision.threshold(self.policy.decision, baseline_of(records).noise_std)
            deadline = time.monotonic() + self.cfg.hours * 3600 if self.cfg.hours else None
            infra_in_a_row = 0
            while True:
                done = sum(1 for r in records if r.kind == "candidate")
                if self.max_trials is not None and done >= self.max_trials:
                    stopped = f"max_trials {self.max_trials} reached"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = f"--hours {self.cfg.hours} spent"
                    break
                rec = self._candidate(_next_id(records), best, thresh, records)
                self.ledger.append(rec)                      # first the ledger (fsynced) ...
                if rec.status == "keep":
                    self.ws.advance(self.tag, rec.commit, best.commit)   # ... then the branch
                    best = rec
                records.append(rec)
                self.events.trial_finished(rec, self.summary(records))
                infra_in_a_row = infra_in_a_row + 1 if rec.status == "infra" else 0
                if infra_in_a_row >= MAX_INFRA_IN_A_ROW:
                    raise InfraError(f"{infra_in_a_row} trials in a row failed in the sandbox machinery, last: "
                                     f"{rec.reason}; fix the engine (`autoresearch doctor`), then --resume")
            summary = self.summary(records)
            summary.stopped = stopped
            return summary

    # =========================================================================== opening and resuming
    def _open(self) -> dict:
        meta_path = self.dir / "run.json"
        branch = self.ws.rev(self.ws.branch_ref(self.tag))
        if not self.cfg.resume:
            if meta_path.exists() or self.ledger.exists():
                raise UserError(f"run {self.tag} exists in {self.dir}; pass --resume to continue it or choose "
                                "another --tag")
            policy = self.cfg.policy or Policy()
            data = resolve_data_dir(self.cfg.data_dir)
            start = self.ws.head_commit()
            if not any(p in self.ws.tree(start) for p in policy.patch.allowed_files):
                raise UserError(f"commit {start[:12]} of {self.ws.root} has none of the allowed files "
                                f"({', '.join(policy.patch.allowed_files)}); commit train.py first")
            image = self.cfg.image or policy.image or _default_image(policy)
            if self.proposer is None:   # before the branch exists: a missing API key must not leave one behind
                self.proposer = make(self.cfg.proposer or policy.proposer.kind, policy)
            self.ws.create_branch(self.tag, start)
            meta = {"tag": self.tag, "repo": str(self.ws.root), "branch": f"autoresearch/{self.tag}",
                    "start_commit": start, "created_at": time.time(), "policy": policy.model_dump(),
                    "policy_sha256": policy.sha256(), "data_dir": str(data),
                    "data_manifest_sha256": manifest_sha256(data),
                    "proposer": self.cfg.proposer or policy.proposer.kind, "max_trials": self.cfg.max_trials,
                    "image": image}
            atomic_write_json(meta_path, meta)
        else:
            if not meta_path.exists():
                raise UserError(f"no run {self.tag} to resume in {self.dir}; start it without --resume")
            meta = json.loads(meta_path.read_text())
            stored = Policy.model_validate(meta["policy"])
            given = self.cfg.policy if self.cfg.policy is not None else stored
            if given.sha256() != stored.sha256():
                raise UserError(f"run {self.tag} started under another policy (sha256 {stored.sha256()[:12]}, "
                                f"given {given.sha256()[:12]}); resume without --policy or start a new tag")
            data = resolve_data_dir(self.cfg.data_dir or meta["data_dir"])
            if manifest_sha256(data) != meta["data_manifest_sha256"]:
                raise UserError(f"the data in {data} changed since run {self.tag} started (manifest hash "
                                f"{manifest_sha256(data)[:12]} vs {meta['data_manifest_sha256'][:12]}); "
                                "resume with the original --data or start a new tag")
            for key, value in (("proposer", self.cfg.proposer), ("max_trials", self.cfg.max_trials),
                               ("image", self.cfg.image)):
                if value is not None:
                    meta[key] = value
            meta["data_dir"] = str(data)
            atomic_write_json(meta_path, meta)
            if self.ledger.repair():
                self.events.phase("resume", "cut a torn last ledger line")
            self._reconcile(meta["start_commit"], branch)
        self.meta = meta
        self.policy = Policy.model_validate(meta["policy"])
        self.data = Path(meta["data_dir"])
        self.max_trials = meta["max_trials"]
        # fixed when the run started: a resumed run stays on the same image even if the recipe changed since
        self.image = meta["image"] or _default_image(self.policy)
        self.start = meta["start_commit"]
        self.program = self._program(self.start)
        self.allowed = list(self.policy.patch.allowed_files)
        if self.proposer is None:
            self.proposer = make(meta["proposer"], self.policy)
        return meta

    def _standby(self):
        """The run's slot started ahead (runner/sandbox/slot.py); removed when the run ends, however it ends."""
        from .sandbox.slot import Standby
        return contextlib.closing(Standby(self.policy, image=self.image, data_dir=self.data, run_tag=self.tag,
                                          base_dir=self.dir / "slots"))

    def _reconcile(self, start: str, head: str | None) -> None:
        """Put the branch where the ledger says the best is (a kill between ledger and update-ref)."""
        best = best_of(self.ledger.records())
        want = best.commit if best else start
        if head == want:
            return
        ours = set(self.ws.trial_refs(self.tag).values()) | {start}
        if head is not None and head not in ours:
            raise UserError(f"branch autoresearch/{self.tag} points at {head[:12]}, which this run did not make "
                            f"(the ledger's best is {want[:12]}); move it back (git branch -f) or start a new tag")
        self.ws.set_branch(self.tag, want)
        self.events.phase("resume", f"branch moved to the ledger's best {want[:12]}")

    def _program(self, commit: str) -> str:
        try:
            return self.ws.read_file(commit, "program.md")
        except InfraError:
            return ""

    # =========================================================================== the baseline
    def _baseline(self, n: int) -> TrialRecord:
        self.events.trial_started(n, "baseline")
        t0, wall0 = time.monotonic(), time.time()
        self._fresh_dir(self.dir / "trials" / str(n))
        self.ws.set_trial_ref(self.tag, n, self.start)
        rec = TrialRecord(trial=n, kind="baseline", status="keep", description="baseline", run=self.tag,
                          commit=self.start, proposer="baseline", seed=self.policy.seed, started_at=wall0,
                          policy_sha256=self.policy.sha256(), data_manifest_sha256=self.meta["data_manifest_sha256"],
                          image=self.image)
        seeds = decision.repeat_seeds(self.policy.seed, self.policy.decision.baseline_repeats)
        outcomes = [self._trial(n, self.start, s, "" if i == 0 else f"repeat-{i}") for i, s in enumerate(seeds)]
        main = outcomes[0]
        _fill(rec, main)
        rec.repeats = [{"seed": s, "status": o.status, "val_bpb": o.val_bpb} for s, o in zip(seeds, outcomes)]
        rec.noise_std = decision.noise_std([o.val_bpb for o in outcomes if o.status == "ok"])
        rec.threshold = decision.threshold(self.policy.decision, rec.noise_std)
        rec.status = "keep" if main.status == "ok" else main.status
        rec.reason = "the start commit, unchanged" if main.status == "ok" else main.error
        if main.status == "ok" and (short := decision.short_of_steps(self.policy.train.max_steps, rec.num_steps)):
            rec.status, rec.reason = "discard", short
        rec.timings = {"trial_s": round(time.monotonic() - t0, 3)}
        rec.finished_at = time.time()
        self.ledger.append(rec)
        self.events.trial_finished(rec, self.summary(self.ledger.records()))
        if rec.status != "keep":
            raise UserError(f"the baseline (unchanged train.py of {self.start[:12]}) ended {rec.status}: "
                            f"{rec.reason}; see {self.dir / 'trials' / str(n)}; fix it, then --resume")
        return rec

    # =========================================================================== one candidate trial
    def _candidate(self, n: int, best: TrialRecord, thresh: float, records: list[TrialRecord]) -> TrialRecord:
        self.events.trial_started(n, "candidate")
        timings: dict[str, float] = {}
        wall0 = time.time()
        tick = _Stopwatch(timings)
        rec = TrialRecord(trial=n, kind="candidate", status="rejected", description="", run=self.tag,
                          parent=best.commit, proposer=self.proposer.name, seed=self.policy.seed,
                          best_bpb_before=best.val_bpb, threshold=thresh, started_at=wall0,
                          policy_sha256=self.policy.sha256(), data_manifest_sha256=self.meta["data_manifest_sha256"],
                          image=self.image)
        trial_dir = self._fresh_dir(self.dir / "trials" / str(n))

        # 1. proposal (untrusted content)
        self.events.phase("proposing", self.proposer.name)
        current = self.ws.read_files(best.commit, self.allowed)
        ctx = Context(trial_id=n, seed=self.policy.seed, files=current, allowed_files=self.allowed,
                      program=self.program, history=[asdict(r) for r in records], best_bpb=best.val_bpb,
                      parent=best.commit)
        proposal = self.proposer.propose(ctx)
        tick("propose_s")
        rec.description = patch.clean_description(proposal.description)
        rec.llm_usage = proposal.usage
        if proposal.raw_reply is not None:
            (trial_dir / "reply.txt").write_text(printable(proposal.raw_reply))   # for people: escaped

        # 2. the patch policy: a refusal never reaches git or a container
        self.events.phase("checking", rec.description)
        verdict = (patch.Check(False, proposal.error) if proposal.error
                   else patch.check(proposal, self.policy.patch, self.ws.tree(best.commit), current))
        rec.diff_lines = verdict.diff_lines
        tick("check_s")
        if not verdict.ok:
            rec.status, rec.reason = "rejected", verdict.reason
            return self._finish(rec, timings)
        (trial_dir / "diff.patch").write_text(printable(verdict.diff))   # git holds the exact change

        # 3. the candidate commit, parented on the best, reachable from its trial ref
        self.events.phase("committing", rec.description)
        rec.commit = self.ws.commit_files(best.commit, proposal.files,
                                          f"trial {n}: {rec.description}\n\nAutoresearch-Run: {self.tag}\n")
        self.ws.set_trial_ref(self.tag, n, rec.commit)
        tick("git_s")

        # 4. the trial: train + eval containers on a read-only export of the commit
        outcome = self._trial(n, rec.commit, self.policy.seed, "")
        tick("trial_s")
        _fill(rec, outcome)
        if outcome.status != "ok":
            rec.status, rec.reason = outcome.status, outcome.error
            return self._finish(rec, timings)

        # 5. the decision (with a confirmation run under another seed if the policy asks)
        if short := decision.short_of_steps(self.policy.train.max_steps, rec.num_steps):
            rec.status, rec.reason = "discard", short
            return self._finish(rec, timings)
        v = decision.judge(outcome.val_bpb, best.val_bpb, thresh, self.policy.decision)
        if v.action == "confirm":
            seed = decision.confirm_seed(self.policy.seed, n)
            self.events.phase("confirming", f"seed {seed}")
            co = self._trial(n, rec.commit, seed, "confirm")
            rec.confirm = {"seed": seed, "status": co.status, "val_bpb": co.val_bpb, "error": co.error,
                           "training_seconds": _num(co.timings.get("train_host_s")),
                           "claimed_training_seconds": _num(co.train_summary.get("training_seconds")),
                           "trial_timings": co.timings}
            v = decision.judge_confirmation(outcome.val_bpb, co.status, co.val_bpb, best.val_bpb, thresh)
            tick("confirm_s")
        rec.status, rec.reason = v.action, v.reason
        return self._finish(rec, timings)

    def _finish(self, rec: TrialRecord, timings: dict) -> TrialRecord:
        rec.timings = timings
        rec.finished_at = time.time()
        return rec

    def _fresh_dir(self, path: Path) -> Path:
        """A trial's directory, emptied first: a dead run may have left a half-finished attempt there."""
        if path.exists():
            for p in path.rglob("*"):
                if not p.is_symlink():
                    p.chmod(0o755 if p.is_dir() else 0o644)
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def _trial(self, n: int, commit: str, seed: int, sub: str):
        """Run one trial of `commit` with `seed` in runs/<tag>/trials/<n>[/sub]; returns the TrialOutcome."""
        from .trial import TrialSpec
        work = self.dir / "trials" / str(n)
        if sub:
            work = self._fresh_dir(work / sub)
        work.mkdir(parents=True, exist_ok=True)
        candidate = self.ws.export(commit, self.allowed, work / "candidate")
        self.events.phase("starting", f"seed {seed}")
        spec = TrialSpec(run_tag=self.tag, trial_id=f"{n}-{sub}" if sub else str(n), candidate_dir=candidate,
                         data_dir=self.data, policy=self.policy, image=self.image, seed=seed, work_dir=work,
                         standby=self.standby)
        with _LogTee(work / "train.log", self.events.line) as on_line:
            return self.trial_fn(spec, on_line, on_phase=lambda name: self.events.phase(name, f"seed {seed}"))

    # =========================================================================== summaries
    def summary(self, records: list[TrialRecord]) -> RunSummary:
        return summarize(self.tag, self.dir, records, self.start)


def summarize(tag: str, run_dir: Path, records: list[TrialRecord], start: str = "") -> RunSummary:
    best = best_of(records)
    base = baseline_of(records)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return RunSummary(tag=tag, run_dir=run_dir, start_commit=start, best_commit=best.commit if best else "",
                      best_bpb=best.val_bpb if best else None, baseline_bpb=base.val_bpb if base else None,
                      counts=counts, trials=len(records))


def best_of(records: list[TrialRecord]) -> TrialRecord | None:
    kept = [r for r in records if r.status == "keep"]
    return kept[-1] if kept else None


def baseline_of(records: list[TrialRecord]) -> TrialRecord | None:
    done = [r for r in records if r.kind == "baseline" and r.status == "keep"]
    return done[-1] if done else None


def _next_id(records: list[TrialRecord]) -> int:
    return max((r.trial for r in records), default=-1) + 1


def resolve_data_dir(path) -> Path:
    if path is None:
        raise UserError("no data directory given; pass --data DIR (made by `autoresearch prepare synthetic "
                        "--out DIR`)")
    p = Path(path).expanduser().resolve()
    manifest_sha256(p)  # raises DataError with the fix when it was never prepared
    return p


def _default_image(policy: Policy) -> str:
    """The tag `autoresearch build` made for the policy's flavour; a one-line error when it was never built."""
    from .images import find
    img = find(policy.flavour)
    if img is None:
        raise UserError(f"no trial image for flavour {policy.flavour} in the Docker engine; run "
                        f"`autoresearch build --flavour {policy.flavour}` (or set image: in the policy)")
    return img.tag


class _LogTee:
    """on_line that also keeps the train container's lines in the trial directory (up to MAX_LOG_BYTES), with
    control and format characters escaped (runner.text.printable: a person cats it).

    Called from the trial's log thread; a line arriving after the trial returned is only forwarded."""

    def __init__(self, path: Path, forward: Callable[[str], None]):
        self.path, self.forward, self.written = path, forward, 0

    def __enter__(self) -> Callable[[str], None]:
        self.f = open(self.path, "w", encoding="utf-8", errors="replace")
        return self

    def __call__(self, line: str) -> None:
        if self.written < MAX_LOG_BYTES and not self.f.closed:
            try:
                text = printable(line.rstrip("\n")) + "\n"
                self.f.write(text)
                self.written += len(text)
            except ValueError:  # closed between the check and the write
                pass
        self.forward(line)

    def __exit__(self, *exc) -> None:
        self.f.close()


class _Stopwatch:
    """tick(name): seconds since the previous tick, added to timings[name]."""

    def __init__(self, timings: dict):
        self.timings = timings
        self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.last, 3)
        self.last = now


class _RunLock:
    """One runner per run tag: an flock on runs/<tag>/.lock (released by the kernel if the runner dies)."""

    def __init__(self, path: Path, tag: str):
        self.path, self.tag = path, tag

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UserError(f"run {self.tag} is in use by another autoresearch process; wait for it or stop it "
                            "first") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
