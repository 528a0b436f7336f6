"""The train container's command: get ready, wait for the candidate's train.py, run it. TRUSTED CODE, baked into the
trial image; not the agent's to edit (it is not part of the candidate and is never mounted from the host).

    python -m trainer.harness.launch --wait S [--dir /work] [--no-warm-up]

1. Get ready: import what every train.py needs and what costs seconds: torch, torch._dynamo (torch.optim and
   torch.export pull it in: about 1 s of a CPU), torch.export, numpy, yaml and the harness. The runner starts the
   next trial's train container as the current trial's export starts, at a very low CPU weight, so this happens
   in CPU time the trials leave idle, not on the next trial's critical path. No CUDA context is made here. (A
   warm-up `torch.export` of a tiny model was tried here too: it made the export after training ~0.3 s faster,
   but the training that followed in the same process ran ~8% fewer steps, so it is not done. Importing the
   ~400 modules the first export imports lazily was tried as well: 0.2 s here made that export 0.25-0.5 s faster,
   but in a run this launcher is still importing when train.py arrives, so the work only moved from the export
   to the start of the next trial; it is not done either.)
2. Wait up to S seconds for the host to hand over the candidate: it renames /work/trial.json (the trial's seed)
   and then /work/train.py into the read-only /work directory. Exit 3 with one line if it never comes.
3. Say so on stderr (RUNNING_LINE: the host tells by its absence that an exit 3 was the hand-over's failure, not
   train.py's own), then run /work/train.py as __main__, as `python /work/train.py` would (sys.argv, sys.path[0],
   __file__), with the seed in AUTORESEARCH_SEED. The exit status is the one Python would give: 0, sys.exit's
   code, or 1 after the traceback of an uncaught exception.
4. End the process with os._exit, after atexit handlers have run, non-daemon threads have ended and output is
   flushed. Python's own teardown of ~2,000 modules takes 0.3-0.7 s with torch._dynamo loaded; the runner
   waits for the container's exit before the model can be scored.

It gives train.py nothing it would not have anyway: the same process, user, files and environment (plus the
seed, which the harness would otherwise read from the container's environment). Nothing here is trusted for the
score: the evaluator recomputes it in another container from the exported model alone.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

WORK = Path("/work")                               # the host's hand-over directory, read-only here
NO_CANDIDATE = 3                                   # the exit status when no train.py was handed over in time
RUNNING_LINE = "launch: running train.py"          # printed just before train.py runs (runner.sandbox.containers
                                                   # .LAUNCHED_LINE): nothing of the candidate's runs before it
POLL_S = 0.02


def get_ready() -> None:
    """Import the heavy modules every train.py uses (the import system caches them for train.py's own imports)."""
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.export  # noqa: F401
    import yaml  # noqa: F401

    import trainer.harness  # noqa: F401


def wait_for(path: Path, wait_s: float, poll_s: float = POLL_S) -> bool:
    """True once `path` exists, False after wait_s seconds."""
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


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


def exit_now(status: int) -> None:
    """What Python does at exit that a script can observe (threads, atexit, flushed output), then os._exit: without
    Python's module teardown. The launcher and the evaluator both end this way."""
    main = threading.main_thread()
    for t in threading.enumerate():
        if t is not main and not t.daemon:
            t.join()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or replaced stream
                pass
        os._exit(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.harness.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--wait", type=float, required=True, metavar="S",
                    help="seconds to wait for the host to hand over train.py")
    ap.add_argument("--dir", type=Path, default=WORK, help=f"the hand-over directory (default {WORK})")
    ap.add_argument("--no-warm-up", action="store_true", help="skip the imports (tests)")
    args = ap.parse_args(argv)
    if not args.no_warm_up:
        get_ready()
    train_py = args.dir / "train.py"
    if not wait_for(train_py, args.wait):
        print(f"launch: no train.py was handed over at {train_py} within {args.wait:g} s; the runner hands it "
              "over when the trial starts", file=sys.stderr)
        return NO_CANDIDATE
    try:
        os.environ["AUTORESEARCH_SEED"] = str(read_seed(args.dir / "trial.json"))
    except (OSError, ValueError) as e:
        print(f"launch: cannot read the trial's seed: {e}", file=sys.stderr)
        return NO_CANDIDATE
    print(RUNNING_LINE, file=sys.stderr, flush=True)
    return run_script(train_py)


if __name__ == "__main__":
    exit_now(main())
