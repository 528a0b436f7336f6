"""The Ray executor: each trial is ONE Ray task on a node with a Docker engine, and on that node the SAME hardened
train and eval containers as the Docker executor (runner.sandbox.trial.run_trial). TRUSTED CODE (head and nodes).

Ray schedules; the sandbox isolates. Ray itself isolates nothing: a task is a plain process with the node's
privileges (and its Docker socket), so the candidate never runs in it: its train.py travels as bytes and only
ever executes inside the node's train container; the score only ever comes from the node's eval container.

The cluster (`executor: {kind: ray, address: host:port}`): every node that may run trials has a Docker engine and
this package (`pip install .[ray]`, the head's version), and advertises the custom resource NODE_RESOURCE:
`ray start --address HEAD:PORT --resources '{"autoresearch_docker": 1}'`. The head, the process running the loop,
keeps git, the ledger and the proposer, the trial image in its own engine (`autoresearch build`) and the data.

    executor = RayExecutor("10.0.0.1:6379")
    executor.start(policy, image=tag, data_dir=data, run_tag=tag, work_dir=run_dir)   # pins digest + data sha
    outcome = executor.run(spec, on_line, on_phase)          # thread-safe; `executor.slots` of them at once

Contracts
- One trial asks for {num_cpus: limits.cpus, memory: limits.memory, NODE_RESOURCE: 0.001} plus num_gpus: 1 when
  the policy wants GPUs; on the node the trial's container sees exactly the GPU Ray assigned (CUDA_VISIBLE_DEVICES).
  `slots`: policy.slots when above 1 (Ray queues what does not fit), else the trials the cluster's nodes hold at
  start() (per node, the fewest whole trials any resource allows; summed).
- The image: start() pins the digest (sha256:...) the head's engine gives the run's tag. Before a trial a node
  checks that the tag (or id) names that digest. Missing: the head ships `docker save` of the digest through the
  object store (once per run), the node loads it, tags it, checks again. A different digest under the tag is
  status `infra`, never a silent run on other code.
- The data: a node keeps a cache dir per manifest sha256 ($AUTORESEARCH_RAY_CACHE, default DEFAULT_CACHE). Missing:
  the head ships a tar of the data dir, the node extracts it, verifies every file against the manifest and the
  manifest against the run's sha, and only then renames it into place; so a cache dir that exists is verified.
- Slots: start() asks Ray for `slots` NodeSlot actors (runner/ray_slots.py), each holding one trial's resources
  for the run; a trial runs in a free one, which keeps the next trial's containers started ahead on its node as
  the Docker executor does on one host (the slot is bound to that node). A trial that asks for other resources
  than the run's (or any trial before start()) is one plain Ray task, whose node starts its containers then.
- What comes back: the TrialOutcome (outcome.slot = "node-<6 hex of the node id>[/gpuN or /cpuK]"), result.json, the
  model when spec.keep_model, and the train log's lines. The head writes train.py, result.json (and model.pt2) into
  spec.work_dir as the Docker executor does. on_phase and on_line hear the phases and lines of a trial in a slot
  as they come (the head polls the slot every ray_slots.LIVE_S), each once and in order; a plain task's when it
  returns.
- close() (the loop's unwind on a stop signal) lets idle slots remove their containers, kills every slot actor
  and cancels every trial task in flight (ray.cancel, force: the task's worker process is killed); each run() in
  flight returns `infra` at once, its containers removed by their slot's watchdog as for a lost node, and no run()
  submits anything after close().
- A node lost mid-trial (Ray: node died, worker or actor died, object lost) is an `infra` attempt; the trial is
  submitted again (to another free slot, or a task Ray places on a live node) up to MAX_ATTEMPTS, and the one
  outcome that comes back carries `attempts`. A lost slot is replaced by a new actor wherever Ray finds room.
  The lost task's containers are removed by their slot's watchdog (runner/sandbox/watchdog.py) when the task's
  process is gone, at the latest at their deadline; remove_leftovers removes a dead run's on every live node.
- Without Ray installed this module imports; RayExecutor() raises a one-line UserError naming the extra.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

from .errors import UserError
from .executor import OnLine, OnPhase, TrialOutcome, TrialSpec
from .ray_node import _infra, _one_line, _write, node_cleanup, node_prepare, node_trial
from .ray_slots import Live, SlotPool, follow

NODE_RESOURCE = "autoresearch_docker"      # custom resource a node advertises when it can run trials
NODE_SHARE = 0.001                         # of NODE_RESOURCE per trial: up to 1000 trials per node
MAX_ATTEMPTS = 3                           # a trial's tries when nodes are lost under it
SLOTS_PLACED_S = 60                        # start() waits this long for Ray to place the run's slots (a full
                                           # cluster: the trials wait for the slots placed later)
REACH_S = 5.0                              # the cluster's address must accept a connection within this
NODE_ALLOWANCE_S = 600                     # beyond train deadline + eval timeout: slot start, image load, copies
_LOST = ("NodeDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError",
         "ObjectFetchTimedOutError", "ReferenceCountingAssertionError", "RaySystemError", "ActorDiedError",
         "RayActorError", "ActorUnavailableError")                                          # attempt lost, retry


_CONNECT = threading.Lock()                # ray.init is once per process


def import_ray():
    """The ray module, or a one-line UserError naming the optional extra."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install .[ray]") from None
    return ray


