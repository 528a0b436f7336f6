"""Benchmark: what the bar saves. The trusted evaluator on one model with no bar (every batch probed as it is
scored), a bar below the score (one batch probed) and a bar above it (every batch scored first, then run again and
probed), interleaved rounds, on 2 CPUs and on 1 (the process's affinity, which the evaluator's main() turns into
its torch threads, as a slot's cpuset does). S is the model's val_bpb.

For each preset it first trains a model with the real train.py through trainer.direct (not timed; `--train-s`
seconds), reads its val_bpb S, and puts the model in three directories: one without probes.json, one with
{"every_batch_below": S / 2} (scope one_batch) and one with {"every_batch_below": 2 S} (scope every_batch). Each
run is `python -m trainer.evaluate --wait-for-model 60 --probe-seed 1` as a subprocess, so its timings leave the
import and the loader's warm-up out, as in a run where the eval container starts while the model trains. Prints a
markdown table per preset and CPU count: the evaluator's own timings (load, probes, scoring, total), the process
wall and CPU time, val_bpb (it must be the same for all three), the scope the result names and the load average.

    python benchmarks/eval_scope.py [--data ~/.cache/autoresearch/data] [--presets cpu tiny] [--cpus 2 1]
                                    [--rounds 2]

Run it on a quiet machine; the load average at the start of each row is printed with it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.contract import PROBE_BAR_FILE, probe_bar_json

KEYS = ("load_s", "probe_s", "eval_s", "total_s")
MODES = ("no bar", "bar S/2 (score not below it)", "bar 2S (score below it)")   # every_batch, one_batch, every_batch
TRAIN_S = {"cpu": 30, "tiny": 20, "h100": 60}


def run_once(model: Path, data: Path, preset: str, cpus: int, out: Path) -> dict:
    keep = sorted(os.sched_getaffinity(0))[:cpus]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", str(model), "--data", str(data),
                        "--preset", preset, "--out", str(out), "--probe-seed", "1", "--wait-for-model", "60"],
                       cwd=REPO, capture_output=True, text=True, timeout=1200, check=False,
                       preexec_fn=lambda: os.sched_setaffinity(0, keep))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"eval_scope: the evaluator failed (exit {p.returncode}): {p.stderr.strip()[-300:]}")
    res = json.loads(out.read_text())
    return {**{k: res["timings"][k] for k in KEYS}, "wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime), "val_bpb": res["val_bpb"], "status": res["status"],
            "scope": res["probes"]["scope"], "load": load}


def make_model(data: Path, preset: str, train_s: float, root: Path) -> tuple[Path, float]:
    from trainer.direct import direct_trial
    print(f"training a {preset} model for {train_s:g} s ...", file=sys.stderr, flush=True)
    res = direct_trial(data=data, preset=preset, budget=train_s, seed=1, out=root / f"train-{preset}")
    if res["status"] != "ok":
        raise SystemExit(f"eval_scope: the {preset} model did not score: {res['error']}")
    return root / f"train-{preset}" / "model.pt2", res["val_bpb"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "autoresearch" / "data")
    ap.add_argument("--presets", nargs="+", default=["cpu", "tiny"])
    ap.add_argument("--cpus", nargs="+", type=int, default=[2, 1])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eval-scope-") as tmp:
        root = Path(tmp)
        for preset in args.presets:
            model, score = make_model(args.data, preset, TRAIN_S.get(preset, 30), root)
            slots = {}
            for mode, bar in zip(MODES, (None, score / 2, score * 2)):
                d = root / preset / str(MODES.index(mode))
                d.mkdir(parents=True)
                if bar is not None:
                    (d / PROBE_BAR_FILE).write_bytes(probe_bar_json(bar))
                shutil.copy(model, d / "model.pt2")
                slots[mode] = d / "model.pt2"
            for cpus in args.cpus:
                run_once(slots[MODES[1]], args.data, preset, cpus, root / "warm.json")   # page cache, .pyc
                rows: dict[str, list[dict]] = {m: [] for m in MODES}
                for r in range(args.rounds):
                    order = MODES[r % 3:] + MODES[:r % 3]
                    for mode in order:
                        rows[mode].append(run_once(slots[mode], args.data, preset, cpus, root / "r.json"))
                report(preset, cpus, args.rounds, score, rows)
    return 0


def report(preset: str, cpus: int, rounds: int, score: float, rows: dict[str, list[dict]]) -> None:
    print(f"\n## `{preset}` preset, {cpus} CPU(s), {rounds} interleaved rounds (model val_bpb {score:.6f})\n")
    print("| bar | scope | round | load avg | load s | probes s | scoring s | total s | process wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, xs in rows.items():
        for i, x in enumerate(xs):
            print(f"| {mode} | {x['scope']} | {i + 1} | {x['load']:.1f} | {x['load_s']:.2f} | {x['probe_s']:.2f} | "
                  f"{x['eval_s']:.2f} | {x['total_s']:.2f} | {x['wall_s']:.2f} | {x['cpu_s']:.2f} |")
    print("\n| bar | scope | probes s | scoring s | total s (mean) | vs no bar |")
    print("|---|---|---|---|---|---|")
    base = statistics.mean(x["total_s"] for x in rows[MODES[0]])
    for mode, xs in rows.items():
        m = {k: statistics.mean(x[k] for x in xs) for k in KEYS}
        print(f"| {mode} | {xs[0]['scope']} | {m['probe_s']:.2f} | {m['eval_s']:.2f} | **{m['total_s']:.2f}** | "
              f"{m['total_s'] / base:.2f}x |")
    bpbs = {x["val_bpb"] for xs in rows.values() for x in xs}
    print(f"\nval_bpb: {'identical in every run' if len(bpbs) == 1 else f'{len(bpbs)} different values'}")


if __name__ == "__main__":
    sys.exit(main())
