"""Benchmark: the CPU one trial's slot needs before its containers wait, on an idle machine.

A run starts the next trial's slot (runner/sandbox/slot.py: a holder, a train and an eval container) while the
current trial exports and is scored, so that the slot's own work stays off the critical path. That only works
as far as the machine has idle CPU then. This measures the slot's side of that budget, per round:

    open       open_slot as a run calls it: wall seconds, the host's CPU seconds meanwhile (all processes, from
               /proc/stat, less what the new containers used already) and the engine's share of it (dockerd,
               containerd, its shims and runc)
    launcher   the train container's CPU seconds until it waits for train.py (torch, torch._dynamo, ...)
    evaluator  the eval container's CPU seconds until it waits for the model (torch, the data, the warm-up)
    remove     Slot.remove: wall seconds, host CPU seconds, the engine's share

A container counts as waiting once it uses less than 0.05 CPU-s in 0.5 s (both poll for their input every
20 ms). Container CPU comes from the kernel's cgroup accounting (cgroup v1 `cpuacct.usage` or v2 `cpu.stat`).

    python benchmarks/slot_cpu.py [--rounds 4] [--data DIR]

Needs the Docker engine and the trial image (built here if missing). Run it alone on an idle machine: the host
CPU columns count every process.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import prepare_synthetic  # noqa: E402
from runner.sandbox import images  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.sandbox.preflight import connect  # noqa: E402
from runner.sandbox.slot import open_slot  # noqa: E402

ENGINE = ("dockerd", "containerd", "containerd-shim", "runc", "docker-init")   # /proc/PID/comm: at most 15 chars
QUIET_CPU_S, QUIET_WINDOW_S, READY_LIMIT_S = 0.05, 0.5, 60.0
CLK = os.sysconf("SC_CLK_TCK")


def host_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not iowait) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / CLK


def engine_cpu_s() -> float:
    """CPU seconds of the engine's processes, with their waited-for children (runc is a child of a shim)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() not in ENGINE:
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:                                  # gone meanwhile
            continue
        total += sum(int(x) for x in fields[11:15]) / CLK  # utime stime cutime cstime
    return total


def container_cpu_s(container_id: str) -> float:
    """The container's CPU seconds from its cgroup (cgroup v1 cgroupfs, v2 cgroupfs or systemd)."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
               Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat")):
        if v2.is_file():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    raise SystemExit(f"slot_cpu: no cgroup CPU accounting found for container {container_id[:12]} (looked for "
                     f"{v1} and the cgroup v2 paths); this benchmark needs the engine's cgroups on this host")


def until_waiting(slot, t0: float) -> dict:
    """Sample both containers until each is quiet; their CPU seconds and seconds since t0 when they went quiet."""
    out, last = {}, {}
    roles = {"launcher": slot.train.id, "evaluator": slot.evaluator.id}
    while len(out) < len(roles):
        if time.monotonic() - t0 > READY_LIMIT_S:
            raise SystemExit(f"slot_cpu: the slot's containers were still busy after {READY_LIMIT_S:g} s")
        for role, cid in roles.items():
            now = container_cpu_s(cid)
            if role not in out and role in last and now - last[role] < QUIET_CPU_S:
                out[role] = (last[role], time.monotonic() - QUIET_WINDOW_S - t0)
            last[role] = now
        time.sleep(QUIET_WINDOW_S)
    return out


def one_round(client, policy, image: str, data: Path, work: Path, i: int) -> dict:
    h0, e0, t0 = host_cpu_s(), engine_cpu_s(), time.monotonic()
    slot = open_slot(client, policy, image=image, data_dir=data, run_tag="slotcpu", slot_id=f"r{i}",
                     dir=work / f"slot-{i}")
    try:
        t1, h1, e1 = time.monotonic(), host_cpu_s(), engine_cpu_s()
        own = sum(container_cpu_s(c.id) for c in slot.containers())     # counted below, as the containers'
        ready = until_waiting(slot, t0)
    finally:
        h2, e2, t2 = host_cpu_s(), engine_cpu_s(), time.monotonic()
        errors = slot.remove(client)
        t3, h3, e3 = time.monotonic(), host_cpu_s(), engine_cpu_s()
    if errors:
        raise SystemExit(f"slot_cpu: removing the slot failed: {errors[0]}")
    return {"open_s": t1 - t0, "open_host": h1 - h0 - own, "open_engine": e1 - e0,
            "launcher": ready["launcher"][0], "launcher_at": ready["launcher"][1],
            "evaluator": ready["evaluator"][0], "evaluator_at": ready["evaluator"][1],
            "remove_s": t3 - t2, "remove_host": h3 - h2, "remove_engine": max(0.0, e3 - e2)}


COLUMNS = (("open_s", "open s"), ("open_host", "open: host CPU s"), ("open_engine", "open: engine CPU s"),
           ("launcher", "launcher CPU s"), ("launcher_at", "launcher waits at s"),
           ("evaluator", "evaluator CPU s"), ("evaluator_at", "evaluator waits at s"),
           ("remove_s", "remove s"), ("remove_host", "remove: host CPU s"), ("remove_engine", "remove: engine CPU s"))


def table(rows: list[dict]) -> str:
    lines = ["| round | " + " | ".join(title for _, title in COLUMNS) + " | slot total CPU s |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for i, r in enumerate(rows + [{k: statistics.mean(x[k] for x in rows) for k, _ in COLUMNS}]):
        total = r["open_host"] + r["launcher"] + r["evaluator"] + r["remove_host"]
        name = str(i + 1) if i < len(rows) else "**mean**"
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.2f}" for k, _ in COLUMNS) + f" | {total:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--data", type=Path, help="prepared data (default: synthetic, prepared into a temp dir)")
    ap.add_argument("--policy", default=None, help="policy (default policies/default.yaml)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="slot-cpu-"))
    try:
        data = args.data or prepare_synthetic(work)
        policy = load_policy(args.policy)
        image = images.build(policy.flavour).tag
        client = connect()
        rows = []
        for i in range(args.rounds):
            time.sleep(2)                                 # let the last round's removal settle
            rows.append(one_round(client, policy, image, Path(data), work, i))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()), file=sys.stderr)
        print(f"## One slot's CPU before it waits ({args.rounds} rounds, `{policy.preset}` preset, idle machine)\n")
        print(table(rows))
        print("\nslot total = open (host) + launcher + evaluator + remove (host). The launcher and evaluator "
              "columns count from each container's start.")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
