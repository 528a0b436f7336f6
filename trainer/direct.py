"""DEVELOPMENT ONLY: train a train.py and score it with the trusted evaluator, directly on this machine, NO SANDBOX.

    python -m trainer.direct [--train-py trainer/train.py] [--data data/synthetic] [--preset tiny] [--budget S]
                             [--seed N] [--max-steps N] [--out DIR] [--device cpu|cuda]

It runs train.py as a plain subprocess with your user's privileges, with the AUTORESEARCH_* environment of
docs/design.md, then `python -m trainer.evaluate` as a second subprocess, and prints the result (val_bpb and its
ratio to the data's BPB floor when the manifest records one). It exists to develop and debug train.py and the
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

WARNING = ("WARNING: trainer.direct is for DEVELOPMENT ONLY: train.py runs unsandboxed with your privileges; "
           "never use it on untrusted code (the runner sandboxes trials)")
REPO = Path(__file__).resolve().parent.parent
EXPORT_FAILED = 86


class TrialFailed(Exception):
    """Training or evaluation did not produce a result. One line: what failed, and where the log is."""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def direct_trial(train_py: str | Path = REPO / "trainer" / "train.py", data: str | Path = "data/synthetic",
                 preset: str = "tiny", budget: float | None = None, seed: int = 1337, max_steps: int | None = None,
                 out: str | Path | None = None, device: str | None = None,
                 on_line: Callable[[str], None] | None = None) -> dict:
    """Train then evaluate, unsandboxed; returns the result dict. Raises TrialFailed (one line) when either fails."""
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
    env = dict(os.environ, AUTORESEARCH_DATA=str(data), AUTORESEARCH_OUT=str(out), AUTORESEARCH_PRESET=preset,
               AUTORESEARCH_SEED=str(seed), AUTORESEARCH_DEVICE=device, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    for key, value in (("AUTORESEARCH_BUDGET_S", budget), ("AUTORESEARCH_MAX_STEPS", max_steps)):
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    (out / "model.pt2").unlink(missing_ok=True)
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
        err = out / "export_error.txt"
        why = err.read_text().strip() if err.is_file() else "(no export_error.txt)"
        raise TrialFailed(f"export failed (exit {rc}): {why[:300]}; log: {log_path}")
    if rc != 0:
        raise TrialFailed(f"train.py exited with code {rc}: {_last_line(''.join(tail))}; log: {log_path}")
    if not (out / "model.pt2").is_file():
        raise TrialFailed(f"train.py finished but wrote no {out / 'model.pt2'}; it must call run.save_model(model)")
    result_path = out / "result.json"
    ev = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", str(out / "model.pt2"),
                         "--data", str(data), "--preset", preset, "--out", str(result_path), "--device", device],
                        cwd=REPO, env=env, capture_output=True, text=True)
    (out / "eval.log").write_text(ev.stdout + ev.stderr)
    if ev.returncode != 0 or not result_path.is_file():
        raise TrialFailed(f"evaluator exited with code {ev.returncode}: {_last_line(ev.stderr or ev.stdout)}; "
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
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's)")
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
