"""The node side of the Ray executor (runner/ray_executor.py states the contracts): what one Ray task does on a
node with a Docker engine. TRUSTED CODE, run by Ray worker processes; the candidate's train.py is only ever bytes
here, written to a scratch dir and handed to the node's hardened train container by runner.sandbox.trial.run_trial.

    node_trial(job)    ensure image + data, run the trial, send back the outcome, result.json, log lines, phases
    node_prepare(job)  ensure image + data only (the head calls it on every node at start)
    node_cleanup(tag)  remove a dead run's containers and volumes on this node's engine, and its dirs in the cache
    NodeSlot(job)      a run's slot on this node (a Ray actor that holds the slot's resources for the run's life):
                       .trial(job) is node_trial with the next trial's containers started ahead, as on one host
                       (runner.sandbox.slot.Standby); .progress(...) the running trial's new log lines and
                       phases, for the head's live view; .close() removes its containers

A CPU slot of whole cores is pinned, as on one host: it claims the first free range of its size among the engine's
cores (an flock on CORES_DIR/<engine id>/<k>.lock, held while the actor lives: a dead actor's claim is free at
once), so the slots on a node never share a core. Without a free range (Ray advertises more CPUs than the engine
has) or with a fractional share, the slot has its CPU quota only.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import uuid
from dataclasses import asdict
from pathlib import Path

from .executor import TrialOutcome, TrialSpec

CACHE_ENV = "AUTORESEARCH_RAY_CACHE"       # a node's cache root (data per sha, trial scratch dirs)
DEFAULT_CACHE = "/var/tmp/autoresearch-ray"
CORES_DIR = "/var/tmp/autoresearch-ray-cores"   # the core claims of every node on this machine (one per engine)
MAX_LOG_LINES = 20_000                     # train log lines a node sends back (the last ones)


def node_trial(job: dict, slot: NodeSlot | None = None) -> dict:
    """On the node: ensure image and data, run the hardened trial, send back what the head writes. `slot`: the
    run's slot this runs in (a NodeSlot actor), whose containers started ahead the trial takes."""
    from .sandbox import preflight, watchdog
    from .sandbox.trial import run_trial
    watchdog.DETACH = True          # this worker's death (a lost node, a cancel) must not take the watchdogs along
    name = slot.name if slot else _slot_name()
    try:
        client = slot.client if slot else preflight.connect()
        ready = _ensure(client, job)
        if ready.get("need") or ready.get("error"):
            return {**(_infra(ready["error"]) if ready.get("error") else ready), "slot": name}
        work = _cache() / "trials" / job["run_tag"] / f"{job['trial_id']}-{uuid.uuid4().hex[:6]}"
        cand = work / "candidate"
        cand.mkdir(parents=True)
        if job["train_py"] is not None:
            _write(cand / "train.py", job["train_py"], 0o644)
        policy = slot.policy(job) if slot else _node_policy(job)
        standby = slot.standby_for(policy, job, Path(ready["data_dir"])) if slot else None
        log = slot.log if slot else Log()
        log.begin(job["trial_id"])
        spec = TrialSpec(run_tag=job["run_tag"], trial_id=job["trial_id"], candidate_dir=cand,
                         data_dir=Path(ready["data_dir"]), policy=policy, image=job["image"], seed=job["seed"],
                         work_dir=work / "trial", keep_model=job["keep_model"],
                         every_batch_below=job.get("every_batch_below"))
        try:
            out = run_trial(spec, log.line, client=client, on_phase=log.phase, standby=standby)
            result = work / "trial" / "result.json"
            model = work / "trial" / "model.pt2"
            return {"outcome": asdict(out), "slot": name, **log.since(job["trial_id"], 0, 0),
                    "result_json": result.read_bytes() if result.is_file() else None,
                    "model": model.read_bytes() if job["keep_model"] and model.is_file() else None}
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Exception as e:  # noqa: BLE001 - the node's own failure (engine, disk, cache): never the candidate's
        return {**_infra(f"on Ray node {name}: {_one_line(e)}"), "slot": name}


