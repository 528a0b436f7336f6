"""The Docker executor: each trial in the hardened train and eval containers of runner/sandbox/. TRUSTED CODE.

It implements runner.executor.Executor over this package: `resolve_image` finds the trial image `autoresearch
build` made (images.py), `remove_leftovers` removes the containers and volumes of runs whose runner is gone,
whatever their tag (cleanup.remove_dead: their lock is free), `start` makes the run's slots, `run` is
trial.run_trial on a free slot, `close` removes everything of the run (the trials still in flight, by the run's
lock in their labels, the slots started ahead and the used ones), after which `run` starts nothing.

Slots on one host (policy `slots`, or one per GPU of a `gpu: [..]` list): each slot runs its own trials under its
own copy of the policy, which differs in the resources only:
- GPU slot k: `gpu: [id_k]`, so its containers see exactly that device;
- CPU slot k of N: `limits.cpuset` = its own cores (the engine's NCPU split into N disjoint ranges) and
  `limits.cpus` = min(the policy's cpus, its cores), so slots never compete for a core.
Each slot keeps its own Standby (the next trial's containers started as this one exports). `run` is thread-safe:
a run calls it from up to `slots` threads at once, and each call takes a free slot (or waits for one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import queue
from pathlib import Path

from ..errors import UserError
from ..executor import OnLine, OnPhase, TrialOutcome, TrialSpec
from . import cleanup, images
from .slot import Standby
from .trial import run_trial


def slot_policies(policy, ncpu: int) -> list[tuple[str, object]]:
    """[(slot name, that slot's policy)] for a run under `policy` on an engine with `ncpu` cores."""
    if isinstance(policy.gpu, list) and len(policy.gpu) > 1:
        return [(f"gpu{g}", policy.model_copy(update={"gpu": [g]})) for g in policy.gpu]
    n = policy.slot_count
    if n == 1:
        return [("0", policy)]
    per = ncpu // n
    if per < 1:
        raise UserError(f"slots {n} needs at least {n} cores, the Docker engine has {ncpu}; lower slots")
    out = []
    for k in range(n):
        cores = f"{k * per}" if per == 1 else f"{k * per}-{k * per + per - 1}"
        limits = policy.limits.model_copy(update={"cpuset": cores, "cpus": min(policy.limits.cpus, float(per))})
        out.append((str(k), policy.model_copy(update={"limits": limits})))
    return out


class DockerExecutor:
    name = "docker"

    def __init__(self, client=None):
        self.client = client              # None: each trial connects (runner.sandbox.preflight.connect)
        self.slots = 1
        self._slots: list[tuple[str, object, Standby]] = []
        self._free: queue.Queue = queue.Queue()
        self._run_lock: Path | None = None      # the run's lock (cleanup.run_lock): its containers carry it
        self._closed = False                    # close() after start(): a trial still in flight starts nothing

    def resolve_image(self, policy) -> str:
        img = images.find(policy.flavour, client=self.client)
        if img is None:
            raise UserError(f"no trial image for flavour {policy.flavour} in the Docker engine; run "
                            f"`autoresearch build --flavour {policy.flavour}` (or set image: in the policy)")
        return img.tag

    def remove_leftovers(self, run_tag: str) -> int:
        """What runs whose runner is gone left on the engine, whatever their tag, and what earlier runners of this
        run left (cleanup.remove_dead); one line on stderr for what is left because no one can tell whether its
        runner lives. Called holding the run's lock (runner.runs.RunLock)."""
        import sys
        from ..runs import RunLock
        from ..text import one_line
        sweep = cleanup.remove_dead(self.client, run_tag=run_tag, own_locks=RunLock.held)
        if note := sweep.note():
            print(f"autoresearch: {one_line(note)}", file=sys.stderr, flush=True)
        return sweep.removed

    def start(self, policy, *, image: str, data_dir: Path, run_tag: str, work_dir: Path) -> None:
        self.close()
        ncpu = 0
        if policy.slot_count > 1 and not isinstance(policy.gpu, list):
            from .preflight import connect
            ncpu = int((self.client or connect()).info().get("NCPU") or 0)
        for name, pol in slot_policies(policy, ncpu):
            base = Path(work_dir) if policy.slot_count == 1 else Path(work_dir) / name
            self._slots.append((name, pol, Standby(pol, image=image, data_dir=data_dir, run_tag=run_tag,
                                                   base_dir=base)))
            self._free.put(len(self._slots) - 1)
        self.slots = len(self._slots)
        self._run_lock, self._closed = cleanup.run_lock(Path(work_dir), run_tag), False

    @property
    def standby(self) -> Standby | None:
        """The first slot's Standby (benchmarks time when it starts the next trial's containers)."""
        return self._slots[0][2] if self._slots else None

    def run(self, spec: TrialSpec, on_line: OnLine | None = None, on_phase: OnPhase | None = None) -> TrialOutcome:
        if self._closed:                                    # the run is ending (an interrupt): start nothing
            return TrialOutcome(status="infra", error="the run ended while this trial was starting")
        if not self._slots:                                 # no start(): one trial on its own (reproduce)
            return run_trial(spec, on_line, client=self.client, on_phase=on_phase)
        k = self._free.get()
        try:
            name, pol, standby = self._slots[k]
            out = run_trial(dataclasses.replace(spec, policy=pol), on_line, client=self.client, on_phase=on_phase,
                            standby=standby)
            out.slot = name
            return out
        finally:
            self._free.put(k)

    def close(self) -> None:
        """Remove everything of the run: the trials still in flight (an interrupt: their containers carry the run's
        lock), the slots started ahead and the used ones. Best effort: what an engine that is gone keeps goes with
        the slots' watchdogs or the next run's start (cleanup.remove_dead)."""
        slots, self._slots, self._free = self._slots, [], queue.Queue()
        self._closed = self._closed or bool(slots)
        lock, self._run_lock = self._run_lock, None

        def sweep():
            if lock is not None:
                with contextlib.suppress(Exception):
                    cleanup.remove_owned(lock, self.client)
        for _, _, standby in slots:
            standby.stop()                             # a trial in flight that ends now must not start a slot
        sweep()                                        # everything of the run at once: trials in flight, standbys
        for _, _, standby in slots:
            with contextlib.suppress(Exception):
                standby.close()
        sweep()                                        # a slot that a trial in flight was making meanwhile
