"""A real Ray cluster for tests and benchmarks: a head and worker nodes as separate processes on this machine,
inside a network namespace of the caller's own, so every packet stays on loopback
(../shared/notes/ray-on-these-machines.md).

    in_netns([sys.executable, "-m", "tests.raykit", ...])   # from pytest: re-run a driver under `unshare -n`
    with Cluster(workers=2, root=tmp) as cluster: ...        # inside the namespace: ray start x 3, then every
                                                             # process of the namespace killed by pid
Worker i advertises the executor's NODE_RESOURCE, one CPU and one logical GPU, and its own node cache
(AUTORESEARCH_RAY_CACHE = root/node-i), so a test can see where a trial ran and what was shipped there. The head
advertises neither: trials run on the workers only.

The driver (`python -m tests.raykit drive ...`) runs the scenarios of tests/test_ray_executor.py against one
cluster and writes their results as JSON; the test asserts on them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PORT = 6390                                  # the head's GCS port, inside the namespace
OBJECT_STORE_BYTES = 300 << 20               # per node: the tests ship data and a tiny image, not the trial image


def netns_id(pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def kill_netns(ns: str, spare: int | None = None) -> list[int]:
    """SIGKILL every process in network namespace `ns` (but `spare`), by pid; the pids killed."""
    killed = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == spare:
            continue
        try:
            if netns_id(p) == ns:
                os.kill(int(p), signal.SIGKILL)
                killed.append(int(p))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return killed


def loopback_up() -> None:
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    import fcntl
    import socket
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))


def unshare_problem() -> str | None:
    """None when `unshare -n` works here; else why not (the reason a test skips)."""
    try:
        r = subprocess.run(["unshare", "-n", sys.executable, "-c", "import tests.raykit as k; k.loopback_up()"],
                           check=False, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n impossible here: {e}"
    return None if r.returncode == 0 else f"unshare -n impossible here: {r.stderr.strip()[:200]}"


def in_netns(argv: list[str], timeout: float, ns_file: Path) -> subprocess.CompletedProcess:
    """Run argv under `unshare -n` (argv writes its namespace id to ns_file first); afterwards, also on a timeout,
    every process left in that namespace is killed by pid."""
    proc = subprocess.Popen(["unshare", "-n", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n[raykit] driver killed after {timeout:.0f} s"
    finally:
        if ns_file.is_file():
            kill_netns(ns_file.read_text().strip())
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


class Cluster:
    """ray start: a head and `workers` worker nodes, in the current (private) network namespace."""

    def __init__(self, workers: int, root: Path):
        self.root, self.n = Path(root), workers
        self.address = f"127.0.0.1:{PORT}"
        self.workers: list[dict] = []       # {"node_id", "cache"}

    def __enter__(self) -> Cluster:
        loopback_up()
        self.ns = netns_id()
        assert netns_id(os.getppid()) != self.ns, "Cluster must run inside a network namespace of its own (unshare -n)"
        import ray

        from runner.ray_executor import NODE_RESOURCE
        from runner.ray_node import CACHE_ENV
        self.tmp = tempfile.mkdtemp(prefix="rk")      # Ray's sockets: AF_UNIX paths are short
        self._start(["--head", "--port", str(PORT), "--num-cpus", "0", "--num-gpus", "0",
                     "--include-dashboard", "false", "--temp-dir", self.tmp], {})
        for i in range(self.n):
            cache = self.root / f"node-{i}"
            cache.mkdir(parents=True, exist_ok=True)
            self._start(["--address", self.address, "--num-cpus", "1", "--num-gpus", "1",
                         "--resources", json.dumps({NODE_RESOURCE: 1})], {CACHE_ENV: str(cache)})
            self.workers.append({"cache": str(cache)})
        ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
        self._map_nodes()
        return self

    def _start(self, args: list[str], env: dict) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), **env}
        r = subprocess.run(["ray", "start", "--disable-usage-stats", "--object-store-memory",
                            str(OBJECT_STORE_BYTES), *args], check=False, env=env, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args[:2])} failed: {r.stderr[-800:]}")

    def _map_nodes(self) -> None:
        """Each worker's node id: its raylet's environment names its cache."""
        import ray

        from runner.ray_node import CACHE_ENV

        @ray.remote(num_cpus=0)
        def where():
            return ray.get_runtime_context().get_node_id(), os.environ.get(CACHE_ENV)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        for n in ray.nodes():
            if n["Alive"] and n["Resources"].get("GPU"):
                nid, cache = ray.get(where.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote())
                for w in self.workers:
                    if w["cache"] == cache:
                        w["node_id"] = nid

    def raylet_pid(self, i: int) -> int:
        """The pid of worker i's raylet (its environment names its cache)."""
        from runner.ray_node import CACHE_ENV
        mark = f"{CACHE_ENV}={self.workers[i]['cache']}".encode()
        for p in os.listdir("/proc"):
            try:
                if (p.isdigit() and netns_id(p) == self.ns and b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes()
                        .split(b"\0")[0] and mark in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")):
                    return int(p)
            except OSError:
                pass
        raise LookupError(f"no raylet for worker {i}")

    def __exit__(self, *exc) -> None:
        import ray
        try:
            ray.shutdown()
        finally:
            kill_netns(self.ns, spare=os.getpid())
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the test driver

def ray_policy(max_steps: int = 10):
    """The tiny policy on one core (a worker node holds one such trial), a few steps."""
    from tests.sandbox_kit import policy
    return policy(limits={"cpus": 1}, train={"max_steps": max_steps})


def drive(args) -> dict:
    """The scenarios of tests/test_ray_executor.py, against one cluster; results as a JSON-able dict."""
    import docker

    from runner.executor import TrialSpec
    from runner.ray_executor import RayExecutor
    res: dict = {}
    pol = ray_policy(args.max_steps)
    client = docker.from_env()
    work = Path(args.root) / "head"

    def spec(trial_id, image, cand=args.candidate):
        return TrialSpec(run_tag=args.run_tag, trial_id=trial_id, candidate_dir=Path(cand), data_dir=Path(args.data),
                         policy=pol, image=image, seed=1337, work_dir=work / trial_id)

    def brief(out, spec_):
        wd = Path(spec_.work_dir)
        return {"status": out.status, "val_bpb": out.val_bpb, "slot": out.slot, "attempts": out.attempts,
                "error": out.error, "files": sorted(p.name for p in wd.iterdir()) if wd.is_dir() else [],
                "timings": out.timings}

    def started(policy=pol, image=args.image):
        ex = RayExecutor(cluster.address)
        ex.start(policy, image=image, data_dir=Path(args.data), run_tag=args.run_tag, work_dir=work)
        return ex

    def at_once(ex, specs, lines=None):
        """Run the specs at once; lines[i] gets (monotonic time, line) of trial i's log as run() hands them over,
        and a last (time, None) as run() returns."""
        outs, lines = [None] * len(specs), lines or [[] for _ in specs]

        def one(i):
            outs[i] = ex.run(specs[i], lambda text: lines[i].append((time.monotonic(), text)))
            lines[i].append((time.monotonic(), None))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(specs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return outs

    with Cluster(workers=2, root=Path(args.root)) as cluster:
        res["workers"] = cluster.workers
        # `autoresearch doctor` on this cluster: a trial of one core fits (on both workers), one of four does not
        from dataclasses import asdict

        from runner.doctor import check_cluster
        on_ray = pol.model_copy(update={"executor": pol.executor.model_copy(update={"kind": "ray",
                                                                                    "address": cluster.address})})
        big = on_ray.model_copy(update={"limits": on_ray.limits.model_copy(update={"cpus": 4.0})})
        res["doctor"] = [asdict(check_cluster(on_ray)), asdict(check_cluster(big))]
        # two trials at once: one per worker, each in its run's slot (an actor holding the worker's CPU), whose
        # containers were started ahead
        t = time.monotonic()
        ex = started()
        res["start"] = {"slots": ex.slots, "prepared": ex.prepared, "s": round(time.monotonic() - t, 2)}
        specs, lines = [spec(f"pair-{i}", args.image) for i in range(2)], [[], []]
        outs = at_once(ex, specs, lines)
        res["pair"] = [{**brief(o, s), "lines": len(ls) - 1, "returned_after_first_line_s": ls[-1][0] - ls[0][0],
                        "steps": [int(t.split()[0][5:]) for _, t in ls[:-1] if t.startswith("step=")]}
                       for o, s, ls in zip(outs, specs, lines)]
        ex.close()
        res["closed_left"] = _left(client, args.run_tag, timeout=30)

        # two GPU trials at once: one logical GPU each (the node's policy names the GPU Ray assigned; this
        # machine's engine has no nvidia runtime, so each ends infra at the node's GPU check)
        from tests.sandbox_kit import policy
        gpu_pol = policy(flavour="cuda", gpu="all", limits={"cpus": 1}, train={"max_steps": args.max_steps})
        gspecs = [spec(f"gpu-{i}", args.image) for i in range(2)]
        for g in gspecs:
            g.policy = gpu_pol
        gx = started(gpu_pol)
        res["gpu"] = [brief(o, g) for o, g in zip(at_once(gx, gspecs), gspecs)]
        gx.close()

        # the image: shipped through the object store to a node that lacks the run's tag
        ship = RayExecutor(cluster.address)
        first = ship.prepare_nodes(args.ship_tag, Path(args.data))
        client.images.remove(args.ship_tag)            # untags only: the image keeps its other tag
        res["ship"] = {"first": first, "again": ship.prepare_nodes(args.ship_tag, Path(args.data)),
                       "id_after": client.images.get(args.ship_tag).id}
        ship.close()

        # a digest mismatch: the run pinned the trial image under a tag that now names another image
        mis = started(image=args.mismatch_tag)
        client.images.get(args.ship_tag).tag(*args.mismatch_tag.rsplit(":", 1))   # moves the tag
        res["mismatch"] = brief(mis.run(spec("mismatch", args.mismatch_tag)), spec("mismatch", args.mismatch_tag))
        mis.close()

        # the research loop itself on the cluster (executor: ray in its policy): a baseline and two candidates
        res["loop"] = _loop_on(cluster.address, args)

        # the head stops mid-trial (a signal unwinds the loop, which closes its executor): the slots are killed,
        # run() returns at once and every container of the run goes (before remove_leftovers below looks)
        stop = started()
        s = spec("stopped", args.image)
        box = []
        th = threading.Thread(target=lambda: box.append(stop.run(s)))
        th.start()
        seen = _training(client, args.run_tag) is not None
        t = time.monotonic()
        stop.close()
        th.join(timeout=120)
        returned_s = time.monotonic() - t
        res["stopped"] = {**(brief(box[0], s) if box else {"status": None}), "training_seen": seen,
                          "returned_s": round(returned_s, 2), "gone_s": _gone(client, args.run_tag, t, timeout=120)}

        # the head killed (-9) mid-trial: Ray ends the dead driver's slots, and their watchdogs every container
        head = subprocess.Popen([sys.executable, "-c", HEAD, cluster.address, args.image, args.data, args.candidate,
                                 args.run_tag, str(args.max_steps), str(work / "head-killed")], cwd=REPO)
        seen = _training(client, args.run_tag) is not None
        head.kill()
        t = time.monotonic()
        head.wait()
        res["head_killed"] = {"training_seen": seen, "gone_s": _gone(client, args.run_tag, t, timeout=120)}

        # a worker killed mid-trial: the trial runs again in the run's slot on the other one and comes back once
        killed: dict = {}
        ex = started()
        s = spec("killed", args.image)
        box = []
        th = threading.Thread(target=lambda: box.append(ex.run(s)))
        th.start()
        killed.update(_kill_when_training(cluster, client, args.run_tag, "killed"))
        th.join()
        res["killed"] = {**brief(box[0], s), **killed}
        ex.close()
        survivor = next(w for w in cluster.workers if w["node_id"] != killed.get("killed_node"))
        planted = Path(survivor["cache"], "slots", args.run_tag, "dead")     # as a killed slot leaves it
        planted.mkdir(parents=True)
        res["leftovers_removed"] = RayExecutor(cluster.address).remove_leftovers(args.run_tag)
        res["planted_dir_left"] = planted.exists()
    return res


def _loop_on(address: str, args) -> dict:
    """A loop run with the ray executor: per trial its slot, whether that slot was started ahead, its train.log's
    size; and the containers of the run left after it."""
    import docker

    from runner.ledger import Ledger
    from runner.loop import Loop
    from runner.proposers.mutate import MutateProposer
    from runner.runs import RunConfig
    from runner.workspace import init_repo
    pol = ray_policy(args.max_steps)
    pol = pol.model_copy(update={"executor": pol.executor.model_copy(update={"kind": "ray", "address": address})})
    repo, tag = Path(args.root) / "loop-repo", f"{args.run_tag}-loop"
    init_repo(repo, {"train.py": Path(args.candidate, "train.py").read_text(), "program.md": "Lower val_bpb.\n",
                     ".gitignore": "runs/\n"})
    Loop(RunConfig(repo=repo, tag=tag, data_dir=Path(args.data), policy=pol, max_trials=2, image=args.image),
         proposer=MutateProposer()).run()
    trials = [{"trial": r.trial, "status": r.status, "slot": r.slot,
               "ahead": bool(r.trial_timings.get("slot_prestarted")),
               "log_bytes": sum(f.stat().st_size for f in (repo / "runs" / tag / "trials" / str(r.trial))
                                .rglob("train.log"))}
              for r in Ledger(repo / "runs" / tag).records()]
    return {"trials": trials, "left": _left(docker.from_env(), tag, timeout=30)}


# a head of its own (another Ray driver): start a run's slots and train one trial, until it is killed
HEAD = """
import sys
from pathlib import Path
from runner.executor import TrialSpec
from runner.ray_executor import RayExecutor
from tests.raykit import ray_policy
address, image, data, cand, tag, steps, work = sys.argv[1:]
pol = ray_policy(int(steps))
ex = RayExecutor(address)
ex.start(pol, image=image, data_dir=Path(data), run_tag=tag, work_dir=Path(work))
ex.run(TrialSpec(run_tag=tag, trial_id="head-killed", candidate_dir=Path(cand), data_dir=Path(data), policy=pol,
                 image=image, seed=1337, work_dir=Path(work)))
"""


def _left(client, run_tag: str, timeout: float) -> list[str]:
    """The names of the run's containers still there after up to `timeout` s."""
    from runner.sandbox.spec import LABEL_RUN
    deadline = time.monotonic() + timeout
    while (left := client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_RUN}={run_tag}"})) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    return [c.id[:12] for c in left]


def _training(client, run_tag: str, timeout: float = 180):
    """The run's running train container once train.py runs in it (None after `timeout` s). The scenarios that
    look for it run one trial at a time; a slot started ahead carries no trial id, only the run's tag."""
    import docker.errors

    from runner.sandbox.spec import LABEL_ROLE, LABEL_RUN
    from trainer.contract import LAUNCHED_LINE
    labels = {"label": [f"{LABEL_RUN}={run_tag}", f"{LABEL_ROLE}=train"]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in client.containers.list(sparse=True, filters=labels):     # sparse: no inspect of a dying one
            with contextlib.suppress(docker.errors.NotFound):
                if LAUNCHED_LINE.encode() in c.logs():
                    return c
        time.sleep(0.2)
    return None


def _gone(client, run_tag: str, since: float, timeout: float) -> float | None:
    """Seconds from `since` until no container of the run is left (None: some still there after `timeout`)."""
    from runner.sandbox.spec import LABEL_RUN
    while time.monotonic() < since + timeout:
        # sparse: no inspect per container (one being removed meanwhile would raise NotFound)
        if not client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_RUN}={run_tag}"}):
            return round(time.monotonic() - since, 2)
        time.sleep(0.2)
    return None


def _kill_when_training(cluster: Cluster, client, run_tag: str, trial_id: str, timeout: float = 180) -> dict:
    """Wait until the trial's train container runs, then SIGKILL the raylet of the worker running it."""
    if (train := _training(client, run_tag, timeout)) is not None:
        train.reload()
        for i, w in enumerate(cluster.workers):
            if any(Path(w["cache"], "trials", run_tag).glob(f"{trial_id}-*")):
                os.kill(cluster.raylet_pid(i), signal.SIGKILL)
                return {"killed_worker": i, "killed_node": w["node_id"],
                        "killed_cpuset": train.attrs["HostConfig"].get("CpusetCpus")}
    return {"killed_worker": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.raykit")
    ap.add_argument("action", choices=["drive"])
    for name in ("root", "image", "data", "candidate", "run-tag", "ship-tag", "mismatch-tag", "out", "ns-file"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--max-steps", type=int, default=10)
    args = ap.parse_args(argv)
    Path(args.ns_file).write_text(netns_id())
    res = drive(args)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