class Log:
    """A trial's log lines and phases as they come (thread-safe), for the answer and for the head's polls while it
    runs; at most the last MAX_LOG_LINES..2*MAX_LOG_LINES lines are kept, with the count of those dropped."""

    def __init__(self):
        self._lock = threading.Lock()
        self.begin(None)

    def begin(self, trial_id) -> None:
        with self._lock:
            self.trial_id, self.lines, self.dropped, self.phases = trial_id, [], 0, []

    def line(self, text: str) -> None:
        with self._lock:
            self.lines.append(text)
            if len(self.lines) > 2 * MAX_LOG_LINES:
                del self.lines[:MAX_LOG_LINES]
                self.dropped += MAX_LOG_LINES

    def phase(self, name: str) -> None:
        with self._lock:
            self.phases.append(name)

    def since(self, trial_id, n_lines: int, n_phases: int) -> dict:
        """The lines after the first n_lines and the phases after the first n_phases of trial `trial_id`, with
        lines_total (lines so far, dropped ones included); nothing if another trial's log is kept now."""
        with self._lock:
            if trial_id != self.trial_id:
                return {"lines": [], "lines_total": n_lines, "phases": []}
            return {"lines": self.lines[max(n_lines - self.dropped, 0):][-MAX_LOG_LINES:],
                    "lines_total": self.dropped + len(self.lines), "phases": self.phases[n_phases:]}


