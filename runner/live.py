"""The live view of a run: every trial in flight with its phase, step/loss/remaining time, best BPB, counts.
TRUSTED CODE.

`LiveView` (rich, for a terminal) and `PlainView` (lines, for logs, pipes and CI) implement the loop's `Events`.

LiveView redraws twice a second from its own state (rich's get_renderable), so its clocks move while nothing
happens: per trial in flight, its kind, time since it started and description; its phase (with the run of the
trial it belongs to: a baseline repeat, a confirmation, a re-applied run, a re-run of the best) and the time spent
in that phase; the last progress line; the run's own phase (proposing, resume) with its time; what the proposer
last reported (a retry, a backoff: shown while it waits); the best, the baseline and the bar a keep must pass ("a
keep needs val_bpb < best - threshold"); the counts. On --resume the best, the bar and the counts are shown from
the start. Each finished trial is printed above the panel with its claimed steps and tokens/s and the compute it
got (calibration, CPU share).

PlainView prints one line per event, each about a trial prefixed "trial N" so that lines of several slots stay
readable: a trial started, its description, each change of phase, one training progress line per trial every
TRAINING_LINE_EVERY_S (the first at once), each retry or backoff of the proposer, each result with the best, the
bar and the counts; on --resume, the best, the bar and the counts before anything else.

Progress lines from the train container (`step=N loss=X ... remaining_s=S`, trainer.contract) are untrusted text:
only those numbers are picked out, and nothing from them is ever used as a score. Every string that comes from a
candidate or an LLM (progress values, descriptions, reasons, the proposer's notes, which can quote a reply) is
shown through runner.text.one_line (control and format characters escaped) and, in rich, as a Text object, never
as markup.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from trainer.contract import parse_step_line as parse_progress   # the progress line's one parser

from .ledger import RunSummary, TrialRecord
from .runs import Events
from .text import one_line

RUN_PHASES = ("proposing", "resume")      # phases of the run, not of one trial
ROUNDS = ("confirming", "re-applied", "rechecking")   # start another run of the same trial: shown until it ends
TRAINING_LINE_EVERY_S = 60.0              # PlainView: one training progress line per trial this often
DETAIL_CHARS = 80                         # of a phase's detail
DESCRIPTION_CHARS = 80                    # of a candidate's description on its trial row
NOTE_CHARS = 160                          # of a proposer's note
LINE_CHARS = 360                          # of a finished trial's line


def _fmt_bpb(x) -> str:
    return f"{x:.6f}" if isinstance(x, (int, float)) else "-"


def _dur(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def _counts(summary: RunSummary | None) -> str:
    c = summary.counts if summary else {}
    failures = {k: v for k, v in sorted(c.items()) if k not in ("keep", "discard", "rejected", "stale") and v}
    failed = f"failed {sum(failures.values())}"
    if failures and set(failures) != {"crash"}:      # infra and over_budget are not the candidate's crash
        failed += " (" + ", ".join(f"{k} {v}" for k, v in failures.items()) + ")"
    stale = f"  stale {c['stale']}" if c.get("stale") else ""
    return f"keep {c.get('keep', 0)}  discard {c.get('discard', 0)}  {failed}  rejected {c.get('rejected', 0)}{stale}"


def _bar(summary: RunSummary | None, thresh: float | None) -> str:
    """What a keep must beat: '' before there is a best and a threshold."""
    best = summary.best_bpb if summary else None
    if not isinstance(best, (int, float)) or not isinstance(thresh, (int, float)):
        return ""
    return f"a keep needs val_bpb < {best - thresh:.6f} (best - {thresh:.6f})"


def _standing(summary: RunSummary | None, thresh: float | None) -> str:
    """The best, the baseline and the bar."""
    best = summary.best_bpb if summary else None
    base = summary.baseline_bpb if summary else None
    bar = _bar(summary, thresh)
    return f"{_fmt_bpb(best)}  (baseline {_fmt_bpb(base)})" + (f"  {bar}" if bar else "")


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _measures(rec: TrialRecord) -> str:
    """What the trial did and what compute it got: steps and tokens/s (the candidate's claims, labelled so), the
    launcher's calibration and the CPU share (measured outside it); '' when none is known."""
    steps, tokens, secs = _num(rec.num_steps), _num(rec.train_tokens), _num(rec.claimed_training_seconds)
    claimed = ([f"{steps:.0f} steps"] if steps is not None else []) + \
              ([f"{tokens / secs:,.0f} tok/s"] if tokens is not None and secs else [])
    calib, share = _num(getattr(rec, "calibration_s", None)), _num(getattr(rec, "cpu_share", None))
    measured = ([f"calibration {calib:.3f} s"] if calib is not None else []) + \
               ([f"cpu {100 * share:.0f}%"] if share is not None else [])
    parts = ([", ".join(claimed) + " claimed"] if claimed else []) + ([", ".join(measured)] if measured else [])
    return f"[{'; '.join(parts)}]" if parts else ""


def _line(rec: TrialRecord) -> str:
    delta = ""
    if rec.val_bpb is not None and rec.best_bpb_before is not None:
        delta = f" ({rec.val_bpb - rec.best_bpb_before:+.6f})"
    why = f" - {one_line(rec.reason)}" if rec.status not in ("keep", "discard") and rec.reason else ""
    measures = f"  {m}" if (m := _measures(rec)) else ""
    return (f"trial {rec.trial:>3} {rec.status:<13} {_fmt_bpb(rec.val_bpb)}{delta}{measures}  "
            f"{one_line(rec.description)}{why}")[:LINE_CHARS]


def _progress(p: dict, sep: str = "  ") -> str:
    p = {k: one_line(v) for k, v in p.items()}
    claimed = [f"{p['tok_s']} tok/s claimed"] if p.get("tok_s") else []
    return sep.join([f"step {p.get('step', '?')}", f"loss {p.get('loss', '?')}",
                     f"remaining {p.get('remaining_s', '?')} s", *claimed])


class _Standing(Events):
    """The best, the threshold and the counts as the run goes: from run_started (on --resume, the ledger's) and
    every finished trial."""

    summary: RunSummary | None = None
    thresh: float | None = None

    def _opened(self, info: dict) -> None:
        self.summary = info.get("summary") or self.summary
        self.thresh = info.get("threshold", self.thresh)

    def _finished(self, rec: TrialRecord, summary: RunSummary) -> None:
        self.summary = summary
        if rec.threshold is not None:
            self.thresh = rec.threshold


class LiveView(_Standing):
    """A rich Live panel, redrawn twice a second and on every event; finished trials are printed above it. One
    row group per trial in flight (several with several slots). `clock`: monotonic seconds (tests)."""

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic):
        self.console = console or Console()
        self.clock = clock
        self.tag = ""
        self.flight: dict[int, dict] = {}   # trial id -> {kind, description, round, phase, detail, progress, t0, ...}
        self.run_phase, self.run_phase_t0 = "", 0.0          # what is not one trial's: proposing, resume
        self.note: tuple[int, str, float] | None = None      # the proposer's last note: (trial id, text, when)
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2, transient=True)

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        self.live.stop()

    def _render(self):
        now = self.clock()
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        t.add_row("run", Text(one_line(self.tag or "-")))
        for n, f in sorted(dict(self.flight).items()):
            desc = one_line(f["description"], DESCRIPTION_CHARS)
            t.add_row("trial", Text(f"{n} ({f['kind']})  {_dur(now - f['t0'])}" + (f"  {desc}" if desc else "")))
            phase = one_line(f"{f['phase']} {f['detail']}".strip(), DETAIL_CHARS + 20)
            rnd = one_line(f["round"], DETAIL_CHARS + 20)
            if phase or rnd:
                shown = f"{rnd}: {phase}" if rnd and phase != rnd else phase or rnd
                t.add_row("phase", Text(f"{shown} for {_dur(now - f['phase_t0'])}"))
            if f["progress"]:
                t.add_row("training", Text(_progress(f["progress"])))
        if self.run_phase or not self.flight:
            run_phase = one_line(self.run_phase or "-")
            t.add_row("phase", Text(f"{run_phase} for {_dur(now - self.run_phase_t0)}" if self.run_phase
                                    else run_phase))
        if note := self.note:
            n, text, when = note
            t.add_row("proposer", Text(f"trial {n}: {one_line(text, NOTE_CHARS)}  ({_dur(now - when)} ago)"))
        t.add_row("best bpb", Text(_standing(self.summary, self.thresh)))
        t.add_row("trials", Text(_counts(self.summary)))
        return Group(Text("autoresearch", style="bold cyan"), t)

    def _refresh(self):
        self.live.refresh()

    def run_started(self, info: dict) -> None:
        self.tag = info.get("tag", "")
        self._opened(info)
        self.console.print(Text(one_line(f"run {self.tag}: branch {info.get('branch')}, proposer "
                                         f"{info.get('proposer')}, image {info.get('image') or '(default)'}"
                                         + (" (resumed)" if info.get("resume") else ""))))
        self._refresh()

    def trial_started(self, trial_id: int, kind: str) -> None:
        now = self.clock()
        self.flight[trial_id] = {"kind": kind, "description": "", "round": "", "phase": "", "detail": "",
                                 "progress": {}, "t0": now, "phase_t0": now}
        self.run_phase = ""
        self._refresh()

    def trial_described(self, trial_id: int, description: str) -> None:
        if f := self.flight.get(trial_id):
            f["description"] = description
            self._refresh()

    def phase(self, name: str, detail: str = "") -> None:
        if len(self.flight) == 1 and name not in RUN_PHASES:        # one trial at a time: it is that trial's
            return self.trial_phase(next(iter(self.flight)), name, detail)
        run_phase = f"{name} {detail[:DETAIL_CHARS]}".strip()
        if run_phase != self.run_phase:
            self.run_phase, self.run_phase_t0 = run_phase, self.clock()
        self._refresh()

    def line(self, text: str) -> None:
        if len(self.flight) == 1:
            self.trial_line(next(iter(self.flight)), text)

    def trial_phase(self, trial_id: int, name: str, detail: str = "") -> None:
        if f := self.flight.get(trial_id):
            detail = detail[:DETAIL_CHARS]
            if (name, detail) != (f["phase"], f["detail"]):
                f["phase"], f["detail"], f["phase_t0"] = name, detail, self.clock()
                if name in ROUNDS:
                    f["round"] = f"{name} {detail}".strip()
                if name in ("starting", *ROUNDS):      # a new run of the trial: its progress is still to come
                    f["progress"] = {}
            self._refresh()

    def trial_line(self, trial_id: int, text: str) -> None:
        if (p := parse_progress(text)) and (f := self.flight.get(trial_id)):
            f["progress"] = p
            self._refresh()

    def proposer_note(self, trial_id: int, text: str) -> None:
        if text:
            self.note = (trial_id, text, self.clock())
        elif self.note and self.note[0] == trial_id:
            self.note = None
        self._refresh()

    def trial_finished(self, rec: TrialRecord, summary: RunSummary) -> None:
        self._finished(rec, summary)
        self.flight.pop(rec.trial, None)
        self.console.print(Text(_line(rec)), highlight=False)
        self._refresh()


