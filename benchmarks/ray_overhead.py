"""Benchmark: what the Ray executor adds per trial. The same tiny trials (the real train.py, tiny policy on one core,
fixed steps and seed) through the Docker executor as the loop runs it (a slot started ahead), the Docker executor
without that (each trial starts its slot), and the Ray executor on a real local cluster (a head and one worker node,
in a network namespace of this benchmark's own: tests/raykit.py), whose slot on the node starts the next trial's
containers ahead as the loop's Docker executor does. Rounds are interleaved so
that load drift hits every executor alike. Prints a markdown table (and --json writes the raw numbers).

    python benchmarks/ray_overhead.py [--trials 4] [--max-steps 10] [--json out.json]

Overhead of Ray (goal: under 1 s a trial) = the head's wall time of a trial - the node's run_trial time of the same
trial (task submission, scheduling, the result's trip back, the head's writes); and, noisier, the mean trial time
against each Docker executor's. The first Ray trial (worker start, function export) is reported apart. Needs
`pip install .[ray]`, a Docker engine and `unshare -n` (it re-runs itself under it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_data import prepare_synthetic  # noqa: E402
from runner.executor import TrialSpec  # noqa: E402
from tests.raykit import Cluster, in_netns, netns_id, ray_policy  # noqa: E402


def _trial(executor, name: str, i: int, ctx: dict) -> dict:
    spec = TrialSpec(run_tag=ctx["run_tag"], trial_id=f"{name}-{i}", candidate_dir=ctx["candidate"],
                     data_dir=ctx["data"], policy=ctx["policy"], image=ctx["image"], seed=1337,
                     work_dir=ctx["root"] / "work" / f"{name}-{i}")
    t0 = time.monotonic()
    out = executor.run(spec)
    wall = time.monotonic() - t0
    if out.status != "ok":
        raise SystemExit(f"{name} trial {i} ended {out.status}: {out.error}")
    t = out.timings
    return {"wall_s": wall, "node_s": t.get("node_total_s"), "slot_s": t.get("slot_s"),
            "train_s": t.get("train_host_s"), "eval_s": t.get("eval_host_s"), "val_bpb": out.val_bpb,
            "slot": out.slot, "ahead": bool(t.get("slot_prestarted"))}


def bench(args) -> dict:
    from runner.ray_executor import RayExecutor
    from runner.sandbox import images
    from runner.sandbox.executor import DockerExecutor
    root = Path(tempfile.mkdtemp(prefix="rayb"))
    cand = root / "candidate"
    cand.mkdir()
    (cand / "train.py").write_bytes((REPO / "trainer" / "train.py").read_bytes())
    ctx = {"root": root, "candidate": cand, "policy": ray_policy(args.max_steps), "run_tag": f"bench-ray-{os.getpid()}",
           "data": prepare_synthetic(root, "--train-docs", "600", "--val-docs", "12", "--vocab-size", "512"),
           "image": images.build("cpu", airgapped=None).tag}
    runs: dict = {"docker_ahead": [], "docker": [], "ray": []}
    with Cluster(workers=1, root=root / "cluster") as cluster:
        ahead, plain, ray = DockerExecutor(), DockerExecutor(), RayExecutor(cluster.address)
        try:
            ahead.start(ctx["policy"], image=ctx["image"], data_dir=ctx["data"], run_tag=ctx["run_tag"],
                        work_dir=root / "work")
            t0 = time.monotonic()
            ray.start(ctx["policy"], image=ctx["image"], data_dir=ctx["data"], run_tag=ctx["run_tag"],
                      work_dir=root / "work")
            start_s = time.monotonic() - t0
            first = _trial(ray, "ray-first", 0, ctx)
            for i in range(args.trials):
                for name, ex in (("docker_ahead", ahead), ("docker", plain), ("ray", ray)):
                    runs[name].append(_trial(ex, name, i, ctx))
                    print(f"{name} {i}: {runs[name][-1]['wall_s']:.2f} s", file=sys.stderr, flush=True)
        finally:
            for ex in (ahead, plain, ray):
                ex.close()
            DockerExecutor().remove_leftovers(ctx["run_tag"])
            shutil.rmtree(root, ignore_errors=True)
    return {"start_s": start_s, "first": first, "runs": runs, "trials": args.trials, "max_steps": args.max_steps}


def table(res: dict) -> str:
    def col(name, key):
        vals = [r[key] for r in res["runs"][name] if r.get(key) is not None]
        return statistics.mean(vals) if vals else float("nan")
    ray_over = [r["wall_s"] - r["node_s"] for r in res["runs"]["ray"]]
    lines = ["| executor | trials | trial wall s (mean) | slot start s | train s | eval s | slot started ahead |",
             "|---|---|---|---|---|---|---|"]
    for name in ("docker_ahead", "docker", "ray"):
        lines.append(f"| {name} | {len(res['runs'][name])} | {col(name, 'wall_s'):.2f} | {col(name, 'slot_s'):.2f} | "
                     f"{col(name, 'train_s'):.2f} | {col(name, 'eval_s'):.2f} | "
                     f"{sum(r['ahead'] for r in res['runs'][name])} of {len(res['runs'][name])} |")
    f = res["first"]
    lines += ["", f"Ray start() (connect, pin, ship data to 1 node): {res['start_s']:.2f} s; first Ray trial: "
              f"{f['wall_s']:.2f} s, of it Ray's own {f['wall_s'] - f['node_s']:.2f} s",
              f"Ray's own per trial (head wall - node run_trial): mean {statistics.mean(ray_over):.3f} s, "
              f"max {max(ray_over):.3f} s",
              f"Ray - docker (no slot ahead): {col('ray', 'wall_s') - col('docker', 'wall_s'):+.2f} s; "
              f"Ray - docker_ahead (as the loop runs it): {col('ray', 'wall_s') - col('docker_ahead', 'wall_s'):+.2f} s",
              f"val_bpb equal everywhere: {len({r['val_bpb'] for v in res['runs'].values() for r in v}) == 1}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4, help="trials per executor")
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--ns-file", type=Path, help=argparse.SUPPRESS)   # set when re-run under unshare -n
    args = ap.parse_args(argv)
    if args.ns_file is None:                 # re-run in a network namespace of our own, then clean it up
        with tempfile.TemporaryDirectory(prefix="raybn") as d:
            ns = Path(d) / "netns"
            proc = in_netns([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                             "--ns-file", str(ns)], 3600, ns)
            print(proc.stdout, end="")
            return proc.returncode
    args.ns_file.write_text(netns_id())
    res = bench(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
