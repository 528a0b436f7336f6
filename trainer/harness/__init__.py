"""The training harness: everything train.py gets from outside, in one object returned by setup().

TRUSTED CODE, baked into the trial image; NOT the agent's to edit (the agent edits only trainer/train.py).
It owns what defines the metric: the data the model trains on, the sequence length, the time budget and the
exported model's shape. It depends on torch, numpy, pyyaml and the standard library only (the trial image carries
nothing else) and never imports trainer.prepare.

    from trainer import harness
    run = harness.setup()                    # reads the environment; seeds random/numpy/torch with run.seed
    run.preset, run.seq_len, run.vocab_size, run.bos_id, run.seed, run.device, run.budget_seconds, run.out_dir
    loader = run.train_loader(batch_size)    # infinite (x, y) int64 (batch_size, seq_len) on run.device
    run.progress(step) -> float in [0, 1]    # stop when it reaches 1
    run.log_step(step, loss, **extra)        # "step=12 loss=3.2101 progress=0.123 remaining_s=201.2 ..."
    run.save_model(model)                    # OUT/model.pt2, or OUT/export_error.txt and exit 86
    run.report(**summary)                    # "---" then "key: value" lines (never the score)

Environment: AUTORESEARCH_DATA (required), AUTORESEARCH_OUT (required), AUTORESEARCH_PRESET (tiny|cpu|h100;
default h100 with CUDA, else cpu), AUTORESEARCH_BUDGET_S, AUTORESEARCH_SEED (default 1337),
AUTORESEARCH_MAX_STEPS, AUTORESEARCH_DEVICE (cpu|cuda).

The harness runs in the same process as the agent's code, so it cannot defend itself against that code; its job
is to make the honest path the easy one. Nothing here is trusted for the score: the evaluator recomputes it in a
separate container from the exported program alone.
"""
from __future__ import annotations

import math
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from trainer.shards import DataError, load_tokenizer_meta

from .budget import Budget
from .export import EXPORT_FAILED, save_or_exit
from .loader import DocumentIndex, PackedRows, TrainLoader

__all__ = ["setup", "Run", "HarnessError", "DataError", "EXPORT_FAILED", "PRESETS_FILE", "load_presets"]

PRESETS_FILE = Path(__file__).resolve().parent.parent / "presets.yaml"
HARNESS_KEYS = ("seq_len", "eval_batch_size", "budget_seconds")
DEFAULT_SEED = 1337
_SCORE_KEY = re.compile(r"bpb|val_loss|score", re.IGNORECASE)


class HarnessError(Exception):
    """The environment the harness was started in is wrong. The message is one line: what, found, and the fix."""


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, dict]:
    with open(path) as f:
        presets = yaml.safe_load(f)
    for name, p in presets.items():
        missing = [k for k in HARNESS_KEYS if k not in p]
        if missing:
            raise HarnessError(f"preset {name!r} in {path} lacks {missing}; every preset needs {list(HARNESS_KEYS)}")
    return presets


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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc's mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 2**31 - 1                         # mallopt takes an int: keep up to 2 GiB of freed heap
MMAP_ABOVE_BYTES = 2**30                             # only blocks of 1 GiB and more get their own mapping


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory instead of handing it back to the kernel; True if it took effect.

    On the CPU every tensor is a malloc block. By default glibc maps each large block afresh or trims the heap
    once it is freed (its threshold moves with the allocation history), so a step or forward pass of the same
    shapes may fault its pages in again every time, and the kernel zeroes each page. With this, the next pass
    reuses the same pages (docs/benchmarks.md: 0.45 s less kernel time per evaluation of the cpu preset, 5%
    more training steps in the trial image). Freed memory is kept until the process ends; blocks that do not
    fit the holes left by freed ones still grow the heap. A no-op (False) where the C library has no mallopt
    (musl, macOS). Call it before the big allocations.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


# torch's CPU kernels that call MKL's vector math library (aten/src/ATen/cpu/vml.h), plus a few that did in other
# torch versions; every one takes an argument in (0, 1)
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10", "log1p",
                 "log2", "sin", "sqrt", "tan", "tanh", "trunc", "abs")


def first_math_calls() -> list[str]:
    """Make the process's first call of each of torch's MKL vector-math functions here, serially, on a tiny tensor.

    Seen with torch 2.13 on a 2-core AVX-512 machine: a fresh process's first parallel call of torch.tanh
    sometimes gave a different result on the part one of its two threads computed (up to 9e-5 on half the
    elements of a (16, 256, 1625) tensor), and every later call agreed with the others; torch.log did the same.
    In the evaluator, the exported model's first forward pass then differed from every later one at the positions
    of one thread's half of the batch (first at the softcap's tanh: up to 5e-5, and up to 1e-3 nats in the
    log-probs). The determinism probe compares exactly that pass with a second one, so honest models failed it:
    4 of 10 candidates in one run of the loop, 1 of 3 baseline runs in another. Our reading is that MKL sets a
    function up on its first call and two threads making that call at once can race; a first call made by one
    thread alone, as here (a tiny tensor is below torch's parallel grain size), leaves nothing to race. Float32
    and float64 (MKL has a routine for each). Returns the names called. Takes milliseconds; call it before the
    first parallel op.
    """
    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(0.25, 0.75, 64, dtype=dtype)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
    return list(VML_FUNCTIONS)


