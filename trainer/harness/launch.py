"""The train container's command: get ready, wait for the candidate's train.py, run it. TRUSTED CODE, baked into the
trial image; not the agent's to edit (it is not part of the candidate and is never mounted from the host).

    python -m trainer.harness.launch --wait S [--dir /work] [--no-warm-up]

1. Get ready: import what every train.py needs and what costs seconds (torch, torch._dynamo, torch.export, numpy,
   yaml and the harness). The runner starts this container ahead of its trial at a very low CPU weight, so this
   happens in CPU time the trials leave idle. No CUDA context is made here, and nothing else is warmed up
   (docs/benchmarks.md says what was tried).
2. Wait up to S seconds for the host to hand over the candidate: it renames /work/trial.json (the trial's seed)
   and then /work/train.py into the read-only /work directory. Exit NO_CANDIDATE (trainer.contract) with one line
   if it never comes, or if the seed is unreadable.
3. Calibrate: run a fixed kernel (the same every trial: float32 matmuls at the container's thread count on the
   CPU, a float32 matmul loop with synchronize on a GPU) and print its seconds as trainer.contract's calibration
   line on stderr. It runs at the trial's full CPU weight, after the hand-over (so it counts in the start-up
   allowance, not in the training budget), and tells the host how fast this machine was for this trial; the
   host reads it only before LAUNCHED_LINE, where nothing of the candidate's can be. It uses no random numbers
   and leaves torch's thread count as it found it.
4. Print LAUNCHED_LINE on stderr (trainer.contract: the host tells by its absence that an exit NO_CANDIDATE was
   the hand-over's failure, not train.py's own), then run /work/train.py as __main__, as `python /work/train.py`
   would (sys.argv, sys.path[0], __file__), with the seed in AUTORESEARCH_SEED. The exit status is the one Python
   would give: 0, sys.exit's code, or 1 after the traceback of an uncaught exception.
5. End with trainer.process.exit_now: atexit handlers run, non-daemon threads end and output is flushed, but
   Python's module teardown is skipped (the runner waits for the container's exit before scoring).

It gives train.py nothing it would not have anyway: the same process, user, files and environment (plus the
seed, which the harness would otherwise read from the container's environment). Nothing here is trusted for the
score: the evaluator recomputes it in another container from the exported model alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from trainer.contract import (ENV_DEVICE, ENV_SEED, LAUNCHED_LINE, NO_CANDIDATE, TRAIN_FILE, TRIAL_FILE, WORK_DIR,
                              calibration_line)
from trainer.process import cpu_threads, exit_now, wait_for

WORK = Path(WORK_DIR)                              # the host's hand-over directory, read-only here
RUNNING_LINE = LAUNCHED_LINE                       # printed just before train.py runs: nothing of the candidate's
                                                   # runs before it
CPU_KERNEL = (512, 96)     # the CPU calibration: 96 float32 512x512 matmuls (~0.3 s on 2 idle cores)
GPU_KERNEL = (4096, 100)   # the GPU calibration: 100 float32 4096x4096 matmuls, then synchronize


def get_ready() -> None:
    """Import the heavy modules every train.py uses (the import system caches them for train.py's own imports)."""
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.export  # noqa: F401
    import yaml  # noqa: F401

    import trainer.harness  # noqa: F401


def calibrate(device: str) -> tuple[float, str, int, str]:
    """Time the fixed kernel once: (seconds, kernel name, threads, device). One untimed run first (thread pool, CUDA
    context); inputs are fixed numbers, not random ones, so no generator moves."""
    import torch
    cuda = device == "cuda" and torch.cuda.is_available()
    n, reps = GPU_KERNEL if cuda else CPU_KERNEL
    before = torch.get_num_threads()
    threads = 0 if cuda else cpu_threads()
    try:
        if not cuda:
            torch.set_num_threads(threads)
        a = torch.linspace(-1.0, 1.0, n * n, dtype=torch.float32, device="cuda" if cuda else "cpu").reshape(n, n)
        b = a.t().contiguous()
        (a @ b).sum().item()
        t0 = time.perf_counter()
        for _ in range(reps):
            c = a @ b
        c.sum().item()                                   # waits for the GPU's queue
        return time.perf_counter() - t0, f"matmul{n}f32x{reps}", threads, "cuda" if cuda else "cpu"
    finally:
        torch.set_num_threads(before)


def read_seed(path: Path) -> int:
    """The trial's seed from the host's trial.json: {"seed": <int >= 0>}."""
    data = json.loads(path.read_text())
    seed = data.get("seed") if isinstance(data, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{path} must hold a non-negative integer seed, got {seed!r}")
    return seed


def exit_status(e: SystemExit) -> int:
    """The process status Python gives for an uncaught SystemExit (printing a non-integer code, as Python does)."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_script(path: Path) -> int:
    """Run `path` as __main__ in this process; the exit status Python would give it."""
    import runpy
    sys.argv = [str(path)]
    sys.path[0] = str(path.parent)
    try:
        runpy.run_path(str(path), run_name="__main__")
        return 0
    except SystemExit as e:
        return exit_status(e)
    except BaseException:  # noqa: BLE001 - the script's uncaught exception: Python prints it and exits 1
        etype, value, tb = sys.exc_info()
        try:
            sys.excepthook(etype, value, tb)
        except Exception:  # noqa: BLE001 - a broken excepthook: print it the default way
            traceback.print_exception(etype, value, tb)
        return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.harness.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--wait", type=float, required=True, metavar="S",
                    help="seconds to wait for the host to hand over train.py")
    ap.add_argument("--dir", type=Path, default=WORK, help=f"the hand-over directory (default {WORK})")
    ap.add_argument("--no-warm-up", action="store_true", help="skip the imports and the calibration (tests)")
    args = ap.parse_args(argv)
    if not args.no_warm_up:
        get_ready()
    train_py = args.dir / TRAIN_FILE
    if not wait_for(train_py, args.wait):
        print(f"launch: no train.py was handed over at {train_py} within {args.wait:g} s; the runner hands it "
              "over when the trial starts", file=sys.stderr)
        return NO_CANDIDATE
    try:
        os.environ[ENV_SEED] = str(read_seed(args.dir / TRIAL_FILE))
    except (OSError, ValueError) as e:
        print(f"launch: cannot read the trial's seed: {e}", file=sys.stderr)
        return NO_CANDIDATE
    if not args.no_warm_up:
        try:
            print(calibration_line(*calibrate(os.environ.get(ENV_DEVICE, "cpu"))), file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - a measurement: without it the host records none, the trial runs
            print(f"launch: no calibration: {type(e).__name__}: {e}"[:300], file=sys.stderr)
    print(RUNNING_LINE, file=sys.stderr, flush=True)
    return run_script(train_py)


if __name__ == "__main__":
    exit_now(main())
