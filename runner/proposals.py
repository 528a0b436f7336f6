"""Proposals made ahead: the proposer on its own thread, so a slot that frees up never waits for the LLM. TRUSTED.

    proposals = Proposals(proposer, context, ahead=slots, limit=max_trials_left)
    proposals.start()
    proposal, ctx = proposals.get()      # blocks only when none is ready; re-raises the proposer's exception
    proposals.close()

The proposer runs on one background thread, one call at a time (proposers need not be thread-safe). Whenever
fewer than `ahead` proposals wait beyond those asked for (`ahead` 0: only when one is asked for, so each proposal
sees every result before it) and fewer than `limit` were made, it builds a Context with `context()` (the best
and the ledger as they are at that moment: the caller makes that function safe to call from this thread) and
asks for the next one. Each proposal is returned with the Context it was made from, so its parent is the best
of that moment. A proposal made while trials train cannot know their results: that is the price of never idling.

A proposer that reports what it does while it works (retries, backoffs) declares a `notify` attribute; while it
makes the proposal for trial n, `notify` is set to a function that hands each text to `on_note(n, text)`, and
`on_note(n, "")` follows when that call ends. Nothing is reported after close().
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from . import signals
from .proposers import Context, Proposal, Proposer


class Proposals:
    def __init__(self, proposer: Proposer, context: Callable[[], Context], *, ahead: int = 1,
                 limit: int | None = None, on_note: Callable[[int, str], None] | None = None):
        self.proposer, self.context, self.ahead, self.limit = proposer, context, max(0, ahead), limit
        self.on_note = on_note
        self.made = 0
        self.asking = 0                                  # get() calls waiting
        self.ready: list[tuple[Proposal, Context, float]] = []   # (proposal, its context, seconds it took)
        self.error: BaseException | None = None
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="proposer", daemon=True)

    def start(self) -> "Proposals":
        self.thread.start()
        return self

    def get(self) -> tuple[Proposal, Context, float]:
        """The oldest ready proposal with its context and how long the proposer took; waits for one."""
        with self.cond:
            self.asking += 1
            self.cond.notify_all()
            try:
                while not self.ready and self.error is None:
                    self.cond.wait(signals.POLL_S)      # on the run's main thread: see a stop signal on time
            finally:
                self.asking -= 1
            if self.ready:
                item = self.ready.pop(0)
                self.cond.notify_all()
                return item
            raise self.error

    def close(self) -> None:
        """Stop asking for more. A call in progress is abandoned (the thread is a daemon)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _wanted(self) -> bool:
        return (not self.closed and self.error is None and len(self.ready) < self.ahead + self.asking
                and (self.limit is None or self.made < self.limit))

    def _notify(self, trial_id: int) -> None:
        if self.on_note is not None and hasattr(self.proposer, "notify"):
            self.proposer.notify = lambda text: self._note(trial_id, text)

    def _note(self, trial_id: int, text: str) -> None:
        if self.on_note is not None and not self.closed and hasattr(self.proposer, "notify"):
            self.on_note(trial_id, text)

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self._wanted():
                    if self.closed or self.error is not None or (self.limit is not None and self.made >= self.limit):
                        return
                    self.cond.wait()
                self.made += 1
            try:
                ctx = self.context()
                t0 = time.monotonic()
                self._notify(ctx.trial_id)
                try:
                    proposal = self.proposer.propose(ctx)
                finally:
                    self._note(ctx.trial_id, "")
                item = (proposal, ctx, time.monotonic() - t0)
            except BaseException as e:  # noqa: BLE001 - handed to the run's thread, which raises it
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                return
            with self.cond:
                self.ready.append(item)
                self.cond.notify_all()
