"""The head's pool of a run's slots on a Ray cluster: one NodeSlot actor (runner/ray_node.py) per slot, each asking
Ray for one trial's resources and holding them for the run, so that on its node the next trial's containers are
started ahead as on one host. TRUSTED CODE (the head). runner/ray_executor.py uses it after start().

    pool = SlotPool(ray, job, n, resources)    # n actors (job: the run's pins, tag and policy)
    pool.wait_placed(timeout_s, want)          # until Ray has placed `want` of them (or timeout_s): how many
    actor = pool.take(timeout_s)               # a free slot Ray has placed; None once closed or after timeout_s
    pool.give_back(actor)                      # its trial is over
    pool.lose(actor)                           # it died under a trial (a lost node) or did not answer: killed,
                                               # and a new one asked for (Ray places it where there is room)
    pool.close()                               # idle slots remove their containers; then every actor is killed

    live = Live(on_line, on_phase)             # a trial's lines and phases, each handed over once, in order
    answer = follow(ray, actor, actor.trial.remote(job), trial_id, wait_s, live)   # polls its progress meanwhile

Contracts: a slot is handed out only once Ray has placed and started it (an actor Ray cannot place yet, because the
cluster is full, waits and is handed out when it can); one trial at a time per slot. After close(), take() returns
None at once, to every caller waiting in it. A killed actor's containers go with its watchdogs (detached from it).
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time

from . import signals
from .executor import OnLine, OnPhase
from .ray_node import NodeSlot

LIVE_S = 1.0                 # how often a trial's slot is polled for its new log lines and phases
CLOSE_WAIT_S = 30.0          # how long close() lets idle slots remove their containers before killing them


class SlotPool:
    def __init__(self, ray, job: dict, n: int, resources: dict):
        self.ray, self.job, self.resources = ray, job, resources
        # two threads: progress() answers while trial() runs
        self._cls = ray.remote(NodeSlot).options(max_restarts=0, max_task_retries=0, max_concurrency=2, **resources)
        self._free: queue.Queue = queue.Queue()
        self._actors: list = []                    # every actor of the pool, placed or not
        self._placed: set = set()                  # ids of the actors that run
        self._lock = threading.Lock()
        self.closed = False
        for _ in range(n):
            self._add()

    def _add(self) -> None:
        """Ask Ray for one more slot; a thread hands it out once it runs (caller holds no lock or self._lock)."""
        actor = self._cls.remote(self.job)
        self._actors.append(actor)
        threading.Thread(target=self._when_placed, args=(actor,), name="ray-slot", daemon=True).start()

    def _when_placed(self, actor) -> None:
        try:
            self.ray.get(actor.ready.remote())       # waits as long as Ray has no room for it
        except Exception:  # noqa: BLE001 - killed (close, lose) or its node died before it ran: never handed out
            return
        with self._lock:
            if not self.closed and actor in self._actors:
                self._placed.add(id(actor))
                self._free.put(actor)

    def wait_placed(self, timeout_s: float, want: int | None = None) -> int:
        """Wait until `want` slots (default: all) are placed, at most timeout_s; how many are."""
        want = len(self._actors) if want is None else want
        deadline = time.monotonic() + timeout_s
        while not self.closed and self.placed() < want and time.monotonic() < deadline:
            time.sleep(signals.POLL_S)
        return self.placed()

    def placed(self) -> int:
        with self._lock:
            return sum(id(a) in self._placed for a in self._actors)

    def take(self, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while not self.closed and time.monotonic() < deadline:
            try:
                actor = self._free.get(timeout=signals.POLL_S)
            except queue.Empty:
                continue
            if not self.closed:
                return actor
        return None

    def give_back(self, actor) -> None:
        with self._lock:
            if not self.closed and actor in self._actors:
                self._free.put(actor)

    def lose(self, actor) -> None:
        with self._lock:
            if actor not in self._actors:
                return
            self._actors.remove(actor)
            with contextlib.suppress(Exception):     # already dead
                self.ray.kill(actor, no_restart=True)
            if not self.closed:
                self._add()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            actors, self._actors = self._actors, []
            idle = []
            while True:
                try:
                    idle.append(self._free.get_nowait())
                except queue.Empty:
                    break
        refs = [a.close.remote() for a in idle]
        deadline = time.monotonic() + CLOSE_WAIT_S
        while refs and time.monotonic() < deadline:          # in slices: a second stop signal is seen at once
            _, refs = self.ray.wait(refs, num_returns=len(refs), timeout=signals.POLL_S)
        for actor in actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)


def follow(ray, actor, ref, trial_id: str, wait_s: float, live: Live) -> dict:
    """The answer of trial `trial_id` running in `actor` (ref: its trial() call), polling the actor's progress()
    every LIVE_S meanwhile; GetTimeoutError after wait_s."""
    deadline = time.monotonic() + wait_s
    live.n_lines = live.n_phases = 0                 # an attempt again (a lost node): its own lines, from the start
    while not ray.wait([ref], timeout=LIVE_S)[0]:
        if time.monotonic() > deadline:
            raise ray.exceptions.GetTimeoutError(f"no answer from the Ray slot within {wait_s:.0f} s")
        if live.wanted:
            try:
                live.feed(ray.get(actor.progress.remote(trial_id, live.n_lines, live.n_phases), timeout=30))
            except ray.exceptions.RayError:          # slow, or the slot died: the trial's own answer says which
                pass
    return ray.get(ref)


class Live:
    """Hands a trial's log lines and phases to run()'s callbacks once each, in order: from the polls of its slot
    while it runs, then what is left from its answer (runner.ray_node.Log.since: `lines_total` counts them all)."""

    def __init__(self, on_line: OnLine | None, on_phase: OnPhase | None):
        self.on_line, self.on_phase, self.n_lines, self.n_phases = on_line, on_phase, 0, 0
        self.wanted = on_line is not None or on_phase is not None

    def feed(self, part: dict, whole: bool = False) -> None:
        """part: new lines and phases (a poll), or all of them (whole: the answer)."""
        lines = part.get("lines") or []
        total = part.get("lines_total", len(lines))
        if total > self.n_lines:
            for line in lines[-(total - self.n_lines):] if self.on_line else []:
                self.on_line(line)
            self.n_lines = total
        phases = (part.get("phases") or [])[self.n_phases if whole else 0:]
        for name in phases if self.on_phase else []:
            self.on_phase(name)
        self.n_phases += len(phases)
