"""The ledger: runs/<tag>/trials.jsonl, one JSON line per finished trial, plus results.tsv. TRUSTED CODE.

Append-only: a line is written with one write() and flushed and fsynced before the loop moves the branch, so a
trial is either fully in the ledger or not at all (a trial with no line is re-run on --resume). A torn last line
left by a killed writer is cut off when the ledger is opened for appending; a bad line anywhere else is an error.

results.tsv is regenerated from the ledger after every append (autoresearch's columns: commit, val_bpb, memory_gb,
status, description) so the two can never disagree. Its description column is a person's view: one line, control
and format characters escaped (runner.text.one_line); the ledger (JSON, ASCII-escaped) keeps the exact text.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from trainer.shards import atomic_write_bytes

from .errors import UserError
from .text import one_line

SCHEMA = "autoresearch.trial/1"
STATUSES = ("keep", "discard", "crash", "timeout", "over_budget", "oom", "export_failed", "violation", "infra",
            "rejected", "stale")
FAILED = ("crash", "timeout", "over_budget", "oom", "export_failed", "violation", "infra")
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
LOG_TAIL_CHARS = 4000                   # of a failed trial's train log, kept in its record


@dataclass
class TrialRecord:
    """One ledger line: everything needed to audit and reproduce a trial."""
    trial: int
    kind: str                               # baseline | candidate
    status: str                             # one of STATUSES
    description: str
    run: str = ""
    parent: str | None = None               # the best commit the candidate was built on (None for a baseline)
    proposed_on: str | None = None          # the best when it was proposed (the parent, unless the best moved before
                                            # it started and its change was re-applied onto the new best)
    best_at_decision: str | None = None     # the best commit when it was decided
    slot: str = ""                          # the executor's slot it trained in
    commit: str | None = None               # the candidate commit (the start commit for a baseline; None if rejected)
    proposer: str = ""
    seed: int | None = None
    outcome: str | None = None              # the trial's own status: ok | crash | ... (None when never run)
    reason: str = ""                        # one line: why kept/discarded/rejected, or the trial's error
    val_bpb: float | None = None
    best_bpb_before: float | None = None    # the best BPB this trial was compared against
    threshold: float | None = None          # the gain it needed (max(min_delta, noise_sigmas * noise_std))
    training_seconds: float | None = None   # the host's clock: hand-over of train.py -> the train container's exit
    claimed_training_seconds: float | None = None   # train.py's own `training_seconds` line: informational only
    peak_memory_mb: float | None = None
    num_steps: int | None = None
    train_tokens: int | None = None
    train_summary: dict = field(default_factory=dict)
    image: str | None = None
    image_digest: str | None = None
    policy_sha256: str = ""
    data_manifest_sha256: str = ""
    diff_lines: int = 0
    llm_usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)         # seconds per loop phase (propose, check, git, trial, ...)
    trial_timings: dict = field(default_factory=dict)   # the trial's own timings (engine start/finish per container)
    repeats: list = field(default_factory=list)         # baseline: [{seed, status, val_bpb}] of every repeat
    noise_std: float | None = None
    confirm: dict | None = None                         # confirmation re-run: {seed, status, val_bpb, ...}
    rebased: dict | None = None                         # re-applied onto a newer best and re-run: {commit, ...}
    log_tail: str = ""                                  # the train log's tail when the trial failed
    # how much compute it got, measured outside the candidate (runner.sandbox.calibration, runner.sandbox.cgroup)
    calibration_s: float | None = None      # the trusted launcher's fixed kernel in its train container (lower: faster)
    cpu_share: float | None = None          # train container CPU s / (host train s x quota cores); 1.0: all of it
    throttled_s: float | None = None        # cgroup throttled time during training
    recheck: str = ""                       # why the best was re-run before deciding, and what that gave
    probe_scope: str | None = None          # every_batch | one_batch: how its score was probed (runner.decision)
    started_at: float = 0.0                             # unix time
    finished_at: float = 0.0
    schema: str = SCHEMA

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def number(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fill(rec: TrialRecord, o) -> None:
    """Copy a TrialOutcome's measurements into the record. Its training seconds are the host's clock (hand-over
    of train.py -> the train container's exit); what train.py printed about itself is kept as its claim only."""
    s = dict(o.train_summary or {})
    rec.outcome = o.status
    rec.val_bpb = o.val_bpb if o.status == "ok" else None
    rec.train_summary = s
    rec.training_seconds = number((o.timings or {}).get("train_host_s"))
    rec.claimed_training_seconds = number(s.get("training_seconds"))
    rec.peak_memory_mb = number(s.get("peak_memory_mb"))
    steps = number(s.get("num_steps"))
    rec.num_steps = int(steps) if steps is not None else None
    tps, claimed = number(s.get("tokens_per_second")), rec.claimed_training_seconds
    rec.train_tokens = round(tps * claimed) if tps is not None and claimed else None   # claims: informational
    rec.image_digest = o.image_digest
    rec.slot = o.slot
    rec.calibration_s, rec.cpu_share, rec.throttled_s = o.calibration_s, o.cpu_share, o.throttled_s
    rec.probe_scope = getattr(o, "probe_scope", None)
    rec.trial_timings = dict(o.timings or {})
    if o.attempts > 1:                      # an executor re-ran it after an infra failure (a node lost)
        rec.trial_timings["attempts"] = o.attempts
    if o.status != "ok":
        rec.log_tail = (o.log_tail or "")[-LOG_TAIL_CHARS:]


def _finite_or_none(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


class Ledger:
    """runs/<tag>/trials.jsonl and results.tsv."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.path = self.dir / "trials.jsonl"
        self.tsv = self.dir / "results.tsv"

    def exists(self) -> bool:
        return self.path.is_file()

    def records(self) -> list[TrialRecord]:
        """Every complete line, in order. A torn last line (no newline) is not a record."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is torn or empty
        out = []
        for n, line in enumerate(complete, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or row.get("schema") != SCHEMA:
                    raise ValueError("not a trial record")
                out.append(TrialRecord.from_dict(row))
            except (ValueError, TypeError) as e:
                raise UserError(f"{self.path} line {n} is not a trial record ({e}); the ledger was edited or "
                                "corrupted: restore it or start a new --tag") from None
        return out

    def repair(self) -> int:
        """Cut a torn last line (left by a killed writer). Returns the number of bytes removed."""
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0 or (f.seek(-1, os.SEEK_END) >= 0 and f.read(1) == b"\n"):
                return 0
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep

    def append(self, record: TrialRecord) -> None:
        """Write one line with a single write(), then flush and fsync; then refresh results.tsv."""
        if record.status not in STATUSES:
            raise ValueError(f"status {record.status!r} not in {STATUSES}")
        row = asdict(record)
        for k in ("val_bpb", "best_bpb_before", "threshold", "noise_std"):
            row[k] = _finite_or_none(row[k])
        # ensure_ascii: a candidate's control and bidi characters are written as \uXXXX, never as raw bytes
        line = (json.dumps(row, sort_keys=True, allow_nan=False, default=str, ensure_ascii=True) + "\n").encode()
        new = not self.path.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.repair()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.dir)
        self.write_tsv()

    def write_tsv(self) -> None:
        atomic_write_bytes(self.tsv, results_tsv(self.records()).encode())


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
    """The best so far: the last kept trial (a keep always beats the best before it)."""
    kept = [r for r in records if r.status == "keep"]
    return kept[-1] if kept else None


def baseline_of(records: list[TrialRecord]) -> TrialRecord | None:
    done = [r for r in records if r.kind == "baseline" and r.status == "keep"]
    return done[-1] if done else None


def next_id(records: list[TrialRecord]) -> int:
    """The next trial id: one past the highest in the ledger (ids are never reused)."""
    return max((r.trial for r in records), default=-1) + 1


def results_tsv(records: list[TrialRecord]) -> str:
    """autoresearch's results.tsv: commit, val_bpb, memory_gb, status, description (one row per trial)."""
    out = [TSV_HEADER]
    for r in records:
        commit = (r.commit or "-")[:7]
        bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "0.000000"
        mem = f"{(r.peak_memory_mb or 0) / 1024:.1f}"
        desc = one_line(" ".join(r.description.split()))
        out.append(f"{commit}\t{bpb}\t{mem}\t{r.status}\t{desc}\n")
    return "".join(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