def trial_resources(policy) -> dict:
    """What one trial asks of Ray (num_gpus only when the policy wants GPUs)."""
    res = {"num_cpus": float(policy.limits.cpus), "memory": _bytes(policy.limits.memory),
           "resources": {NODE_RESOURCE: NODE_SHARE}}
    if policy.wants_gpu:
        res["num_gpus"] = 1
    return res


def node_capacity(node_resources: dict, want: dict) -> int:
    """Whole trials of `want` (trial_resources) that a node with these total resources holds at once."""
    need = {"CPU": want["num_cpus"], "GPU": want.get("num_gpus", 0), "memory": want["memory"], **want["resources"]}
    fits = [node_resources.get(k, 0.0) / v for k, v in need.items() if v]
    return int(min(fits) + 1e-9) if fits else 0


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None):
        self.ray = import_ray()
        self.address = address
        self.slots = 1
        self.prepared: list[dict] = []             # per node, what the last prepare_nodes found or shipped
        self._lock = threading.Lock()
        self._digests: dict[str, str] = {}         # image tag or id -> the digest this run pins
        self._shas: dict[str, str] = {}            # head data dir -> its manifest sha256
        self._refs: dict[str, object] = {}         # digest or sha -> ObjectRef of what was shipped
        self._remote: dict[str, object] = {}
        self._in_flight: set = set()               # ObjectRefs of the trial tasks running now
        self._pool = None                          # the run's slots (runner.ray_slots.SlotPool), after start()
        self._closed = False
        self._owns_ray = False

    # ----------------------------------------------------------------- the Executor protocol
    def resolve_image(self, policy) -> str:
        from .sandbox.executor import DockerExecutor
        return DockerExecutor().resolve_image(policy)     # the head's engine holds the image the run pins

    def remove_leftovers(self, run_tag: str) -> int:
        self._connect()
        refs = [self._task("cleanup", node_id=n["NodeID"]).remote(run_tag) for n in self.docker_nodes()]
        return sum(n for n in self._gather(refs) if isinstance(n, int))

    def start(self, policy, *, image: str, data_dir: Path, run_tag: str, work_dir: Path) -> None:
        self._connect()
        want, nodes = trial_resources(policy), self.docker_nodes()
        if not nodes:
            raise UserError(f"no live node of the Ray cluster at {self.address or 'auto'} advertises {NODE_RESOURCE}; "
                            f"start nodes with `ray start --resources '{{\"{NODE_RESOURCE}\": 1}}'` (docs/scaling.md)")
        capacity = sum(node_capacity(n["Resources"], want) for n in nodes)
        if capacity == 0:
            raise UserError(f"no node of the Ray cluster can hold one trial ({want}); lower limits.cpus/memory")
        self.slots = policy.slots if policy.slots > 1 else capacity
        self.prepared = self.prepare_nodes(image, Path(data_dir))
        if self._pool is not None:
            self._pool.close()
        job = {**self._pins(image, Path(data_dir)), "run_tag": run_tag, "policy": policy.model_dump()}
        self._pool = SlotPool(self.ray, job, self.slots, want)
        placed = self._pool.wait_placed(SLOTS_PLACED_S, min(self.slots, capacity))   # the first trials spread
        if placed < self.slots:
            import sys
            print(f"autoresearch: {placed} of {self.slots} Ray slots are placed (the cluster's nodes hold "
                  f"{capacity} trials of {want}, and other work may hold some); the others take trials once Ray "
                  "places them", file=sys.stderr, flush=True)

    def run(self, spec: TrialSpec, on_line: OnLine | None = None, on_phase: OnPhase | None = None) -> TrialOutcome:
        from .sandbox.trial import MAX_TRAIN_PY_BYTES
        t0, ray = time.monotonic(), self.ray
        self._connect()
        work = Path(spec.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        train_py = _read_regular(Path(spec.candidate_dir) / "train.py", MAX_TRAIN_PY_BYTES)
        job = {**self._pins(spec.image, Path(spec.data_dir)), "run_tag": spec.run_tag, "trial_id": spec.trial_id,
               "policy": spec.policy.model_dump(), "seed": spec.seed, "keep_model": spec.keep_model,
               "every_batch_below": spec.every_batch_below, "train_py": train_py}
        wait_s = spec.policy.train.deadline_seconds + spec.policy.eval.timeout_seconds + NODE_ALLOWANCE_S
        pool = self._pool if self._pool is not None and self._pool.resources == trial_resources(spec.policy) else None
        lost: list[str] = []
        answer, live = None, Live(on_line, on_phase)
        while answer is None and len(lost) < MAX_ATTEMPTS:
            try:
                answer = (self._on_slot(pool, job, wait_s, live) if pool else
                          self._call("trial", job, spec.policy, wait_s))
            except ray.exceptions.GetTimeoutError:
                answer = _infra(f"no answer from the Ray node within {wait_s:.0f} s; the task was cancelled")
            except ray.exceptions.RayError as e:
                if self._closed:
                    answer = _infra(f"the run stopped: the executor closed and cancelled the Ray task ({_one_line(e)})")
                elif type(e).__name__ not in _LOST:
                    answer = _infra(f"the Ray task failed: {_one_line(e)}")
                else:
                    lost.append(_one_line(e))
        if answer is None:
            answer = _infra(f"{len(lost)} Ray nodes lost under the trial; last: {lost[-1]}")
        out = TrialOutcome(**answer["outcome"])
        out.attempts = len(lost) + 1 if len(lost) < MAX_ATTEMPTS else len(lost)
        out.slot = answer.get("slot", "")
        out.timings["node_total_s"] = out.timings.get("total_s")
        if train_py is not None:
            _write(work / "train.py", train_py, 0o444)
        for name, data in (("result.json", answer.get("result_json")), ("model.pt2", answer.get("model"))):
            if data is not None:
                _write(work / name, data, 0o644)
        live.feed(answer, whole=True)                  # what the polls did not hand over yet (all of a task's)
        out.timings["total_s"] = round(time.monotonic() - t0, 3)
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            running, self._in_flight = list(self._in_flight), set()
            self._refs.clear()
            self._remote.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for ref in running:
            try:
                self.ray.cancel(ref, force=True)       # kills the task's worker: its slot's watchdog removes the rest
            except Exception:  # noqa: BLE001 - already finished, or the cluster is gone: nothing left to cancel
                pass
        if self._owns_ray:
            self._owns_ray = False
            self.ray.shutdown()

    # ----------------------------------------------------------------- head side
    def docker_nodes(self) -> list[dict]:
        """The live nodes that advertise NODE_RESOURCE (ray.nodes() entries); connects first (UserError: no
        cluster there)."""
        self._connect()
        return [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(NODE_RESOURCE)]

    def prepare_nodes(self, image: str, data_dir: Path) -> list[dict]:
        """Pin the image's digest and the data's sha, and make every live node hold both (shipping what is missing);
        per node {"node", "image": present|loaded, "data": cached|shipped, "error"}. A node that joins later is
        prepared by its first trial."""
        job = self._pins(image, data_dir)
        nodes = [n["NodeID"] for n in self.docker_nodes()]
        reports = self._gather([self._task("prepare", node_id=n).remote(job) for n in nodes])
        again = [i for i, r in enumerate(reports) if isinstance(r, dict) and r.get("need")]
        if again:
            job = self._ship(job, {x for i in again for x in reports[i]["need"]})
            redo = self._gather([self._task("prepare", node_id=nodes[i]).remote(job) for i in again])
            for i, r in zip(again, redo):
                reports[i] = r
        return [r if isinstance(r, dict) else {"node": n[:6], "error": str(r)} for n, r in zip(nodes, reports)]

    def _connect(self) -> None:
        ray = self.ray
        with _CONNECT:
            if ray.is_initialized():
                return
            if self.address and self.address != "auto":
                _reachable(self.address)      # ray.init retries an address nobody listens on for minutes
            try:
                ray.init(address=self.address or "auto", log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot reach the Ray cluster at {self.address or 'auto'}: {_one_line(e)}") from None
            self._owns_ray = True

    def _pins(self, image: str, data_dir: Path) -> dict:
        """The digest pinned for `image` and the sha of `data_dir` (resolved once, on the head)."""
        import docker.errors

        from trainer.shards import DataError, manifest_sha256

        from .sandbox import preflight
        with self._lock:
            if image not in self._digests:
                try:
                    self._digests[image] = preflight.connect().images.get(image).id
                except docker.errors.ImageNotFound:
                    raise UserError(f"trial image {image} is not in the head's Docker engine; run `autoresearch "
                                    "build` on the head") from None
            key = str(Path(data_dir).resolve())
            if key not in self._shas:
                try:
                    self._shas[key] = manifest_sha256(data_dir)
                except DataError as e:
                    raise UserError(str(e)) from None
            digest, sha = self._digests[image], self._shas[key]
            return {"image": image, "digest": digest, "sha": sha, "data_dir": key,
                    "image_ref": self._refs.get(digest), "data_ref": self._refs.get(sha)}

    def _ship(self, job: dict, need: set) -> dict:
        """Put the missing image tarball / data tar into the object store (once per run) and refer to it."""
        from .sandbox import preflight
        with self._lock:
            if "image" in need and job["digest"] not in self._refs:
                tarball = b"".join(preflight.connect().images.get(job["digest"]).save(named=False))
                self._refs[job["digest"]] = self.ray.put(tarball)
            if "data" in need and job["sha"] not in self._refs:
                self._refs[job["sha"]] = self.ray.put(_tar_dir(Path(job["data_dir"])))
            return {**job, "image_ref": self._refs.get(job["digest"]), "data_ref": self._refs.get(job["sha"])}

    def _call(self, kind: str, job: dict, policy, wait_s: float) -> dict:
        """One attempt: the task, and once more with the image/data shipped if the node lacked them."""
        for _ in range(2):
            with self._lock:
                if self._closed:
                    return _infra("the run stopped: the executor was closed before the trial started")
                ref = self._task(kind, locked=True, **trial_resources(policy)).remote(job)
                self._in_flight.add(ref)
            try:
                answer = self.ray.get(ref, timeout=wait_s)
            except self.ray.exceptions.GetTimeoutError:
                self.ray.cancel(ref, force=True)
                raise
            finally:
                with self._lock:
                    self._in_flight.discard(ref)
            if not answer.get("need"):
                return answer
            job = self._ship(job, set(answer["need"]))
        return _infra(f"node {answer.get('slot')} still lacks {answer['need']} after shipping")

    def _on_slot(self, pool, job: dict, wait_s: float, live: Live) -> dict:
        """One attempt in a free slot of the run (and once more with the image/data shipped if its node lacked
        them), its log lines and phases handed to `live` as they come (ray_slots.follow). A slot that dies
        under it (a lost node) or does not answer is replaced, and the error raised."""
        actor = pool.take(wait_s)
        if actor is None:
            return _infra("the run stopped: the executor closed before the trial started" if pool.closed else
                          f"no slot of the Ray cluster came free within {wait_s:.0f} s")
        try:
            for _ in range(2):
                try:
                    answer = follow(self.ray, actor, actor.trial.remote(job), job["trial_id"], wait_s, live)
                except Exception:
                    pool.lose(actor)
                    actor = None
                    raise
                if not answer.get("need"):
                    return answer
                job = self._ship(job, set(answer["need"]))
            return _infra(f"node {answer.get('slot')} still lacks {answer['need']} after shipping")
        finally:
            if actor is not None:
                pool.give_back(actor)

    def _task(self, kind: str, node_id: str | None = None, locked: bool = False, **options):
        """The remote function (registered once) with per-call options; node_id pins a zero-CPU helper task.
        locked: the caller holds self._lock."""
        with contextlib.nullcontext() if locked else self._lock:
            if kind not in self._remote:
                fn = {"trial": node_trial, "prepare": node_prepare, "cleanup": node_cleanup}[kind]
                self._remote[kind] = self.ray.remote(max_retries=0)(fn)
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            options = {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
        return self._remote[kind].options(**options)

    def _gather(self, refs: list) -> list:
        out = []
        for ref in refs:
            try:
                out.append(self.ray.get(ref, timeout=NODE_ALLOWANCE_S))
            except self.ray.exceptions.RayError as e:
                out.append(_one_line(e))
        return out


# --------------------------------------------------------------------------- helpers

def _reachable(address: str, timeout_s: float = REACH_S) -> None:
    """A one-line UserError unless something accepts a TCP connection at the cluster's address (host:port)."""
    import socket
    host, _, port = address.split("://")[-1].rpartition(":")          # also ray://HOST:PORT (Ray Client)
    fix = "start it (`ray start --head --port PORT`) or fix executor.address in the policy"
    if not host or not port.isdigit():
        raise UserError(f"executor.address {address!r} is not HOST:PORT; {fix}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {e.strerror or _one_line(e)}; {fix}") from None


def _read_regular(path: Path, cap: int) -> bytes | None:
    """The file's bytes if it is a regular file (not a link); None otherwise. Over `cap`: the first cap+1 bytes
    (the node's run_trial refuses it as it would locally)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            return f.read(cap + 1)
    except FileNotFoundError:
        return None


def _tar_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("train", "val", "tokenizer", "manifest.json"):
            tar.add(root / name, arcname=name)
    return buf.getvalue()


def _bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = size.strip().lower()
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(float(s))
