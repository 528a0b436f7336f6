"""The prompt the `openai` proposer sends: instructions, program.md, the current best files, recent trials.

TRUSTED CODE. What goes in (history rows come from our own ledger; log tails are the untrusted trial's output and
are shown to the model as data, truncated, in a code fence longer than any backtick run in them, so they cannot
close their own quote):
    system:  the role, the rules of the sandbox, and the reply format of `runner.proposers.reply` (documented there)
    user:    program.md, each allowed file of the current best commit in full, the recent trials as a table with
             status, val_bpb and description, and the log tail of recent failed trials
On a reply that does not parse or apply, the reply and a one-line error go back for another try (`retry_message`).
"""
from __future__ import annotations

import re

from ..decision import REJECTED
from ..ledger import FAILED
from .base import Context

MAX_LOG_TAIL = 1500
MAX_FAILED_LOGS = 3

SYSTEM = """You are an ML researcher improving a small GPT training script. Each of your edits is trained for a \
fixed time budget in a sandbox (no network, no validation data) and then scored by a trusted evaluator on \
validation bits per byte (val_bpb, lower is better). An edit is kept only if val_bpb goes down.

Propose ONE focused change per reply, in exactly this format (text outside the blocks is ignored):

DESCRIPTION: <one line: what you changed and why>

<<<<<<< SEARCH {path}
<lines copied exactly from the current file, indentation included>
=======
<the lines that replace them>
>>>>>>> REPLACE

Rules: exactly one DESCRIPTION line; one or more SEARCH/REPLACE blocks; the path after SEARCH names the file \
(you may edit only: {allowed}); each SEARCH text must match exactly one place in the current file; keep SEARCH \
short but unique. The marker lines must appear exactly as shown, at the start of a line."""


def system_message(ctx: Context) -> str:
    main = "train.py" if "train.py" in ctx.allowed_files else ctx.allowed_files[0]
    return SYSTEM.format(path=main, allowed=", ".join(ctx.allowed_files))


def history_table(rows: list[dict], limit: int) -> str:
    rows = rows[-limit:] if limit else []
    if not rows:
        return "(no trials yet)"
    lines = ["| trial | status | val_bpb | best before | description |", "|---|---|---|---|---|"]
    for r in rows:
        bpb = f"{r['val_bpb']:.6f}" if r.get("val_bpb") is not None else "-"
        best = f"{r['best_bpb_before']:.6f}" if r.get("best_bpb_before") is not None else "-"
        desc = " ".join(str(r.get("description", "")).split())
        reason = " ".join(str(r.get("reason", "")).split())
        if r.get("status") in (REJECTED, *FAILED):
            desc = f"{desc} [{reason[:160]}]" if reason else desc
        lines.append(f"| {r.get('trial')} | {r.get('status')} | {bpb} | {best} | {desc.replace('|', '/')} |")
    return "\n".join(lines)


def fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the text cannot close its own quote (a log
    line of ``` followed by fake instructions stays inside the block, by CommonMark's rule)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def failed_logs(rows: list[dict], limit: int) -> str:
    failed = [r for r in rows[-limit:] if r.get("log_tail")][-MAX_FAILED_LOGS:] if limit else []
    parts = []
    for r in failed:
        tail = r["log_tail"][-MAX_LOG_TAIL:]
        f = fence(tail)
        parts.append(f"Trial {r.get('trial')} ({r.get('status')}) ended with this output:\n{f}\n{tail}\n{f}")
    return "\n\n".join(parts)


def messages(ctx: Context, history: int) -> list[dict]:
    """The first request of a trial: [system, user]."""
    parts = ["# Research instructions (program.md)", ctx.program.strip() or "(none)", ""]
    best = f"{ctx.best_bpb:.6f}" if ctx.best_bpb is not None else "not measured yet"
    parts += [f"# Current best (val_bpb {best})"]
    for path, text in sorted(ctx.files.items()):
        f = fence(text)
        parts += [f"## {path}", f"{f}python", text.rstrip("\n"), f, ""]
    parts += ["# Recent trials (oldest first)", history_table(ctx.history, history), ""]
    if logs := failed_logs(ctx.history, history):
        parts += ["# Output of recent failed trials", logs, ""]
    parts += ["Propose your next change in the required format."]
    return [{"role": "system", "content": system_message(ctx)}, {"role": "user", "content": "\n".join(parts)}]


def retry_message(error: str) -> str:
    return (f"Your reply could not be used: {error}\n"
            "Reply again with one DESCRIPTION line and SEARCH/REPLACE blocks that match the current file exactly.")