class PlainView(_Standing):
    """Lines to a stream (for pipes, CI logs and tests); see the module docstring. `clock`: monotonic seconds."""

    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stdout
        self.clock = clock
        self.lock = threading.RLock()                 # trials of several slots report from their threads
        self.said: dict[int, str] = {}                # trial id -> its last phase line
        self.described: dict[int, str] = {}           # trial id -> its description
        self.trained: dict[int, float] = {}           # trial id -> when its last training line was printed

    def _say(self, text: str) -> None:
        with self.lock:
            print(one_line(text), file=self.stream, flush=True)

    def run_started(self, info: dict) -> None:
        self._opened(info)
        self._say(f"run {info.get('tag')}: branch {info.get('branch')}, proposer {info.get('proposer')}"
                  + (f", resumed after {info.get('trials_done')} trials" if info.get("resume") else ""))
        if self.summary is not None and self.summary.trials:
            self._say(f"best {_standing(self.summary, self.thresh)}  {_counts(self.summary)}")

    def trial_started(self, trial_id: int, kind: str) -> None:
        self._say(f"trial {trial_id} ({kind}) started")

    def trial_described(self, trial_id: int, description: str) -> None:
        self.described[trial_id] = description
        self._say(f"trial {trial_id}: {one_line(description)}")

    def phase(self, name: str, detail: str = "") -> None:
        self._say(f"{name} {one_line(detail)}".strip())

    def trial_phase(self, trial_id: int, name: str, detail: str = "") -> None:
        if detail and detail == self.described.get(trial_id):       # said once already
            detail = ""
        text = f"trial {trial_id} {name} {one_line(detail)}".strip()
        with self.lock:
            if self.said.get(trial_id) != text:
                self.said[trial_id] = text
                if name in ("starting", *ROUNDS):
                    self.trained.pop(trial_id, None)      # a new run: its first progress line is printed at once
                self._say(text)

    def trial_line(self, trial_id: int, text: str) -> None:
        if not (p := parse_progress(text)):
            return
        with self.lock:
            now, last = self.clock(), self.trained.get(trial_id)
            if last is None or now - last >= TRAINING_LINE_EVERY_S:
                self.trained[trial_id] = now
                self._say(f"trial {trial_id} {_progress(p, ' ')}")

    def proposer_note(self, trial_id: int, text: str) -> None:
        if text:
            self._say(f"trial {trial_id} proposing: {one_line(text, NOTE_CHARS)}")

    def trial_finished(self, rec: TrialRecord, summary: RunSummary) -> None:
        self._finished(rec, summary)
        for d in (self.said, self.described, self.trained):
            d.pop(rec.trial, None)
        self._say(_line(rec) + f"  | best {_standing(summary, self.thresh)}  {_counts(summary)}")
