"""What a proposer is handed and what it hands back. TRUSTED CODE; a proposal's content is untrusted input.

A proposer turns the current best files (plus program.md and the recent ledger rows) into a `Proposal`: the full
new text of every file it wants to change. It never touches git, the disk or a container; `runner.patch` checks the
proposal against the policy before anything else sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Context:
    """Everything a proposer may look at for one trial."""
    trial_id: int
    seed: int                       # the run's seed; proposers derive their randomness from (seed, trial_id)
    files: dict[str, str]           # the current best commit's allowed files that exist: {path: text}
    allowed_files: list[str]        # the policy's allowed files (a proposal may create one that does not exist yet)
    program: str = ""               # program.md of the experiment repository (the research instructions)
    history: list[dict] = field(default_factory=list)  # recent ledger rows, oldest first
    best_bpb: float | None = None   # the current best val_bpb (None before the baseline)
    parent: str = ""                # the current best commit


@dataclass
class Proposal:
    """A candidate change. `files` holds the complete new text of each changed file."""
    files: dict[str, str]
    description: str
    usage: dict = field(default_factory=dict)     # LLM usage: calls, prompt/completion/total tokens, seconds
    raw_reply: str | None = None                  # the model's last reply, verbatim (None for mutate)
    modes: dict[str, str] = field(default_factory=dict)  # requested git modes ("100644", "100755", "120000", ...)
    error: str = ""      # set when the proposer gave up on a usable patch (retries spent): the trial is rejected


class Proposer(Protocol):
    name: str

    def propose(self, ctx: Context) -> Proposal: ...
