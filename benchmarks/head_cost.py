"""Benchmark: the head's own git and ledger work per candidate trial, on a real temporary git repository.

With several trials in flight the head (the runner process that owns git, the ledger and the proposer) does
this work for every trial, one trial at a time. This times, per iteration, the same calls runner/loop.py makes
for one candidate, on the repository's real trainer/train.py (about 20 kB) and a ledger record of realistic
size (timings, a train summary, a failed trial's log tail on one in four):

    context   Workspace.read_files(best) and the proposal's history (dataclasses.asdict of every record so far)
    check     Workspace.tree(best) (the patch check)
    commit    Workspace.commit_files + Workspace.set_trial_ref
    export    Workspace.export(commit) (the read-only copy a trial gets)
    ledger    Ledger.append (one write, fsync, then results.tsv rewritten from the whole ledger)
    advance   Workspace.advance (compare-and-swap of the branch), on every 20th iteration (a keep)
    core      commit + ledger; all: every phase

Ledger.append re-reads the whole ledger to rewrite results.tsv, and the history is built from every record, so
both grow with the run: `--prefill N` writes N records first and measures at that size.

    python benchmarks/head_cost.py [--iterations 200] [--prefill 0] [--json OUT]

Prints a markdown table (mean, p50, p95, max in milliseconds per phase and in all) and, with --json, writes the
means in seconds. benchmarks/scaling_sim.py's `head_*` parameters are these numbers: a fixed part, and a part per
ledger record fitted from runs at --prefill 0, 1000 and 5000 (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.ledger import Ledger, TrialRecord
from runner.workspace import Workspace, init_repo

KEEP_EVERY = 20                 # one keep (a branch compare-and-swap) in this many candidates: p(keep) = 5%
FAILED_EVERY = 4                # one failed trial (with a log tail in its record) in this many
LOG_TAIL = ("step=123 loss=3.2101 progress=0.500 remaining_s=150.0 tokens_per_second=123456\n" * 60)[:4000]


def record(n: int, parent: str, commit: str) -> TrialRecord:
    failed = n % FAILED_EVERY == 0
    return TrialRecord(
        trial=n, kind="candidate", status="crash" if failed else "discard", run="bench", parent=parent,
        commit=commit, proposer="openai", seed=1337, outcome="crash" if failed else "ok",
        description=f"trial {n}: raise the learning rate of the embedding a little",
        reason="val_bpb 0.9876 is not below 0.9800 - 0.0010", val_bpb=None if failed else 0.9876,
        best_bpb_before=0.98, threshold=0.001, training_seconds=300.1, claimed_training_seconds=300.0,
        peak_memory_mb=40000.0, num_steps=1800, train_tokens=940_000_000,
        train_summary={"training_seconds": "300.0", "peak_memory_mb": "40000.0", "num_steps": "1800",
                       "tokens_per_second": "3130000", "mfu_percent": "39.8"},
        image="autoresearch-trial:cuda-0123456789ab", image_digest="sha256:" + "ab" * 32,
        policy_sha256="cd" * 32, data_manifest_sha256="ef" * 32, diff_lines=6,
        llm_usage={"prompt_tokens": 9000, "completion_tokens": 1200},
        timings={"propose_s": 20.1, "check_s": 0.01, "git_s": 0.05, "trial_s": 330.2},
        trial_timings={k: 1.234 for k in ("slot_s", "train_host_s", "train_engine_s", "train_cpu_s",
                                          "copy_model_s", "eval_host_s", "eval_wall_s", "total_s")},
        log_tail=LOG_TAIL if failed else "", started_at=time.time(), finished_at=time.time())


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--prefill", type=int, default=0, help="ledger records written before measuring")
    ap.add_argument("--json", type=Path, default=None, help="write the means (seconds) here")
    args = ap.parse_args(argv)

    train_py = (REPO / "trainer" / "train.py").read_text()
    with tempfile.TemporaryDirectory(prefix="autoresearch-headcost-") as tmp:
        tmp = Path(tmp)
        start = init_repo(tmp / "exp", {"train.py": train_py, "program.md": "# program\n"})
        ws, ledger, tag = Workspace(tmp / "exp"), Ledger(tmp / "runs" / "bench"), "bench"
        ws.create_branch(tag, start)
        best, records = start, []
        for n in range(args.prefill):                      # written directly: only the ledger's size matters
            rec = record(n, start, start)
            records.append(rec)
            ledger.dir.mkdir(parents=True, exist_ok=True)
            with open(ledger.path, "a") as f:
                f.write(json.dumps(asdict(rec), default=str) + "\n")
        names = ("context", "check", "commit", "export", "ledger", "advance", "core", "all")
        phases: dict[str, list[float]] = {k: [] for k in names}
        for i in range(args.iterations):
            n = args.prefill + i
            t = [time.perf_counter()]
            current = ws.read_files(best, ["train.py"])
            [asdict(r) for r in records]
            t.append(time.perf_counter())
            ws.tree(best)
            t.append(time.perf_counter())
            text = current["train.py"] + f"\n# candidate {n}\n"
            commit = ws.commit_files(best, {"train.py": text}, f"trial {n}: bench\n\nAutoresearch-Run: {tag}\n")
            ws.set_trial_ref(tag, n, commit)
            t.append(time.perf_counter())
            ws.export(commit, ["train.py"], tmp / "work" / str(n) / "candidate")
            t.append(time.perf_counter())
            rec = record(n, best, commit)
            ledger.append(rec)
            records.append(rec)
            t.append(time.perf_counter())
            keep = (i + 1) % KEEP_EVERY == 0
            if keep:
                ws.advance(tag, commit, best)
                best = commit
            t.append(time.perf_counter())
            for k, j in zip(names[:5], range(5)):
                phases[k].append(t[j + 1] - t[j])
            if keep:
                phases["advance"].append(t[6] - t[5])
            phases["core"].append(phases["commit"][-1] + phases["ledger"][-1])
            phases["all"].append(t[6] - t[0])

    print(f"head cost per candidate trial: {args.iterations} iterations, ledger prefilled with {args.prefill} "
          f"records, one keep in {KEEP_EVERY}\n")
    print("| phase | mean ms | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|")
    phases = {k: xs for k, xs in phases.items() if xs}          # advance: none in under 20 iterations
    for k, xs in phases.items():
        print(f"| {k} | {1e3 * statistics.fmean(xs):.1f} | {1e3 * percentile(xs, 0.5):.1f} | "
              f"{1e3 * percentile(xs, 0.95):.1f} | {1e3 * max(xs):.1f} |")
    first, last = phases["all"][:20], phases["all"][-20:]
    print(f"\nall, first 20 iterations: {1e3 * statistics.fmean(first):.1f} ms; last 20: "
          f"{1e3 * statistics.fmean(last):.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({k: statistics.fmean(v) for k, v in phases.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