class NodeSlot:
    """One slot of a run on this node, as a Ray actor (runner.ray_executor makes `executor.slots` of them at start,
    each asking for one trial's resources, and holds them for the run). It runs the run's trials one at a time, like
    node_trial, and keeps the next trial's containers started ahead (a Standby, made once the node holds the run's
    image and data; its first slot is started at once). Its watchdogs are detached: when the actor dies (a lost
    node, the head's ray.kill on a stop) they remove its containers. __init__ never raises: a node that cannot
    start its slot answers every trial with `infra`, naming why."""

    def __init__(self, job: dict):
        from .sandbox import preflight, watchdog
        watchdog.DETACH = True
        self.name, self.client, self.standby, self.error = _slot_name(), None, None, ""
        self.base = _cache() / "slots" / job["run_tag"] / uuid.uuid4().hex[:8]
        self.cores, self._claim = None, None      # the cpuset this slot pinned, and the open file holding it
        self.log = Log()                           # the trial's, as it runs (the head polls it: progress())
        try:
            self.client = preflight.connect()
            self._pin(_node_policy(job))
            ready = _ensure(self.client, job)
            if ready.get("data_dir"):
                self.standby_for(self.policy(job), job, Path(ready["data_dir"]))
        except Exception as e:  # noqa: BLE001 - reported by every trial of this slot (and its next try re-checks)
            self.error = f"on Ray node {self.name}: {_one_line(e)}"

    def ready(self) -> str:
        """The slot's name, once the actor runs (the head waits for this before giving it a trial)."""
        return self.name

    def progress(self, trial_id: str, n_lines: int, n_phases: int) -> dict:
        """The running trial's new log lines and phases (Log.since); runs beside trial() (the actor has 2 threads)."""
        return self.log.since(trial_id, n_lines, n_phases)

    def _pin(self, policy) -> None:
        """Claim a free range of whole cores for a CPU slot (the module docstring)."""
        import fcntl
        per = policy.limits.cpus
        if policy.wants_gpu or policy.limits.cpuset or per < 1 or per != int(per):
            return
        per, info = int(per), self.client.info()
        root = Path(CORES_DIR) / str(info.get("ID") or "engine").replace(":", "-")
        root.mkdir(parents=True, exist_ok=True)
        for k in range(int(info.get("NCPU") or 0) // per):
            f = open(root / f"{k}.lock", "a")            # noqa: SIM115 - held open for the actor's life
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self._claim = f
            self.cores = f"{k * per}" if per == 1 else f"{k * per}-{k * per + per - 1}"
            self.name = f"{self.name}/cpu{self.cores}"
            return

    def policy(self, job: dict):
        """The job's policy as this slot runs it: _node_policy, pinned to the slot's cores if it claimed some."""
        policy = _node_policy(job)
        if self.cores is None or policy.wants_gpu or policy.limits.cpuset:
            return policy
        limits = policy.limits.model_copy(update={"cpuset": self.cores})
        return policy.model_copy(update={"limits": limits})

    def standby_for(self, policy, job: dict, data_dir: Path):
        """The slot's Standby (made on the first call, which also starts its first slot ahead)."""
        if self.standby is None:
            from .sandbox.slot import Standby
            self.standby = Standby(policy, image=job["image"], data_dir=data_dir, run_tag=job["run_tag"],
                                   base_dir=self.base)
            self.standby.prepare_soon(self.client)
        return self.standby

    def trial(self, job: dict) -> dict:
        if self.client is None:
            return {**_infra(self.error or f"on Ray node {self.name}: no Docker engine"), "slot": self.name}
        return node_trial(job, slot=self)

    def close(self) -> list[str]:
        """Remove the containers started ahead and the used slots (the head calls this on idle slots, then kills
        every actor); the removal errors."""
        errors = self.standby.close() if self.standby is not None else []
        shutil.rmtree(self.base, ignore_errors=True)
        return errors


def node_prepare(job: dict) -> dict:
    from .sandbox import preflight
    try:
        return {"node": _slot_name(), **_ensure(preflight.connect(), job)}
    except Exception as e:  # noqa: BLE001 - reported per node; the trial path checks again
        return {"node": _slot_name(), "error": _one_line(e)}


def node_cleanup(run_tag: str) -> int:
    """The run's containers and volumes on this node's engine (how many), and its trial and slot dirs in the node
    cache (what a killed slot or task left there)."""
    from .sandbox import cleanup
    removed = cleanup.remove_leftovers(run_tag=run_tag)
    for kind in ("trials", "slots"):
        shutil.rmtree(_cache() / kind / run_tag, ignore_errors=True)
    return removed


def _ensure(client, job: dict) -> dict:
    """{"need": [...]} when the image or data must be shipped; {"error"} on a digest/data mismatch; else
    {"data_dir", "image": present|loaded, "data": cached|shipped}."""
    import docker.errors

    from trainer.shards import manifest_sha256, verify
    report, need = {}, []
    ref, digest = job["image"], job["digest"]
    try:
        have = client.images.get(ref).id
        report["image"] = "present"
    except docker.errors.ImageNotFound:
        have = None
        if job.get("image_ref") is None:
            need.append("image")
        else:
            import ray
            client.images.load(ray.get(job["image_ref"]))        # saved by digest: loads untagged
            if not ref.startswith("sha256:"):
                client.images.get(digest).tag(*ref.rsplit(":", 1))
            have = client.images.get(ref).id
            report["image"] = "loaded"
    if have is not None and have != digest:
        return {"error": f"image digest mismatch on this node: {ref} is {have[:19]}, the run pins {digest[:19]}"}
    data = _cache() / "data" / job["sha"]
    if data.is_dir():
        report["data"] = "cached"
    elif job.get("data_ref") is None:
        need.append("data")
    else:
        import ray
        tmp = data.parent / f".incoming-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(ray.get(job["data_ref"]))) as tar:
                tar.extractall(tmp, filter="data")
            verify(tmp)
            if manifest_sha256(tmp) != job["sha"]:
                return {"error": f"the data shipped from the head does not match the run's manifest {job['sha'][:12]}"}
            for p in [tmp, *tmp.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
            try:
                tmp.rename(data)
            except OSError:                       # another task of this node put it there first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report["data"] = "shipped"
    if need:
        return {"need": need}
    if manifest_sha256(data) != job["sha"]:
        return {"error": f"the node's data cache {data} does not match the run's manifest"}
    return {**report, "data_dir": str(data)}


def _node_policy(job: dict):
    """The job's policy as this node runs it: a GPU trial sees exactly the devices Ray assigned this worker."""
    from .policy import Policy
    policy = Policy.model_validate(job["policy"])
    gpus = _gpu_ids()
    if policy.wants_gpu and gpus:
        policy = policy.model_copy(update={"gpu": gpus})
    return policy


def _cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _gpu_ids() -> list[str]:
    import ray
    return [str(g) for g in ray.get_gpu_ids()]


def _slot_name() -> str:
    import ray
    gpus = _gpu_ids()
    node = f"node-{ray.get_runtime_context().get_node_id()[:6]}"
    return f"{node}/gpu{','.join(gpus)}" if gpus else node


def _infra(error: str) -> dict:
    return {"outcome": asdict(TrialOutcome(status="infra", error=error))}


def _write(path: Path, data: bytes, mode: int) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)
    path.chmod(mode)


def _one_line(e: BaseException) -> str:
    return (" ".join(str(e).split()) or type(e).__name__)[:300]
