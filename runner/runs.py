"""A run: what it is started with (RunConfig), what it reports (Events), and its directory runs/<tag>/ with
run.json, the lock, trials/<n>/ and each trial's train.log. TRUSTED CODE.

    run_dir_of(repo, tag)          runs/<tag> (the tag checked); existing_run_dir: the same, or a UserError
    RunLock(path, tag)             one runner per run tag (an flock the kernel releases if the runner dies)
    new_meta(...) / resumed_meta   run.json: what a run was started with, fixed for its whole life (policy and
                                   its sha256, data dir and manifest sha256, start commit, proposer, image);
                                   --resume refuses changed data, and a policy change that
                                   runner.policy_change does not accept (others: policy_changes)
    fresh_dir(path)                a trial's directory, emptied first
    LogTee(path, forward)          a trial's train.log, escaped for people, capped
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer.shards import atomic_write_json, manifest_sha256

from .errors import InfraError, UserError
from .ledger import RunSummary, TrialRecord
from .policy import Policy
from .text import printable
from .workspace import Workspace, check_tag

MAX_LOG_BYTES = 4 << 20        # train.log kept per trial
LOCK_RETRY_S = 1.0             # RunLock tries a held lock again this long (another run may be testing it: cleanup)


class Events:
    """What the loop reports as it goes; the live view (runner.live) overrides these. Defaults do nothing.

    With several trials in flight these are called from their threads. What concerns one trial comes through
    trial_phase / trial_line with its id; by default they fall back to phase / line (one trial at a time).

    run_started's info: run.json's fields, `resume`, `trials_done`, `summary` (the RunSummary of the ledger as the
    run opens: on --resume the best and the counts so far) and `threshold` (the baseline's keep threshold, None
    before the baseline). A run's phases (starting, training, evaluating) have the detail "seed N", and for the
    baseline's runs "seed N (baseline repeat k of n)"; the trial_phase names "confirming", "re-applied" and
    "rechecking" open another run of the same trial: a view keeps them shown beside the phases of that run.
    proposer_note is what the proposer reports while it makes trial_id's proposal (a retry, a backoff); "" when it
    is done; the text is the proposer's (an LLM's error may be in it): show it through runner.text.one_line."""

    def run_started(self, info: dict) -> None: ...
    def trial_started(self, trial_id: int, kind: str) -> None: ...
    def phase(self, name: str, detail: str = "") -> None: ...
    def line(self, text: str) -> None: ...
    def trial_finished(self, rec: TrialRecord, summary: "RunSummary") -> None: ...
    def trial_described(self, trial_id: int, description: str) -> None: ...

    def trial_phase(self, trial_id: int, name: str, detail: str = "") -> None:
        self.phase(name, detail)

    def trial_line(self, trial_id: int, text: str) -> None:
        self.line(text)

    def proposer_note(self, trial_id: int, text: str) -> None:
        if text:
            self.phase("proposing", f"trial {trial_id}: {text}")


@dataclass
class RunConfig:
    repo: Path
    tag: str
    data_dir: Path | None = None       # None on --resume: the run's own
    policy: Policy | None = None       # None on --resume: the run's own
    proposer: str | None = None        # mutate | openai; None: the policy's (or, on --resume, the run's)
    max_trials: int | None = None      # candidate trials in the whole run (baseline excluded); None: no limit
    hours: float | None = None         # stop starting trials after this long (from this invocation)
    max_tokens: int | None = None      # stop starting trials once the run's LLM tokens reach this; None: the run's
    max_cost: float | None = None      # the same in dollars at policy proposer.prices; None: the run's (run.json)
    resume: bool = False
    image: str | None = None           # trial image tag; None: policy.image, else the tag `build` makes
    commit_changes: bool = False       # a new run commits uncommitted edits of train.py / program.md first


def run_dir_of(repo: Path, tag: str) -> Path:
    return Path(repo) / "runs" / check_tag(tag)


def existing_run_dir(repo: Path, tag: str) -> Path:
    """run_dir_of a run that was started (it has run.json); a UserError naming the tag otherwise."""
    run_dir = run_dir_of(repo, tag)
    if not (run_dir / "run.json").exists():
        raise UserError(f"no run {tag} in {run_dir.parent}; `autoresearch status` lists the runs")
    return run_dir


def resolve_data_dir(path) -> Path:
    if path is None:
        raise UserError("no data directory given; pass --data DIR (made by `autoresearch prepare synthetic "
                        "--out DIR`)")
    p = Path(path).expanduser().resolve()
    manifest_sha256(p)  # raises DataError with the fix when it was never prepared
    return p


def new_meta(run_dir: Path, *, tag: str, repo: Path, start: str, policy: Policy, data: Path, proposer: str,
             max_trials: int | None, image: str, max_tokens: int | None = None,
             max_cost: float | None = None) -> dict:
    """run.json of a new run, written atomically."""
    meta = {"tag": tag, "repo": str(repo), "branch": f"autoresearch/{tag}", "start_commit": start,
            "created_at": time.time(), "policy": policy.model_dump(), "policy_sha256": policy.sha256(),
            "data_dir": str(data), "data_manifest_sha256": manifest_sha256(data), "proposer": proposer,
            "max_trials": max_trials, "image": image, "max_tokens": max_tokens, "max_cost": max_cost}
    atomic_write_json(run_dir / "run.json", meta)
    return meta


def resumed_meta(run_dir: Path, tag: str, *, policy: Policy | None, data_dir: Path | None,
                 overrides: dict, check: Callable[[Policy, Path, str], None] | None = None) -> dict:
    """run.json of a run to resume: the same policy, or one whose changes runner.policy_change accepts (recorded in
    `policy_changes`; a UserError naming the field otherwise), the same data (by manifest hash, possibly moved:
    data_dir), and the given overrides (proposer, max_trials, image: None keeps the run's). `check(policy, data,
    proposer)` runs before run.json is written (runner.doctor.before_run): a failure changes nothing."""
    from . import policy_change
    from .ledger import Ledger, best_of
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise UserError(f"no run {tag} to resume in {run_dir}; start it without --resume")
    meta = json.loads(meta_path.read_text())
    stored = Policy.model_validate(meta["policy"])
    given = policy if policy is not None else stored
    records = Ledger(run_dir).records()
    changed = policy_change.changes(stored, given, scored=best_of(records) is not None, tag=tag)
    data = resolve_data_dir(data_dir or meta["data_dir"])
    if manifest_sha256(data) != meta["data_manifest_sha256"]:
        raise UserError(f"the data in {data} changed since run {tag} started (manifest hash "
                        f"{manifest_sha256(data)[:12]} vs {meta['data_manifest_sha256'][:12]}); "
                        "resume with the original --data or start a new tag")
    meta.update({k: v for k, v in overrides.items() if v is not None})
    meta["data_dir"] = str(data)
    if check is not None:
        check(given, data, meta["proposer"])
    if changed:
        policy_change.record(meta, given, changed, len(records))
    atomic_write_json(meta_path, meta)
    return meta


def start_commit(ws: Workspace, policy: Policy, tag: str, commit_changes: bool) -> str:
    """HEAD for a new run, refused while a file the run reads has uncommitted changes (the run would silently not
    use them), or with commit_changes those changes committed first."""
    head = ws.head_commit()
    dirty = ws.uncommitted(head, [*policy.patch.allowed_files, "program.md"])
    if dirty and commit_changes:
        return ws.commit_worktree(dirty, f"autoresearch: {', '.join(dirty)} as run {tag} starts")
    if dirty:
        raise UserError(f"{', '.join(dirty)} in {ws.root} has uncommitted changes, which the run would not use (it "
                        f"starts from commit {head[:12]}); commit them, or pass --commit-changes")
    return head


def reconcile(ws: Workspace, tag: str, start: str, head: str | None, best: TrialRecord | None) -> str | None:
    """Put the branch where the ledger says the best is (a kill between ledger and update-ref); the commit it was
    moved to, or None when it was there already."""
    want = best.commit if best else start
    if head == want:
        return None
    ours = set(ws.trial_refs(tag).values()) | set(ws.trial_refs(tag, "rebased").values()) | {start}
    if head is not None and head not in ours:
        raise UserError(f"branch autoresearch/{tag} points at {head[:12]}, which this run did not make "
                        f"(the ledger's best is {want[:12]}); move it back (git branch -f) or start a new tag")
    ws.set_branch(tag, want)
    return want


def program(ws: Workspace, commit: str) -> str:
    """program.md of the commit ("" when it has none)."""
    try:
        return ws.read_file(commit, "program.md")
    except InfraError:
        return ""


def fresh_dir(path: Path) -> Path:
    """A trial's directory, emptied first: a dead run may have left a half-finished attempt there."""
    if path.exists():
        for p in path.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class LogTee:
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


class RunLock:
    """One runner per run tag: an flock on runs/<tag>/.lock, held for as long as the runner lives (the kernel
    releases it when the runner dies). Other runs tell a dead runner's leftovers by it (runner.sandbox.cleanup),
    taking it shared for an instant: a lock found held is tried again for LOCK_RETRY_S. `held`: the locks this
    process holds (absolute paths). A run directory that holds nothing but the lock when it is released (the run
    failed or was interrupted before run.json) is removed, and so is any other that holds nothing but a lock nobody
    holds (its runner was killed before run.json) when a run takes its own."""

    held: set[str] = set()

    def __init__(self, path: Path, tag: str):
        self.path, self.tag = path, tag

    def __enter__(self):
        give_up = time.monotonic() + LOCK_RETRY_S
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.path.samestat(os.fstat(self.fd), os.stat(self.path))
            except (BlockingIOError, FileNotFoundError) as e:
                os.close(self.fd)
                if time.monotonic() < give_up:
                    time.sleep(LOCK_RETRY_S / 20)
                    continue
                if isinstance(e, FileNotFoundError):
                    raise
                raise UserError(f"run {self.tag} is in use by another autoresearch process; wait for it or stop it "
                                "first") from None
            if same:
                break
            os.close(self.fd)                  # its last runner removed it as we opened it: lock the new one
        self.key = str(self.path.parent.resolve() / self.path.name)
        RunLock.held.add(self.key)
        for other in self.path.parent.parent.iterdir():
            if other != self.path.parent:
                _remove_if_only_a_free_lock(other / self.path.name)
        return self

    def __exit__(self, *exc):
        RunLock.held.discard(self.key)
        try:
            if {p.name for p in self.path.parent.iterdir()} == {self.path.name}:   # a run that never started
                self.path.unlink()
                self.path.parent.rmdir()
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _remove_if_only_a_free_lock(lock: Path) -> None:
    """Remove a run directory that holds nothing but a lock nobody holds (a runner killed before run.json); a runner
    that opened the lock meanwhile finds it unlinked and makes its own (RunLock.__enter__)."""
    try:
        if {p.name for p in lock.parent.iterdir()} != {lock.name}:
            return
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if {p.name for p in lock.parent.iterdir()} == {lock.name}:
            lock.unlink()
            lock.parent.rmdir()
    except OSError:
        pass
    finally:
        os.close(fd)
