"""DEVELOPMENT ONLY: train a train.py and score it with the trusted evaluator, directly on this machine, NO SANDBOX.

    python -m trainer.direct [--train-py trainer/train.py] [--data data/synthetic] [--preset tiny] [--budget S]
                             [--seed N] [--max-steps N] [--out DIR] [--device cpu|cuda]

It runs train.py as a plain subprocess with your user's privileges, with the AUTORESEARCH_* environment of
trainer.contract (the budget: --budget, default DEFAULT_BUDGET_S), then `python -m trainer.evaluate` as a second
subprocess, and prints the result (val_bpb and its ratio to the data's BPB floor when the manifest records one). It exists to develop and debug train.py and the
harness quickly. It is NOT a safe way to run code an agent wrote: use the runner, which trains and evaluates in
locked-down containers. Importable: `direct_trial(...) -> dict` returns the evaluator's result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from trainer.contract import (ENV_BUDGET_S, ENV_DATA, ENV_DEVICE, ENV_MAX_STEPS, ENV_OUT, ENV_PRESET, ENV_SEED,
                              EXPORT_ERROR_FILE, EXPORT_FAILED, MODEL_FILE, RESULT_FILE, last_line)

WARNING = ("WARNING: trainer.direct is for DEVELOPMENT ONLY: train.py runs unsandboxed with your privileges; "
           "never use it on untrusted code (the runner sandboxes trials)")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 8.0      # training seconds when none is given: policies/tiny.yaml's train.budget_seconds


class TrialFailed(Exception):
    """Training or evaluation did not produce a result. One line: what failed, and where the log is."""


def direct_trial(train_py: str | Path = REPO / "trainer" / "train.py", data: str | Path = "data/synthetic",
                 preset: str = "tiny", budget: float | None = DEFAULT_BUDGET_S, seed: int = 1337,
                 max_steps: int | None = None, out: str | Path | None = None, device: str | None = None,
                 on_line: Callable[[str], None] | None = None) -> dict:
    """Train for `budget` seconds (None: DEFAULT_BUDGET_S) then evaluate, unsandboxed; returns the result dict.
    Raises TrialFailed (one line) when either fails."""
    train_py, data = Path(train_py).absolute(), Path(data).absolute()
    if not train_py.is_file():
        raise TrialFailed(f"no training script at {train_py}; pass --train-py PATH")
    if not (data / "manifest.json").is_file():
        raise TrialFailed(f"no prepared data at {data}; run `python -m trainer.prepare synthetic --out {data}`")
    out = Path(out).absolute() if out else Path(tempfile.mkdtemp(prefix="autoresearch-direct-"))
    out.mkdir(parents=True, exist_ok=True)
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    env.update({ENV_DATA: str(data), ENV_OUT: str(out), ENV_PRESET: preset, ENV_SEED: str(seed), ENV_DEVICE: device,
                ENV_BUDGET_S: str(DEFAULT_BUDGET_S if budget is None else budget)})
    if max_steps is None:
        env.pop(ENV_MAX_STEPS, None)
    else:
        env[ENV_MAX_STEPS] = str(max_steps)
    model = out / MODEL_FILE
    model.unlink(missing_ok=True)
    log_path = out / "train.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(train_py)], cwd=out, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        tail = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line])[-50:]
            if on_line:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    if rc == EXPORT_FAILED:
        err = out / EXPORT_ERROR_FILE
        why = err.read_text().strip() if err.is_file() else f"(no {EXPORT_ERROR_FILE})"
        raise TrialFailed(f"export failed (exit {rc}): {why[:300]}; log: {log_path}")
    if rc != 0:
        raise TrialFailed(f"train.py exited with code {rc}: {last_line(''.join(tail))}; log: {log_path}")
    if not model.is_file():
        raise TrialFailed(f"train.py finished but wrote no {model}; it must call run.save_model(model)")
    result_path = out / RESULT_FILE
    ev = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", str(model),
                         "--data", str(data), "--preset", preset, "--out", str(result_path), "--device", device],
                        cwd=REPO, env=env, capture_output=True, text=True)
    (out / "eval.log").write_text(ev.stdout + ev.stderr)
    if ev.returncode != 0 or not result_path.is_file():
        raise TrialFailed(f"evaluator exited with code {ev.returncode}: {last_line(ev.stderr or ev.stdout)}; "
                          f"log: {out / 'eval.log'}")
    return json.loads(result_path.read_text())


def describe(result: dict) -> str:
    """One human line for a result."""
    if result["status"] != "ok":
        return f"status: {result['status']}  error: {result['error']}"
    floor = result["data"]["bpb_floor"]
    ratio = f"  ratio to floor: {result['val_bpb'] / floor:.4f} (floor {floor:.4f})" if floor else ""
    return f"val_bpb: {result['val_bpb']:.6f}{ratio}  eval_tokens: {result['eval_tokens']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.direct", description=__doc__.split("\n")[0])
    ap.add_argument("--train-py", default=str(REPO / "trainer" / "train.py"))
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--preset", default="tiny", choices=("tiny", "cpu", "h100"))
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                    help=f"training seconds (default {DEFAULT_BUDGET_S:g}: the tiny policy's)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--out", default=None, help="output directory (default: a new temporary one)")
    ap.add_argument("--device", default=None, choices=("cpu", "cuda"))
    args = ap.parse_args(argv)
    print(WARNING, file=sys.stderr, flush=True)
    try:
        result = direct_trial(args.train_py, args.data, args.preset, args.budget, args.seed, args.max_steps,
                              args.out, args.device, on_line=print)
    except TrialFailed as e:
        print(f"direct: {e}", file=sys.stderr)
        return 1
    print(describe(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
