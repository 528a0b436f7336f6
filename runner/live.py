"""The live view of a run: current trial, phase, last step/loss/remaining time, best BPB, counts. TRUSTED CODE.

`LiveView` (rich, for a terminal) and `PlainView` (one line per event, for logs and pipes) implement the loop's
`Events`. Progress lines from the train container (`step=N loss=X ... remaining_s=S`, trainer.contract) are
untrusted text: only those numbers are picked out, and nothing from them is ever used as a score.

Every string that comes from a candidate or an LLM (progress values, descriptions, reasons) is shown through
runner.text.one_line (control and format characters escaped) and, in rich, as a Text object, never as markup.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from trainer.contract import parse_step_line as parse_progress   # the progress line's one parser

from .ledger import TrialRecord
from .ledger import RunSummary
from .runs import Events
from .text import one_line


RUN_PHASES = ("proposing", "resume")      # phases of the run, not of one trial


def _fmt_bpb(x) -> str:
    return f"{x:.6f}" if isinstance(x, (int, float)) else "-"


def _counts(summary: RunSummary | None) -> str:
    c = summary.counts if summary else {}
    failures = {k: v for k, v in sorted(c.items()) if k not in ("keep", "discard", "rejected", "stale") and v}
    failed = f"failed {sum(failures.values())}"
    if failures and set(failures) != {"crash"}:      # infra and over_budget are not the candidate's crash
        failed += " (" + ", ".join(f"{k} {v}" for k, v in failures.items()) + ")"
    stale = f"  stale {c['stale']}" if c.get("stale") else ""
    return f"keep {c.get('keep', 0)}  discard {c.get('discard', 0)}  {failed}  rejected {c.get('rejected', 0)}{stale}"


def _line(rec: TrialRecord) -> str:
    delta = ""
    if rec.val_bpb is not None and rec.best_bpb_before is not None:
        delta = f" ({rec.val_bpb - rec.best_bpb_before:+.6f})"
    why = f" - {one_line(rec.reason)}" if rec.status not in ("keep", "discard") and rec.reason else ""
    return (f"trial {rec.trial:>3} {rec.status:<13} {_fmt_bpb(rec.val_bpb)}{delta}  "
            f"{one_line(rec.description)}{why}")[:300]


class LiveView(Events):
    """A rich Live panel, refreshed on every event and twice a second; finished trials are printed above it. One
    row group per trial in flight (several with several slots)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.tag = ""
        self.flight: dict[int, dict] = {}         # trial id -> {kind, phase, detail, progress, t0}
        self.run_phase = ""                       # what is not one trial's: proposing, resume
        self.summary: RunSummary | None = None
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2, transient=True)

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        self.live.stop()

    def _render(self):
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        t.add_row("run", Text(one_line(self.tag or "-")))
        for n, f in sorted(dict(self.flight).items()):
            t.add_row("trial", f"{n} ({f['kind']})  {time.monotonic() - f['t0']:.0f} s")
            t.add_row("phase", Text(one_line(f"{f['phase']} {f['detail']}".strip() or "-")))
            p = {k: one_line(v) for k, v in f["progress"].items()}
            if p:
                t.add_row("training", Text(f"step {p.get('step', '?')}  loss {p.get('loss', '?')}  "
                                           f"remaining {p.get('remaining_s', '?')} s"))
        if self.run_phase or not self.flight:
            t.add_row("phase", Text(one_line(self.run_phase or "-")))
        best = self.summary.best_bpb if self.summary else None
        base = self.summary.baseline_bpb if self.summary else None
        t.add_row("best bpb", f"{_fmt_bpb(best)}  (baseline {_fmt_bpb(base)})")
        t.add_row("trials", _counts(self.summary))
        return Group(Text("autoresearch", style="bold cyan"), t)

    def _refresh(self):
        self.live.refresh()

    def run_started(self, info: dict) -> None:
        self.tag = info.get("tag", "")
        self.console.print(Text(one_line(f"run {self.tag}: branch {info.get('branch')}, proposer "
                                         f"{info.get('proposer')}, image {info.get('image') or '(default)'}"
                                         + (" (resumed)" if info.get("resume") else ""))))
        self._refresh()

    def trial_started(self, trial_id: int, kind: str) -> None:
        self.flight[trial_id] = {"kind": kind, "phase": "", "detail": "", "progress": {}, "t0": time.monotonic()}
        self.run_phase = ""
        self._refresh()

    def phase(self, name: str, detail: str = "") -> None:
        if len(self.flight) == 1 and name not in RUN_PHASES:        # one trial at a time: it is that trial's
            return self.trial_phase(next(iter(self.flight)), name, detail)
        self.run_phase = f"{name} {detail[:80]}".strip()
        self._refresh()

    def line(self, text: str) -> None:
        if len(self.flight) == 1:
            self.trial_line(next(iter(self.flight)), text)

    def trial_phase(self, trial_id: int, name: str, detail: str = "") -> None:
        if f := self.flight.get(trial_id):
            f["phase"], f["detail"] = name, detail[:80]
            self._refresh()

    def trial_line(self, trial_id: int, text: str) -> None:
        if (p := parse_progress(text)) and (f := self.flight.get(trial_id)):
            f["progress"] = p
            self._refresh()

    def trial_finished(self, rec: TrialRecord, summary: RunSummary) -> None:
        self.summary = summary
        self.flight.pop(rec.trial, None)
        self.console.print(Text(_line(rec)), highlight=False)
        self._refresh()


class PlainView(Events):
    """One line per trial and per phase change, to a stream (for pipes, CI logs and tests)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _say(self, text: str) -> None:
        print(one_line(text), file=self.stream, flush=True)

    def run_started(self, info: dict) -> None:
        self._say(f"run {info.get('tag')}: branch {info.get('branch')}, proposer {info.get('proposer')}"
                  + (f", resumed after {info.get('trials_done')} trials" if info.get("resume") else ""))

    def trial_started(self, trial_id: int, kind: str) -> None:
        self._say(f"trial {trial_id} ({kind}) started")

    def phase(self, name: str, detail: str = "") -> None:
        if name == "resume":
            self._say(f"resume: {detail}")

    def trial_finished(self, rec: TrialRecord, summary: RunSummary) -> None:
        self._say(_line(rec) + f"  | best {_fmt_bpb(summary.best_bpb)}  {_counts(summary)}")
