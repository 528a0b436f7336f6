"""The training budget: a clock that starts at the first batch, and the progress fraction train.py stops by.

TRUSTED CODE, part of the harness baked into the trial image; not the agent's to edit.

Two modes:
- time (the default): progress = elapsed / budget_seconds, the clock starting when the loader hands out its first
  batch (data indexing and model construction before that are free; compilation after it is not).
- steps (AUTORESEARCH_MAX_STEPS set, for tests and reproducibility): progress = step / max_steps, which makes a
  CPU run bit-reproducible for a given seed. The time budget still caps: once it is spent progress is 1, and a
  one-line warning says the run stopped on time rather than on steps (so it is no longer step-reproducible).

The budget is cooperative: train.py stops when progress reaches 1. The hard limit is the container's timeout,
which the runner enforces from outside.
"""
from __future__ import annotations

import sys
import time
from typing import Callable


class Budget:
    def __init__(self, budget_seconds: float, max_steps: int | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if not budget_seconds > 0:
            raise ValueError(f"budget_seconds must be > 0, got {budget_seconds}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.budget_seconds = float(budget_seconds)
        self.max_steps = max_steps
        self._clock = clock
        self._t0: float | None = None
        self._capped_warned = False

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def start(self) -> None:
        """Start the clock (idempotent: only the first call counts). The loader calls it at the first batch."""
        if self._t0 is None:
            self._t0 = self._clock()

    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else self._clock() - self._t0

    def remaining(self) -> float:
        return max(0.0, self.budget_seconds - self.elapsed())

    def progress(self, step: int) -> float:
        """Fraction of the budget used, in [0, 1]. Training stops when it reaches 1."""
        time_frac = self.elapsed() / self.budget_seconds
        if self.max_steps is None:
            return min(1.0, max(0.0, time_frac))
        if time_frac >= 1.0:
            if not self._capped_warned and step < self.max_steps:
                self._capped_warned = True
                print(f"harness: time budget of {self.budget_seconds:g}s ran out at step {step} before "
                      f"max_steps={self.max_steps}; stopping on time (this run is not step-reproducible)",
                      file=sys.stderr, flush=True)
            return 1.0
        return min(1.0, max(0.0, step / self.max_steps))
