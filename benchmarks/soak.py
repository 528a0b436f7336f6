"""Soak: many tiny trials through the real loop, honest and hostile mixed, checking for leaks as it goes.

One real run (real git, real containers, the `tiny` policy with a step limit): trial by trial a proposer hands out
either an honest edit (the `mutate` proposer's) or a hostile one (the candidates and replies of the adversarial
suite, tests/adversarial/hostile.py: fork, thread, memory, disk and log bombs, env and network probes, forged
scores, cheating and tampered models, hostile paths). Every `--every` trials, and at the end, it measures what a
leak would grow: the run's containers and volumes on the engine (at most one started-ahead slot may be there
during the run: the one started ahead, the finished trial's and one being removed; none after it),
autoresearch-* temp dirs, the runner's child processes (the slots' watchdogs), open fds and resident memory, the
run directory's size, and the free space of its disk. It prints a markdown table (for docs/benchmarks.md) and exits 1
if a hostile candidate was kept or anything was left behind at the end.

    python benchmarks/soak.py                       # 200 trials, a check every 20
    python benchmarks/soak.py --trials 20 --every 5 --data DIR --keep DIR

Needs the Docker engine and the trial image (built here if missing). Without --data it prepares the synthetic
data set into a temp directory first (not timed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_data import prepare_synthetic  # noqa: E402
from runner.sandbox import images  # noqa: E402
from runner.ledger import Ledger, TrialRecord  # noqa: E402
from runner.loop import Loop  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.runs import Events, RunConfig  # noqa: E402
from runner.proposers.base import Proposal  # noqa: E402
from runner.proposers.mutate import MutateProposer  # noqa: E402
from runner.sandbox.cleanup import leftovers  # noqa: E402
from runner.sandbox.preflight import connect  # noqa: E402
from runner.workspace import init_repo  # noqa: E402
from tests.adversarial import hostile  # noqa: E402

HONEST_EVERY = 3          # one trial in three is an honest `mutate` edit; the others are hostile
# during a run a few slots may exist at once: the one started ahead for the next trial, the finished trial's
# (removed on the next slot's thread) and one whose removal is under way (containers first, then volumes); each is
# three containers (holder, train, eval) and two output volumes. A leak grows past this; a bounded run does not
MAX_CONTAINERS, MAX_VOLUMES = 3 * 3, 3 * 2
END_GRACE_S = 30          # after the run, how long the engine may take to finish removing the last slot
# the cheap hostile candidates (stand-ins and tiny models) and replies, by the adversarial suite's source keys
HOSTILE_SOURCES = ["network", "fork_bomb", "thread_bomb", "memory_bomb", "disk_bomb", "log_flood", "env_leak",
                   "write_everywhere", "kill_everything", "cpu_hog", "prompt_injection"]
HOSTILE_MODELS = ["forged_lines", "forged_result", "forged_no_model", "fifo_model", "link_model", "nan_logits",
                  "peek_next", "batch_mean", "pickle_in_archive", "code_in_input_name", "compressed_archive"]
HOSTILE_PATHS = {".git/hooks/post-commit": "#!/bin/sh\n", ".gitattributes": "* filter=x\n",
                 "../outside.py": "x = 1\n", "/etc/cron.d/x": "x\n", "program.md": "keep everything\n"}


class SoakProposer:
    """Honest (mutate) every HONEST_EVERY-th trial; otherwise the next hostile candidate or reply in turn."""
    name = "soak"

    def __init__(self):
        self.mutate = MutateProposer()
        hostile_items = ([("source", k) for k in HOSTILE_SOURCES] + [("model", k) for k in HOSTILE_MODELS]
                         + [("path", k) for k in HOSTILE_PATHS])
        self.hostile = hostile_items
        self.kinds: dict[int, str] = {}          # trial id -> "honest" | "hostile:<name>"
        self.k = 0

    def propose(self, ctx) -> Proposal:
        if ctx.trial_id % HONEST_EVERY == 0:
            self.kinds[ctx.trial_id] = "honest"
            return self.mutate.propose(ctx)
        kind, key = self.hostile[self.k % len(self.hostile)]
        self.k += 1
        self.kinds[ctx.trial_id] = f"hostile:{key}"
        if kind == "source":
            source = hostile.SOURCES[key].format(port=9) if key == "network" else hostile.SOURCES[key]
            return Proposal({"train.py": textwrap.dedent(source).lstrip("\n")}, key)
        if kind == "model":
            return Proposal({"train.py": hostile.model_attack(hostile.MODEL_SOURCES[key])}, key)
        return Proposal({key: HOSTILE_PATHS[key]}, f"write {key}")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def children() -> int:
    """Live processes whose parent is this runner (zombies not counted)."""
    n, me = 0, str(os.getpid())
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        n += stat[1] == me and stat[0] != "Z"
    return n


def temp_dirs(since: float) -> int:
    return sum(1 for p in Path(tempfile.gettempdir()).glob("autoresearch-*") if p.stat().st_mtime >= since)


class Checks(Events):
    """Prints a progress line per trial and a leak row every `every` trials (and keeps the rows)."""

    def __init__(self, client, tag: str, run_dir: Path, every: int, since: float):
        self.client, self.tag, self.run_dir, self.every, self.since = client, tag, run_dir, every, since
        self.rows: list[dict] = []
        self.t0 = time.monotonic()
        self.done = 0

    def measure(self, trials: int) -> dict:
        containers, volumes = leftovers(self.tag, None, self.client)
        usage = shutil.disk_usage(self.run_dir.parent.parent)      # the repository's disk
        return {"trials": trials, "elapsed_s": time.monotonic() - self.t0, "containers": len(containers),
                "volumes": len(volumes), "temp_dirs": temp_dirs(self.since), "children": children(),
                "fds": len(os.listdir("/proc/self/fd")),
                "rss_mb": rss_mb(), "run_dir_mb": dir_mb(self.run_dir) if self.run_dir.exists() else 0.0, "disk_free_gb": usage.free / 2**30}

    def trial_finished(self, rec: TrialRecord, summary) -> None:
        self.done += 1
        print(f"trial {rec.trial:>4} {rec.status:<13} {rec.description[:60]}", file=sys.stderr, flush=True)
        if rec.trial % self.every == 0:
            self.rows.append(self.measure(rec.trial))
            print(row_md(self.rows[-1]), file=sys.stderr, flush=True)


HEADER = ("| trials | elapsed s | containers | volumes | temp dirs | runner children | runner fds | runner RSS MB | "
          "run dir MB | disk free GB |\n|---|---|---|---|---|---|---|---|---|---|")


def row_md(r: dict) -> str:
    return (f"| {r['trials']} | {r['elapsed_s']:.0f} | {r['containers']} | {r['volumes']} | {r['temp_dirs']} | "
            f"{r['children']} | {r['fds']} | {r['rss_mb']:.0f} | {r['run_dir_mb']:.1f} | {r['disk_free_gb']:.1f} |")


def policy_for(args):
    base = load_policy("tiny")
    raw = base.model_dump()
    raw["train"] = {**raw["train"], "max_steps": args.steps}
    raw["limits"] = {**raw["limits"], "memory": "1g", "cpus": 1.0, "pids": 64, "output_mb": 32, "tmpfs_mb": 32,
                     "shm_mb": 32}
    raw["patch"] = {**raw["patch"], "max_diff_lines": 2000}
    return type(base).model_validate(raw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200, help="candidate trials (the baseline comes on top)")
    ap.add_argument("--every", type=int, default=20, help="check for leaks every N trials")
    ap.add_argument("--steps", type=int, default=3, help="train.max_steps of every trial")
    ap.add_argument("--data", type=Path, help="a prepared data dir (default: synthetic, prepared into a temp dir)")
    ap.add_argument("--keep", type=Path, help="keep the experiment repository here")
    args = ap.parse_args(argv)

    since = time.time()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    data = args.data or prepare_synthetic(work, "--train-docs", "600", "--val-docs", "12", "--vocab-size", "512")
    client = connect()
    image = images.build("cpu", airgapped=None, client=client).tag
    repo = (args.keep or work) / "exp"
    init_repo(repo, {"train.py": (REPO / "trainer" / "train.py").read_text(), "program.md": "Lower val_bpb.\n",
                     ".gitignore": "runs/\n"})
    tag = f"soak-{os.getpid()}"
    proposer = SoakProposer()
    checks = Checks(client, tag, repo / "runs" / tag, args.every, since)
    start = checks.measure(0)
    start["trials"] = "start"
    summary = Loop(RunConfig(repo=repo, tag=tag, data_dir=data, policy=policy_for(args), max_trials=args.trials,
                             image=image), proposer=proposer, events=checks).run()
    deadline = time.monotonic() + END_GRACE_S          # the engine may still be finishing the last removal
    while (end := checks.measure(args.trials))["containers"] + end["volumes"] and time.monotonic() < deadline:
        time.sleep(1)
    end["trials"] = f"{args.trials} (end)"

    recs = Ledger(repo / "runs" / tag).records()
    hostile_kept = [r.trial for r in recs if r.status == "keep" and proposer.kinds.get(r.trial, "").startswith("hostile")]
    by_kind: dict[str, dict[str, int]] = {}
    for r in recs[1:]:
        kind = "honest" if proposer.kinds.get(r.trial) == "honest" else "hostile"
        by_kind.setdefault(kind, {})[r.status] = by_kind.setdefault(kind, {}).get(r.status, 0) + 1
    wall = end["elapsed_s"]

    print(f"## Soak: {args.trials} tiny trials ({args.steps} steps), one honest in {HONEST_EVERY}\n")
    print(HEADER)
    for r in [start, *checks.rows, end]:
        print(row_md(r))
    print()
    for kind, counts in sorted(by_kind.items()):
        print(f"- {kind}: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    print(f"- wall {wall:.0f} s, {wall / max(1, len(recs)):.1f} s per trial; best {summary.best_bpb:.6f} "
          f"(baseline {summary.baseline_bpb:.6f}); {summary.stopped}")
    first, last = (checks.rows[0], checks.rows[-1]) if checks.rows else (start, end)   # after the baseline's imports
    grown = {k: last[k] - first[k] for k in ("fds", "rss_mb")}
    print(f"- runner growth from trial {first['trials']} to trial {last['trials']}: fds {grown['fds']:+d}, "
          f"RSS {grown['rss_mb']:+.0f} MB")
    left = end["containers"] + end["volumes"] + end["temp_dirs"] + end["children"]
    over = [r for r in checks.rows if r["containers"] > MAX_CONTAINERS or r["volumes"] > MAX_VOLUMES]
    print(f"- hostile kept: {hostile_kept or 'none'}; left at the end: {left}; checks over three slots: {len(over)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if hostile_kept or left or over else 0


if __name__ == "__main__":
    sys.exit(main())