def _env_number(env, name: str, kind, minimum):
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value >= minimum or (kind is float and not math.isfinite(value)):
        raise HarnessError(f"{name}={raw!r} is not a valid {kind.__name__} >= {minimum}; fix or unset it")
    return value


@dataclass
class Run:
    """One training run's fixed facts and the harness services. Made by setup(); read-only by convention."""

    preset_name: str
    preset: dict
    seq_len: int
    eval_batch_size: int
    vocab_size: int
    bos_id: int
    seed: int
    device: str
    budget_seconds: float
    max_steps: int | None
    data_dir: Path
    out_dir: Path
    budget: Budget = field(repr=False)

    def train_loader(self, batch_size: int) -> TrainLoader:
        """Infinite iterator of (x, y) int64 (batch_size, seq_len) on run.device; the clock starts at its first batch."""
        rows = PackedRows(DocumentIndex(self.data_dir, self.bos_id), self.seq_len, self.seed)
        return TrainLoader(rows, int(batch_size), self.device, on_first_batch=self.budget.start)

    def progress(self, step: int) -> float:
        return self.budget.progress(step)

    def log_step(self, step: int, loss: float, **extra) -> None:
        parts = [f"step={int(step)}", f"loss={float(loss):.4f}", f"progress={self.progress(step):.3f}",
                 f"remaining_s={self.budget.remaining():.1f}"]
        parts += [f"{k}={_fmt(v)}" for k, v in extra.items()]
        print(" ".join(parts), flush=True)

    def save_model(self, model: torch.nn.Module) -> Path:
        return save_or_exit(model, batch_size=self.eval_batch_size, seq_len=self.seq_len,
                            vocab_size=self.vocab_size, device=self.device, out_dir=self.out_dir)

    def report(self, **summary) -> None:
        lines = ["---"]
        for key, value in summary.items():
            if _SCORE_KEY.search(key):
                print(f"harness: report() dropped {key!r}: the score comes from the evaluator, not train.py",
                      file=sys.stderr)
                continue
            lines.append(f"{key}: {_fmt(value)}")
        print("\n".join(lines), flush=True)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _fmt(value.item())
    return " ".join(str(value).split())        # one line, whatever it is


def setup(env: dict | None = None) -> Run:
    """Read the environment, seed every RNG, fix the CPU thread count; return the Run."""
    env = os.environ if env is None else env
    data = env.get("AUTORESEARCH_DATA")
    if not data:
        raise HarnessError("AUTORESEARCH_DATA is not set; run through `python -m trainer.direct` or set it to a "
                           "prepared data directory (with train/ and tokenizer/)")
    out = env.get("AUTORESEARCH_OUT")
    if not out:
        raise HarnessError("AUTORESEARCH_OUT is not set; set it to a writable directory for model.pt2")
    data_dir, out_dir = Path(data), Path(out)
    if not data_dir.is_dir():
        raise HarnessError(f"AUTORESEARCH_DATA={data} is not a directory; run `autoresearch prepare` first")

    device = env.get("AUTORESEARCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise HarnessError(f"AUTORESEARCH_DEVICE={device!r} is not one of cpu, cuda; fix or unset it")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("AUTORESEARCH_DEVICE=cuda but torch sees no CUDA device; unset it to train on the CPU")

    presets = load_presets()
    preset_name = env.get("AUTORESEARCH_PRESET") or ("h100" if device == "cuda" else "cpu")
    if preset_name not in presets:
        raise HarnessError(f"AUTORESEARCH_PRESET={preset_name!r} is not one of {sorted(presets)}; fix or unset it")
    preset = dict(presets[preset_name])

    budget_s = _env_number(env, "AUTORESEARCH_BUDGET_S", float, 1e-3) or float(preset["budget_seconds"])
    seed = _env_number(env, "AUTORESEARCH_SEED", int, 0)
    seed = DEFAULT_SEED if seed is None else seed
    max_steps = _env_number(env, "AUTORESEARCH_MAX_STEPS", int, 1)

    meta = load_tokenizer_meta(data_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"AUTORESEARCH_OUT={out} cannot be created ({e.strerror}); point it at a writable "
                           "directory") from None

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device == "cpu":
        torch.set_num_threads(cpu_threads())
        keep_freed_memory()
        first_math_calls()

    return Run(preset_name=preset_name, preset=preset, seq_len=int(preset["seq_len"]),
               eval_batch_size=int(preset["eval_batch_size"]), vocab_size=int(meta["vocab_size"]),
               bos_id=int(meta["bos_id"]), seed=seed, device=device, budget_seconds=budget_s,
               max_steps=max_steps, data_dir=data_dir, out_dir=out_dir,
               budget=Budget(budget_s, max_steps))
