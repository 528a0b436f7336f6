"""Cleanup: remove a trial's containers and volumes, and what dead runs left behind, found by label. TRUSTED CODE.

Every container and volume a trial creates carries `autoresearch.run=<run tag>`, `autoresearch.trial=<id>` and
`autoresearch.role`. One made for a run, under its directory runs/<tag>/ (runner.runs), also carries the run's
lock (`autoresearch.lock`: the absolute path of runs/<tag>/.lock, an flock its runner holds for as long as it
lives; runner.runs.RunLock) and where that path means that file (`autoresearch.host`: the host's boot id and the
runner's mount namespace). Removal is forced (a running container is killed first) and quiet about things
already gone; it never touches anything without the run label.

What a run removes as it starts (remove_dead), whatever the tag or repository of the run that made it:
- what carries a lock this process holds: its own run's, left by an earlier runner of it;
- what carries a lock that nobody holds, made on this host in this mount namespace: its runner is gone (killed
  with its slots' watchdogs, a reboot);
- what carries no lock label but this run's tag (made by an earlier version, or outside a run directory);
- nothing else: a held lock is a live run. A lock that cannot be tested (made on another host or in another mount
  namespace, a file that is gone or is not a regular file) leaves its run's things alone, and Sweep.note says so.
The test takes a shared flock and drops it at once, without blocking; RunLock retries its own briefly, so the test
never makes a run that is starting fail. Each slot's watchdog (runner/sandbox/watchdog.py) removes a dead runner's
slot at once; this is for what outlived both.
"""
from __future__ import annotations

import fcntl
import functools
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import signals
from .spec import LABEL_HOST, LABEL_LOCK, LABEL_RUN, LABEL_TRIAL

LOCK_NAME = ".lock"                                 # runs/<tag>/.lock (runner.runs.RunLock)
BOOT_ID = "/proc/sys/kernel/random/boot_id"         # new at every boot: a lock path of an earlier boot means nothing
HELD, FREE = "held", "free"                         # lock_state's answers; anything else says why it cannot tell
REMOVE_AT_ONCE = 8                                  # engine removals in flight together


def _filters(run_tag: str | None, trial_id: str | None) -> dict:
    labels = [f"{LABEL_RUN}={run_tag}" if run_tag is not None else LABEL_RUN]
    if trial_id is not None:
        labels.append(f"{LABEL_TRIAL}={trial_id}")
    return {"label": labels}


def _each(fn, items) -> list[str]:
    """fn(item) for every item at once (the engine removes in parallel: a loaded engine takes seconds for each);
    the errors fn returned."""
    items = [i for i in items if i is not None and i != ""]
    if len(items) < 2:
        return [e for e in map(fn, items) if e]
    pool = ThreadPoolExecutor(min(len(items), REMOVE_AT_ONCE), thread_name_prefix="remove")
    try:
        futures = [pool.submit(fn, i) for i in items]
        return [e for e in map(signals.result, futures) if e]    # on the main thread as a run stops: a second
    finally:                                                     # signal is seen within 0.2 s (runner.signals)
        pool.shutdown(wait=False)


def remove_containers(containers) -> list[str]:
    """Force-remove each container (kill + remove + its anonymous volumes); returns the errors, if any."""
    import docker.errors

    def remove(c) -> str:
        try:
            c.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                return f"container {getattr(c, 'name', c)}: {e.explanation or e}"
        return ""
    return _each(remove, containers)


def remove_volumes(client, names) -> list[str]:
    import docker.errors

    def remove(name: str) -> str:
        try:
            client.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            return f"volume {name}: {e.explanation or e}"
        return ""
    return _each(remove, names)


def leftovers(run_tag: str | None = None, trial_id: str | None = None, client=None) -> tuple[list, list[str]]:
    """(containers, volume names) labelled for this run (and trial); run_tag=None: every autoresearch run."""
    if client is None:
        from .preflight import connect
        client = connect()
    import docker.errors
    flt = _filters(run_tag, trial_id)
    containers = []
    for row in client.api.containers(all=True, filters=flt):
        try:
            containers.append(client.containers.get(row["Id"]))
        except docker.errors.NotFound:
            pass                                   # removed since it was listed (a slot's background removal)
    volumes = [v["Name"] for v in (client.api.volumes(filters=flt).get("Volumes") or [])]
    return containers, volumes


def remove_leftovers(run_tag: str | None = None, trial_id: str | None = None, client=None) -> int:
    """Remove everything labelled with this run tag (and trial id); returns how many things were removed.

    For a trial id about to run again (runner/sandbox/trial.py) and a Ray node's clean-up. A run starting uses
    remove_dead, which also tells a live run of the same tag in another repository from a dead one. run_tag=None
    removes every autoresearch container on the engine, including those of runs still going: only for an
    explicit user clean-up."""
    if client is None:
        from .preflight import connect
        client = connect()
    containers, volumes = leftovers(run_tag, trial_id, client)
    remove_containers(containers)
    remove_volumes(client, volumes)
    return len(containers) + len(volumes)


