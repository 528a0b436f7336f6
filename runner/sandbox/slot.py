"""A slot: one trial's containers, started before its inputs exist, and the hand-overs that feed them. TRUSTED CODE.

Why: a train container spends about 2.3 s between its start and its first training step (the engine starts it,
Python imports torch and torch._dynamo), and an eval container about 1.5 s before it can load a model. In a loop
of 60 s trials that is several percent of the machine's time. A run therefore starts the next trial's slot ahead
(`Standby`): the containers do that work in CPU time the trials leave idle, at a very low CPU weight
(runner/sandbox/spec.py), and wait. When: as the current trial's export starts. Starting a slot is also ~0.5
CPU-seconds of the engine's own work (and removing one ~0.2), which no CPU weight covers; during training it cost
the training 2-3% of its steps. The export is single-threaded, and so is the evaluator's load that follows, so
a core is free then (docs/benchmarks.md).

    slot = open_slot(client, policy, image=..., data_dir=..., run_tag=..., slot_id=..., dir=...)
    slot.hand_over_candidate(train_py, seed)     # trial.json, then train.py, renamed into dir/train (= /work)
    slot.hand_over_model(below)                  # probes.json (the bar), then model.pt2 renamed into dir/model
                                                 # (= the eval container's /in)
    slot.remove()                                # containers, volumes and dir; returns errors as strings
    slot.killed_by_watchdog("train")             # its deadline kill, not an operator's (runner.sandbox.watchdog)
    slot.outside_events("train")                 # the engine's kill/stop/... events for that container so far

    standby = Standby(policy, image=..., data_dir=..., run_tag=..., base_dir=...)   # one per run
    standby.take(policy, image, data_dir)        # the waiting slot if it fits and is still alive, else None
    standby.prepare_soon(client)                 # on a thread: start the next trial's slot, then remove used ones
    standby.discard(slot, client)                # a used slot: removed by the next prepare_soon, or by close()
    standby.wait()                               # for that thread (take() waits for it too)
    standby.stop()                               # from now on make no slot (a trial still in flight as a run ends)
    standby.close()                              # stop(), wait for the thread, remove a slot nobody took and used ones

A hand-over first raises the container's CPU weight to the default, then renames a finished, read-only file into
a directory the container sees read-only: the container never sees a half-written input, and nothing it does
can change what the host handed over. A slot's containers are hardened exactly like a trial's (they are the
trial's): the candidate is untrusted from the moment it is handed over, and before that there is nothing of it.

Every slot has a watchdog (runner/sandbox/watchdog.py), a host process of its own started before anything of the
slot exists: each hand-over gives it that container's deadline (train: policy.train.deadline_seconds, eval:
policy.eval.timeout_seconds, from the hand-over), which it enforces if the runner does not, and it removes the
whole slot, holder included, as soon as the runner that made it is gone, or at the slot's maximum life
(`max_life_s`). remove() ends it, once the slot is gone (a removal cut short is left to it). A slot made under a
run's directory carries that run's lock in its labels (runner.sandbox.cleanup.owner_labels): what outlives both
runner and watchdog is removed by the next run on the host, whatever its tag.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.contract import PROBE_BAR_FILE, probe_bar_json
from .. import signals
from ..errors import InfraError
from . import cleanup, containers as ccont, spec as cspec
from .watchdog import MARKER, MAX_LIFE_MARGIN_S, Watchdog

HOLD_TRAIN, HOLD_EVAL = "/hold/train", "/hold/eval"
EVAL_OUT_MB = 16                      # result.json is small; the eval /out volume is capped at this
TAKE_MARGIN_S = 600                   # a standby slot older than STANDBY_MAX_S minus this is not taken
ABANDON_WAIT_S = 30.0                 # how long a removal that left errors waits for the watchdog to finish it


@dataclass
class Slot:
    id: str
    dir: Path                         # host side: dir/train is the train container's /work, dir/model the eval's /in
    key: tuple                        # what it was made for (image, policy hash, data dir)
    holder: object = None
    train: object = None
    evaluator: object = None
    volumes: list[str] = field(default_factory=list)
    started_at: float = 0.0           # host monotonic clock: when its containers were started
    created_wall: float = 0.0         # host wall clock (the engine's, for its events): when the slot was begun
    deadlines: dict = field(default_factory=dict)   # role -> seconds from its hand-over (the policy's)
    watchdog: Watchdog | None = None

    @property
    def train_dir(self) -> Path:
        return self.dir / "train"

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def model_part(self) -> Path:
        return self.dir / "model.pt2.part"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.pt2"

    def containers(self) -> list:
        return [c for c in (self.evaluator, self.train, self.holder) if c is not None]

    def alive(self) -> bool:
        """Both waiting containers still run (a standby slot can die: its backstop, an engine restart)."""
        import docker.errors
        try:
            for c in (self.train, self.evaluator):
                c.reload()
                if c.status != "running":
                    return False
        except docker.errors.DockerException:
            return False
        return True

    def hand_over_candidate(self, train_py: Path, seed: int) -> float:
        """Give the train container its weight and the candidate; returns the host monotonic time of the hand-over."""
        self.train.update(cpu_shares=cspec.RUNNING_CPU_SHARES)
        _place(self.train_dir, "trial.json", json.dumps({"seed": int(seed)}).encode())
        self._deadline("train")
        _place(self.train_dir, "train.py", Path(train_py).read_bytes())     # last: the launcher waits for it
        return time.monotonic()

    def hand_over_model(self, every_batch_below: float | None = None) -> float:
        """Rename the checked copy at model_part into the eval container's /in; returns the hand-over time. With
        every_batch_below, /in/probes.json says so first (the evaluator reads it once the model is there)."""
        self.evaluator.update(cpu_shares=cspec.RUNNING_CPU_SHARES)
        if every_batch_below is not None:
            _place(self.model_dir, PROBE_BAR_FILE, probe_bar_json(float(every_batch_below)))
        os.chmod(self.model_part, 0o444)
        self._deadline("eval")
        os.rename(self.model_part, self.model)
        return time.monotonic()

    def _deadline(self, role: str) -> None:
        """Tell the watchdog, just before the hand-over (so its deadline is never later than the runner's)."""
        if self.watchdog is not None and role in self.deadlines:
            self.watchdog.deadline(role, time.monotonic() + self.deadlines[role])

    def killed_by_watchdog(self, role: str) -> bool:
        """The watchdog killed this role's container at its deadline (the runner had not)."""
        return (self.dir / MARKER.format(role=role)).exists()

    def outside_events(self, role: str) -> list[dict]:
        """The engine's kill/stop/pause/destroy/die/oom events for this role's container since the slot began."""
        c = {"train": self.train, "eval": self.evaluator, "holder": self.holder}[role]
        return ccont.engine_events(c, since=self.created_wall - 1.0)

    def holder_running(self) -> tuple[bool, bool]:
        """(the holder still runs, it is gone altogether)."""
        import docker.errors
        try:
            self.holder.reload()
        except docker.errors.NotFound:
            return False, True
        return self.holder.status == "running", self.holder.status == "removing"

    def being_removed(self, role: str) -> bool:
        """This role's container is gone or on its way (`docker rm -f` kills first: its kill event comes first)."""
        import docker.errors
        c = {"train": self.train, "eval": self.evaluator, "holder": self.holder}[role]
        try:
            c.reload()
        except docker.errors.NotFound:
            return True
        return c.status == "removing"

    def name_after(self, run_tag: str, trial_id: str) -> None:
        """Rename the containers after the trial that took the slot (what `docker ps` shows); their labels keep the
        slot's id. A name still taken (a leftover) keeps the slot's name: this is cosmetic."""
        import docker.errors
        if self.id == trial_id:
            return
        for role, c in (("train", self.train), ("eval", self.evaluator), ("holder", self.holder)):
            try:
                c.rename(cspec.name(run_tag, trial_id, role))
            except docker.errors.APIError:
                pass

    def remove(self, client=None) -> list[str]:
        """Remove the containers (killing them), the volumes and the host directory; the errors, if any. The
        watchdog is told `done` only once all of it is gone; a removal that failed, or was interrupted (a second
        signal), is handed over to it (Watchdog.abandon), so the slot is never left half-removed."""
        complete = interrupted = False
        try:
            interrupted = True
            errors = cleanup.remove_containers(self.containers())
            if client is not None:
                errors += cleanup.remove_volumes(client, self.volumes)
            shutil.rmtree(self.dir, ignore_errors=True)
            complete, interrupted = not errors and (client is not None or not self.volumes), False
        finally:
            if self.watchdog is not None:                 # last: it guards the slot until the slot is gone
                if complete:
                    self.watchdog.close()
                else:                                     # it removes the rest; waited for unless interrupted
                    self.watchdog.abandon(0.0 if interrupted else ABANDON_WAIT_S)
        return errors


def slot_key(policy, image: str, data_dir: Path) -> tuple:
    return (image, policy.sha256(), str(Path(data_dir).resolve()))


def max_life_s(policy) -> float:
    """The longest a slot can be in use: waiting for its candidate (the containers' own backstop), the train
    deadline, the eval timeout, and a margin for the copies between them. Its watchdog removes it after that."""
    return cspec.STANDBY_MAX_S + policy.train.deadline_seconds + policy.eval.timeout_seconds + MAX_LIFE_MARGIN_S


def open_slot(client, policy, *, image: str, data_dir: Path, run_tag: str, slot_id: str, dir: Path) -> Slot:
    """Create and start a trial's holder, train and eval containers, waiting for their inputs. Whatever was made
    is removed again if this fails (the engine's exception propagates)."""
    names = {role: cspec.name(run_tag, slot_id, role) for role in ("holder", "train", "eval", "train-out", "eval-out")}
    owner = cleanup.owner_labels(cleanup.run_lock(dir, run_tag))    # any later run can tell when its runner is gone
    labels = {role: cspec.labels(run_tag, slot_id, role, owner) for role in names}
    slot = Slot(id=slot_id, dir=Path(dir), key=slot_key(policy, image, data_dir), created_wall=time.time(),
                deadlines={"train": policy.train.deadline_seconds, "eval": policy.eval.timeout_seconds})
    try:
        shutil.rmtree(slot.dir, ignore_errors=True)
        for d in (slot.train_dir, slot.model_dir):
            d.mkdir(parents=True)
            os.chmod(d, 0o755)                        # readable by the trial uid whatever the umask
        try:                                          # first: from here on, a dead runner's slot goes with it
            slot.watchdog = Watchdog.start(run_tag=run_tag, slot_id=slot_id, marker_dir=slot.dir,
                                           volumes=[names["train-out"], names["eval-out"]],
                                           max_life_s=max_life_s(policy))
        except OSError as e:
            raise InfraError(f"cannot start the slot's watchdog process: {e}") from None
        sizes = {"train-out": policy.limits.output_mb, "eval-out": min(EVAL_OUT_MB, policy.limits.output_mb)}
        for role, size in sizes.items():
            client.volumes.create(**cspec.output_volume(policy, name=names[role], labels=labels[role], size_mb=size))
            slot.volumes.append(names[role])
        slot.holder = client.containers.create(**cspec.holder(
            policy, image=image, name=names["holder"], labels=labels["holder"],
            volumes={HOLD_TRAIN: names["train-out"], HOLD_EVAL: names["eval-out"]}))
        slot.train = client.containers.create(**cspec.train(
            policy, image=image, name=names["train"], labels=labels["train"], train_dir=slot.train_dir,
            data_dir=Path(data_dir), out_volume=names["train-out"]))
        slot.evaluator = client.containers.create(**cspec.evaluate(
            policy, image=image, name=names["eval"], labels=labels["eval"], model_dir=slot.model_dir,
            data_dir=Path(data_dir), out_volume=names["eval-out"]))
        slot.watchdog.containers(holder=slot.holder.id, train=slot.train.id, eval=slot.evaluator.id)
        slot.started_at = time.monotonic()
        for c in (slot.holder, slot.train, slot.evaluator):
            c.start()
        return slot
    except BaseException:
        slot.remove(client)
        raise


class Standby:
    """At most one slot started ahead for the next trial of a run. Used from the run's own thread, except for
    prepare_soon, which the log pump's thread calls; the slot is made, and used slots are removed, on one
    background thread at a time, which take() and close() wait for."""

    def __init__(self, policy, *, image: str, data_dir: Path, run_tag: str, base_dir: Path):
        self.policy, self.image, self.data_dir, self.run_tag = policy, image, Path(data_dir), run_tag
        self.base_dir = Path(base_dir)
        self.slot: Slot | None = None
        self.errors: list[str] = []                       # from removals of used slots
        self._client = None
        self._used: list[Slot] = []                       # used slots waiting for removal
        self._lock = threading.Lock()                     # guards _worker and _used
        self._worker: threading.Thread | None = None
        self.closed = False                               # after close(): no slot is made, a discarded one goes at once
        shutil.rmtree(self.base_dir, ignore_errors=True)    # slot dirs a dead run left behind

    def take(self, policy, image: str, data_dir: Path) -> Slot | None:
        """The waiting slot, if it was made for these and is still alive and young enough; else None. Waits for
        a slot being made."""
        self.wait()
        slot, self.slot = self.slot, None
        if slot is None:
            return None
        fits = slot.key == slot_key(policy, image, data_dir)
        young = time.monotonic() - slot.started_at < cspec.STANDBY_MAX_S - TAKE_MARGIN_S
        if fits and young and slot.alive():
            return slot
        slot.remove(self._client)
        return None

    def prepare(self, client) -> None:
        """Start the next trial's slot now unless one waits already. An engine failure leaves none (the next trial
        then makes its own, and reports the failure if it persists)."""
        import docker.errors
        import requests
        if self.slot is not None or self.closed:
            return
        self._client = client
        slot_id = f"next-{secrets.token_hex(4)}"
        try:
            self.slot = open_slot(client, self.policy, image=self.image, data_dir=self.data_dir,
                                  run_tag=self.run_tag, slot_id=slot_id, dir=self.base_dir / slot_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError, InfraError):
            self.slot = None

    def prepare_soon(self, client) -> None:
        """prepare(), then the removal of the used slots, on a background thread; nothing if one is running or
        has run since the last take() (a trial calls this at its export, and again when its training ends)."""
        with self._lock:
            if self._worker is not None or self.closed:     # closed: a trial still in flight as the run ends
                return
            self._client = client
            self._worker = threading.Thread(target=self._prepare_and_reap, args=(client,), name="next-slot",
                                            daemon=True)
            self._worker.start()

    def _prepare_and_reap(self, client) -> None:
        self.prepare(client)                              # first: the next trial may be waiting for it
        self._reap_used(client)

    def discard(self, slot: Slot, client) -> None:
        """A used slot, to be removed by the next prepare_soon (when a core idles) or by close(). Its containers
        have exited, except the holder, which keeps its capped output volumes until then."""
        with self._lock:
            self._client = self._client or client
            if not self.closed:
                self._used.append(slot)
                return
        self._remove(slot, client)                        # a trial that ended after close(): nobody else will

    def _reap_used(self, client) -> None:
        with self._lock:
            used, self._used = self._used, []
        for slot in used:
            self._remove(slot, client)

    def _remove(self, slot: Slot, client) -> None:
        try:
            self.errors += slot.remove(client)
        except Exception as e:  # noqa: BLE001 - an engine that went away: the next start's cleanup removes it
            shutil.rmtree(slot.dir, ignore_errors=True)
            self.errors.append(f"slot {slot.id}: {e}")

    def stop(self) -> None:
        """From now on make no slot (close() does it first; the executor before it removes the run's containers)."""
        with self._lock:
            self.closed = True

    def wait(self) -> None:
        """Wait for the background thread (making a slot takes about 0.6 s) and allow the next one."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            signals.join(worker)                          # may be the main thread: see a stop signal on time
            with self._lock:
                self._worker = None

    def close(self) -> list[str]:
        """Wait for the background thread; remove the slot nobody took and the used ones; the errors, if any. From
        then on no slot is made (a trial still in flight cannot start one) and a discarded slot is removed at once.
        Best effort: what an engine that is gone leaves behind goes with the slots' watchdogs, or the next start's
        cleanup (runner.sandbox.cleanup.remove_dead)."""
        self.stop()
        self.wait()
        slot, self.slot = self.slot, None
        if slot is not None:
            self._remove(slot, self._client)
        self._reap_used(self._client)
        return self.errors


def _place(directory: Path, name: str, data: bytes) -> None:
    """Write data to directory/name atomically and read-only (a finished file appears under its name at once)."""
    part = directory / f".{name}.part"
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(part, 0o444)
    os.rename(part, directory / name)
