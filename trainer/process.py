"""The process trusted code runs in: CPU tuning, waiting for a handed-over file, and ending without teardown.

TRUSTED CODE, baked into the trial image. Shared by the evaluator (trainer/evaluate.py), the training harness
(trainer/harness) and the launcher (trainer/harness/launch.py); it imports no other trainer module, and torch only
inside `first_math_calls`. Because the evaluator's tuning can change a score in its last bits, this file is part of
`trainer.evaluate.evaluator_version`.

- `cpu_threads()`: the CPUs this process may really use (affinity mask, capped by the cgroup's CPU quota), for
  torch.set_num_threads.
- `keep_freed_memory()`: glibc's malloc keeps freed memory for reuse instead of returning it to the kernel, so a
  step or forward pass of the same shapes reuses the last one's pages.
- `first_math_calls()`: the process's first call of each of torch's MKL vector-math functions, made serially on a
  tiny tensor, before any parallel op: a first call made by two threads at once can give a different result on
  one thread's part (docs/benchmarks.md), which the determinism probe would blame on an honest model.
- `wait_for(path, s)`: poll until a file the host hands over exists.
- `exit_now(status)`: end the process as Python would (threads joined, atexit run, output flushed) but without
  the module teardown, which the runner would otherwise wait for.
"""
from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
from pathlib import Path

POLL_S = 0.02                                        # how often wait_for looks for the file
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc's mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 2**31 - 1                         # mallopt takes an int: keep up to 2 GiB of freed heap
MMAP_ABOVE_BYTES = 2**30                             # only blocks of 1 GiB and more get their own mapping

# torch's CPU kernels that call MKL's vector math library (aten/src/ATen/cpu/vml.h), plus a few that did in other
# torch versions; every one takes an argument in (0, 1)
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10", "log1p",
                 "log2", "sin", "sqrt", "tan", "tanh", "trunc", "abs")


def cpu_threads() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (Docker's --cpus)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:                                                    # cgroup v2
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if q != "max":
            quota = int(q) / int(period)
    except (OSError, ValueError):
        try:                                                # cgroup v1
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory instead of handing it back to the kernel; True if it took effect.

    Freed memory is kept until the process ends; blocks that do not fit the holes left by freed ones still grow
    the heap. A no-op (False) where the C library has no mallopt (musl, macOS). Call it before the big
    allocations.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def first_math_calls() -> list[str]:
    """Make the process's first call of each of VML_FUNCTIONS here, serially, on a tiny tensor (below torch's
    parallel grain size), in float32 and float64; returns the names called. Takes milliseconds; call it before
    the first parallel op."""
    import torch

    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(0.25, 0.75, 64, dtype=dtype)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
    return list(VML_FUNCTIONS)


def wait_for(path: Path, wait_s: float, poll_s: float = POLL_S) -> bool:
    """True once `path` exists, False after wait_s seconds."""
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


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