# --------------------------------------------------------------------------- which runner is gone: its lock

@functools.lru_cache(maxsize=1)
def host_id() -> str | None:
    """This host's boot and this process's mount namespace: where a lock path means the same file (None off Linux)."""
    try:
        return f"{Path(BOOT_ID).read_text().strip()}/{os.readlink('/proc/self/ns/mnt')}"
    except OSError:
        return None


def run_lock(path: Path, run_tag: str) -> Path | None:
    """The lock of the run whose directory holds `path` (runs/<run_tag>/.lock, absolute), None outside one (a test's
    trial, a reproduction: their things carry no lock and are never another run's to remove)."""
    for d in [Path(path).resolve(), *Path(path).resolve().parents]:
        if d.name == run_tag and d.parent.name == "runs" and (d / LOCK_NAME).is_file():
            return d / LOCK_NAME
    return None


def owner_labels(lock: Path | None) -> dict[str, str]:
    """The labels that let any later run tell whether this run's runner lives; none without a lock or a host id."""
    host = host_id()
    return {LABEL_LOCK: str(lock), LABEL_HOST: host} if lock is not None and host is not None else {}


def lock_state(lock: str, host: str | None) -> str:
    """HELD (its runner lives), FREE (its runner is gone), or why that cannot be told."""
    if host is None or host != host_id():
        return "made on another host or in another mount namespace"
    if not os.path.isabs(lock) or os.path.basename(lock) != LOCK_NAME:
        return f"its lock label {lock!r} names no run lock"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"its lock {lock} is gone"
    except OSError as e:
        return f"its lock {lock} cannot be opened ({e.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"its lock {lock} is not a regular file"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return HELD
        except OSError as e:
            return f"its lock {lock} cannot be tested ({e.strerror})"
        return FREE                                   # released by the close below
    finally:
        os.close(fd)


@dataclass
class Sweep:
    removed: int = 0                                  # containers and volumes removed
    unknown: dict[str, str] = field(default_factory=dict)   # run tag -> why its runner's life cannot be told
    left: int = 0                                     # containers and volumes left for that reason
    errors: list[str] = field(default_factory=list)

    def note(self) -> str:
        """One line on what was left because nobody can tell whether its runner lives ("" when nothing was)."""
        if not self.unknown:
            return ""
        tag, why = next(iter(self.unknown.items()))
        tags = ", ".join(self.unknown)
        return (f"left {self.left} containers and volumes of run {tags}: cannot tell whether its runner lives "
                f"({tag}: {why}); once it is gone: `docker rm -f $(docker ps -aq --filter label={LABEL_RUN}={tag})`"
                f" and `docker volume rm $(docker volume ls -q --filter label={LABEL_RUN}={tag})`")


def remove_dead(client=None, *, run_tag: str | None = None, own_locks=()) -> Sweep:
    """Remove what runs whose runner is gone left on the engine, and what this run's earlier runners left (the
    module docstring says which); own_locks: the locks this process holds (runner.runs.RunLock.held)."""
    if client is None:
        from .preflight import connect
        client = connect()
    own, states, sweep = {str(p) for p in own_locks}, {}, Sweep()

    def dead(labels: dict) -> bool:
        lock = labels.get(LABEL_LOCK)
        if lock is None:
            return run_tag is not None and labels.get(LABEL_RUN) == run_tag
        if lock in own:
            return True
        key = (lock, labels.get(LABEL_HOST))
        if key not in states:
            states[key] = lock_state(*key)
        if states[key] not in (HELD, FREE):
            sweep.unknown.setdefault(labels.get(LABEL_RUN, "?"), states[key])
            sweep.left += 1
        return states[key] == FREE

    ids = [row["Id"] for row in client.api.containers(all=True, filters={"label": LABEL_RUN})
           if dead(row.get("Labels") or {})]
    names = [v["Name"] for v in (client.api.volumes(filters={"label": LABEL_RUN}).get("Volumes") or [])
             if dead(v.get("Labels") or {})]
    sweep.errors = _remove_ids(client, ids) + remove_volumes(client, names)   # containers first: they hold the volumes
    sweep.removed = len(ids) + len(names)
    return sweep


def remove_owned(lock: Path, client=None) -> list[str]:
    """Remove every container and volume carrying this lock (a run's own, as it ends); the errors, if any."""
    if client is None:
        from .preflight import connect
        client = connect()
    flt = {"label": [f"{LABEL_LOCK}={lock}"]}
    ids = [row["Id"] for row in client.api.containers(all=True, filters=flt)]
    names = [v["Name"] for v in (client.api.volumes(filters=flt).get("Volumes") or [])]
    return _remove_ids(client, ids) + remove_volumes(client, names)


def _remove_ids(client, ids: list[str]) -> list[str]:
    import docker.errors

    def remove(cid: str) -> str:
        try:
            client.api.remove_container(cid, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                return f"container {cid[:12]}: {e.explanation or e}"
        return ""
    return _each(remove, ids)
