"""Benchmark: where one trial's wall time goes on a GPU slot, phase by phase, run directly (no containers).

DEVELOPMENT ONLY: it runs trainer/train.py and the evaluator through `trainer.direct`, unsandboxed, as the
device machine runs the trainer (it has no Docker). For each budget it trains once with a cold compile cache (a
fresh TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR, as in a trial container's fresh /tmp), timestamps every line
train.py prints, and prints a markdown table:
- start-up: the process spawn to train.py's config line (python and torch imports, CUDA start, the model built);
- to the budget: the config line to the loader's first batch (the budget's clock starts there);
- step 1 at: the first batch to step 1's line (torch.compile's first compile is inside the budget);
- steps, tokens/s, MFU and peak memory as train.py reports them;
- train s: train.py's own clock, the first batch to the loop's end (over the budget when a step overran it);
- export: the export line to the summary block (torch.export of the model, the file written);
- evaluation: the summary block to the evaluator's result (its process wall), and the evaluator's own total;
- the trial's wall time and the share of it inside the budget (what issue 17 asks of a slot: 90%).
- the compile cache's size at the end (a trial container's /tmp is a `limits.tmpfs_mb` tmpfs: 256 MB default).

With --ahead it runs each trial as a slot started ahead runs it instead (still directly): the launcher
(`python -m trainer.harness.launch --wait`) and the evaluator (`--wait-for-model`) start first, train.py and
trial.json are renamed into the launcher's directory once the launcher's imports are done (--ready-s), and the
model is renamed into the evaluator's directory when the launcher exits. It prints the launcher's calibration,
the hand-over to the launcher's exit less train.py's own clock (the train phase outside the budget), the model's
copy, and the waiting evaluator's time from the model to its result.

    python benchmarks/gpu_trial.py --data data/synthetic [--preset h100] [--budgets 60 300] [--device cuda]
    python benchmarks/gpu_trial.py --data data/synthetic --ahead [--ready-s 15] [--budgets 20]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.contract import (CALIBRATION_PREFIX, ENV_BUDGET_S, ENV_DATA, ENV_DEVICE, ENV_OUT, ENV_PRESET,
                              MODEL_FILE, RESULT_FILE, TRAIN_FILE, TRIAL_FILE)
from trainer.direct import TrialFailed, direct_trial
from trainer.harness.export import EXPORTING_LINE


def rename_in(src: Path, dst_dir: Path) -> None:
    """Copy then rename, as the host hands a file over: it appears whole or not at all."""
    tmp = dst_dir.parent / f".{src.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst_dir / src.name)


def one_trial_ahead(data: Path, preset: str, budget: float, device: str, ready_s: float) -> dict:
    """The launcher and the waiting evaluator started first, their inputs handed over later; the phase times."""
    with tempfile.TemporaryDirectory(prefix="gpu-trial-ahead-") as tmp:
        t = Path(tmp)
        for d in ("work", "in", "out", "eval-out", "cache"):
            (t / d).mkdir()
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), TORCHINDUCTOR_CACHE_DIR=str(t / "cache" /
                   "inductor"), TRITON_CACHE_DIR=str(t / "cache" / "triton"))
        env.update({ENV_DATA: str(data), ENV_OUT: str(t / "out"), ENV_PRESET: preset, ENV_BUDGET_S: f"{budget:g}",
                    ENV_DEVICE: device})
        with open(t / "train.log", "w") as tlog, open(t / "eval.log", "w") as elog:
            launcher = subprocess.Popen([sys.executable, "-m", "trainer.harness.launch", "--wait", "600", "--dir",
                                         str(t / "work")], env=env, cwd=REPO, stdout=tlog, stderr=subprocess.STDOUT)
            evaluator = subprocess.Popen([sys.executable, "-m", "trainer.evaluate", "--model", str(t / "in" /
                                          MODEL_FILE), "--data", str(data), "--preset", preset, "--out",
                                          str(t / "eval-out" / RESULT_FILE), "--device", device,
                                          "--wait-for-model", "900"], env=env, cwd=REPO, stdout=elog,
                                         stderr=subprocess.STDOUT)
            time.sleep(ready_s)
            (t / TRIAL_FILE).write_text('{"seed": 1337}')
            rename_in(t / TRIAL_FILE, t / "work")
            rename_in(REPO / "trainer" / TRAIN_FILE, t / "work")
            t_hand = time.perf_counter()
            rc_train = launcher.wait()
            t_train = time.perf_counter()
            if rc_train == 0:
                rename_in(t / "out" / MODEL_FILE, t / "in")
            else:
                evaluator.kill()
            t_model = time.perf_counter()
            rc_eval = evaluator.wait()
            t_eval = time.perf_counter()
        log = (t / "train.log").read_text()
        if rc_train != 0 or rc_eval != 0:
            raise SystemExit(f"gpu_trial: launcher exit {rc_train}, evaluator exit {rc_eval}\n{log[-2000:]}\n"
                             f"{(t / 'eval.log').read_text()[-1000:]}")
        result = json.loads((t / "eval-out" / RESULT_FILE).read_text())
        cache_mb = dir_mb(t / "cache")
    summary = dict(line.split(": ", 1) for line in log.splitlines() if re.match(r"^[a-z_]+: ", line))
    calibration = next((line[len(CALIBRATION_PREFIX):] for line in log.splitlines()
                        if line.startswith(CALIBRATION_PREFIX)), "none")
    train_s = float(summary["training_seconds"])
    return {"budget": budget, "calibration": calibration, "handover_to_exit_s": t_train - t_hand,
            "train_s": train_s, "outside_budget_s": t_train - t_hand - train_s, "copy_s": t_model - t_train,
            "model_to_result_s": t_eval - t_model, "timings": result.get("timings"), "status": result["status"],
            "val_bpb": result.get("val_bpb"), "cache_mb": cache_mb,
            "fixed_s": t_train - t_hand - train_s + t_eval - t_train}

def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def one_trial(data: Path, preset: str, budget: float, device: str, keep: Path | None) -> dict:
    """Train then evaluate once; the phase times from the timestamps of train.py's lines."""
    stamps: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-trial-") as tmp:
        cache = Path(tmp) / "cache"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
        out = keep or Path(tmp) / "out"
        t0 = time.perf_counter()
        try:
            result = direct_trial(data=data, preset=preset, budget=budget, out=out, device=device,
                                  on_line=lambda line: stamps.append((time.perf_counter(), line)))
        except TrialFailed as e:
            tail = "\n".join(line for _, line in stamps[-15:])
            raise SystemExit(f"gpu_trial: the {preset} trial at {budget:g} s failed: {e}\n{tail}")
        t_end = time.perf_counter()
        cache_mb = dir_mb(cache) if cache.exists() else 0.0
    first = lambda pred: next(t for t, line in stamps if pred(line))                       # noqa: E731
    t_cfg = first(lambda s: s.startswith("preset="))
    t_step1 = first(lambda s: s.startswith("step=1 "))
    summary = dict(line.split(": ", 1) for _, line in stamps if re.match(r"^[a-z_]+: ", line))
    t_export = first(lambda s: s == EXPORTING_LINE)
    t_budget0 = t_export - float(summary["training_seconds"])    # train.py's clock: first batch -> loop end
    t_summary = first(lambda s: s == "---")
    timings = result.get("timings") or {}
    wall = t_end - t0
    return {"budget": budget, "startup_s": t_cfg - t0, "to_budget_s": t_budget0 - t_cfg,
            "first_step_s": t_step1 - t_budget0, "steps": int(summary["num_steps"]),
            "tok_s": float(summary["tokens_per_second"]), "mfu": summary.get("mfu_percent", "None"),
            "peak_mb": float(summary["peak_memory_mb"]), "train_s": float(summary["training_seconds"]),
            "export_s": t_summary - t_export, "eval_wall_s": t_end - t_summary,
            "eval_total_s": timings.get("total_s"), "probe_s": timings.get("probe_s"),
            "wall_s": wall, "in_budget": budget / wall,
            "val_bpb": None if result.get("val_bpb") is None else round(result["val_bpb"], 4),
            "status": result["status"], "cache_mb": cache_mb}


