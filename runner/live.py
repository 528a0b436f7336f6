"""The live view of a run: current trial, phase, last step/loss/remaining time, best BPB, counts. TRUSTED CODE.

`LiveView` (rich, for a terminal) and `PlainView` (one line per event, for logs and pipes) implement the loop's
`Events`. Progress lines from the train container (`step=N loss=X ... remaining_s=S`) are untrusted text: only
those numbers are picked out, and nothing from them is ever used as a score.

Every string that comes from a candidate or an LLM (progress values, descriptions, reasons) is shown through
runner.text.one_line (control and format characters escaped) and, in rich, as a Text object, never as markup.
"""
from __future__ import annotations

import re
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .ledger import TrialRecord
from .loop import Events, RunSummary
from .text import one_line

PAIR = re.compile(r"(\w+)=(\S+)")
MAX_FIELD = 32


def parse_progress(line: str) -> dict[str, str]:
    """The key=value pairs of a `step=N loss=X ...` line ({} for any other line)."""
    if not line.lstrip().startswith("step="):
        return {}
    return {k: v[:MAX_FIELD] for k, v in PAIR.findall(line[:1000])}


def _fmt_bpb(x) -> str:
    return f"{x:.6f}" if isinstance(x, (int, float)) else "-"


def _counts(summary: RunSummary | None) -> str:
    c = summary.counts if summary else {}
    failures = {k: v for k, v in sorted(c.items()) if k not in ("keep", "discard", "rejected") and v}
    failed = f"failed {sum(failures.values())}"
    if failures and set(failures) != {"crash"}:      # infra and over_budget are not the candidate's crash
        failed += " (" + ", ".join(f"{k} {v}" for k, v in failures.items()) + ")"
    return f"keep {c.get('keep', 0)}  discard {c.get('discard', 0)}  {failed}  rejected {c.get('rejected', 0)}"


def _line(rec: TrialRecord) -> str:
    delta = ""
    if rec.val_bpb is not None and rec.best_bpb_before is not None:
        delta = f" ({rec.val_bpb - rec.best_bpb_before:+.6f})"
    why = f" - {one_line(rec.reason)}" if rec.status not in ("keep", "discard") and rec.reason else ""
    return (f"trial {rec.trial:>3} {rec.status:<13} {_fmt_bpb(rec.val_bpb)}{delta}  "
            f"{one_line(rec.description)}{why}")[:300]


class LiveView(Events):
    """A rich Live panel, refreshed on every event; finished trials are printed above it."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.tag = ""
        self.trial: int | None = None
        self.kind = ""
        self.phase_name = ""
        self.detail = ""
        self.progress: dict[str, str] = {}
        self.summary: RunSummary | None = None
        self.t_trial = time.monotonic()
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)

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
        if self.trial is not None:
            t.add_row("trial", f"{self.trial} ({self.kind})  {time.monotonic() - self.t_trial:.0f} s")
        t.add_row("phase", Text(one_line(f"{self.phase_name} {self.detail}".strip() or "-")))
        p = {k: one_line(v) for k, v in self.progress.items()}
        if p:
            t.add_row("training", Text(f"step {p.get('step', '?')}  loss {p.get('loss', '?')}  "
                                       f"remaining {p.get('remaining_s', '?')} s"))
        best = self.summary.best_bpb if self.summary else None
        base = self.summary.baseline_bpb if self.summary else None
        t.add_row("best bpb", f"{_fmt_bpb(best)}  (baseline {_fmt_bpb(base)})")
        t.add_row("trials", _counts(self.summary))
        return Group(Text("autoresearch", style="bold cyan"), t)

    def _refresh(self):
        self.live.update(self._render())

    def run_started(self, info: dict) -> None:
        self.tag = info.get("tag", "")
        self.console.print(Text(one_line(f"run {self.tag}: branch {info.get('branch')}, proposer "
                                         f"{info.get('proposer')}, image {info.get('image') or '(default)'}"
                                         + (" (resumed)" if info.get("resume") else ""))))
        self._refresh()

    def trial_started(self, trial_id: int, kind: str) -> None:
        self.trial, self.kind, self.progress, self.t_trial = trial_id, kind, {}, time.monotonic()
        self._refresh()

    def phase(self, name: str, detail: str = "") -> None:
        self.phase_name, self.detail = name, detail[:80]
        self._refresh()

    def line(self, text: str) -> None:
        if p := parse_progress(text):
            self.progress = p
            self._refresh()

    def trial_finished(self, rec: TrialRecord, summary: RunSummary) -> None:
        self.summary = summary
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