def table(rows: list[dict]) -> str:
    cols = [("budget s", "budget", "{:g}"), ("start-up s", "startup_s", "{:.1f}"),
            ("to budget s", "to_budget_s", "{:.1f}"), ("step 1 at s", "first_step_s", "{:.1f}"),
            ("steps", "steps", "{}"), ("tokens/s", "tok_s", "{:,.0f}"), ("MFU %", "mfu", "{}"),
            ("peak MB", "peak_mb", "{:,.0f}"), ("train s", "train_s", "{:.1f}"),
            ("export s", "export_s", "{:.1f}"), ("eval wall s", "eval_wall_s", "{:.1f}"),
            ("evaluator total s", "eval_total_s", "{}"), ("of it probes s", "probe_s", "{}"),
            ("trial wall s", "wall_s", "{:.1f}"), ("in budget", "in_budget", "{:.1%}"),
            ("val_bpb", "val_bpb", "{}"), ("compile cache MB", "cache_mb", "{:.1f}")]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared data (python -m trainer.prepare synthetic)")
    ap.add_argument("--preset", default="h100")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60.0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--keep", type=Path, default=None, help="keep the last trial's output directory here")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--ahead", action="store_true", help="start the launcher and the evaluator first, as a slot does")
    ap.add_argument("--ready-s", type=float, default=15.0, help="--ahead: seconds before the hand-over")
    args = ap.parse_args(argv)
    rows = []
    if args.ahead:
        for budget in args.budgets:
            rows.append(one_trial_ahead(args.data.resolve(), args.preset, budget, args.device, args.ready_s))
            print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    for budget in args.budgets:
        rows.append(one_trial(args.data.resolve(), args.preset, budget, args.device, args.keep))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\npreset {args.preset}, device {args.device}, cold compile cache each trial\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
