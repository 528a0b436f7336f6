"""The training harness: everything train.py gets from outside, in one object returned by setup().

TRUSTED CODE, baked into the trial image; NOT the agent's to edit (the agent edits only trainer/train.py).
It applies what defines the metric: the data the model trains on, the sequence length and the exported model's
shape (the preset's), and the clock of the time budget it is given (the policy's). It depends on torch, numpy,
pyyaml and the standard library only (the trial image carries nothing else) and never imports trainer.prepare.

    from trainer import harness
    run = harness.setup()                    # reads the environment; seeds random/numpy/torch with run.seed
    run.preset, run.seq_len, run.vocab_size, run.bos_id, run.seed, run.device, run.budget_seconds, run.out_dir
    loader = run.train_loader(batch_size)    # infinite (x, y) int64 (batch_size, seq_len) on run.device
    run.progress(step) -> float in [0, 1]    # stop when it reaches 1
    run.log_step(step, loss, **extra)        # "step=12 loss=3.2101 progress=0.123 remaining_s=201.2 ..."
    run.save_model(model)                    # OUT/model.pt2, or OUT/export_error.txt and exit 86
    run.report(**summary)                    # "---" then "key: value" lines (never the score)

Environment (names in trainer.contract): AUTORESEARCH_DATA (required), AUTORESEARCH_OUT (required),
AUTORESEARCH_BUDGET_S (required: the policy's train.budget_seconds, which the runner and trainer.direct pass),
AUTORESEARCH_PRESET (tiny|cpu|h100; default h100 with CUDA, else cpu), AUTORESEARCH_SEED (default 1337),
AUTORESEARCH_MAX_STEPS, AUTORESEARCH_DEVICE (cpu|cuda). The preset gives shapes only (trainer/presets.yaml).

The harness runs in the same process as the agent's code, so it cannot defend itself against that code; its job
is to make the honest path the easy one. Nothing here is trusted for the score: the evaluator recomputes it in a
separate container from the exported program alone.
"""
from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from trainer.contract import (ENV_BUDGET_S, ENV_DATA, ENV_DEVICE, ENV_MAX_STEPS, ENV_OUT, ENV_PRESET, ENV_SEED,
                               SCORE_KEY, step_line)
from trainer.process import cpu_threads, first_math_calls, keep_freed_memory
from trainer.shards import DataError, load_tokenizer_meta

from .budget import Budget
from .export import EXPORT_FAILED, save_or_exit
from .loader import DocumentIndex, PackedRows, TrainLoader

__all__ = ["setup", "Run", "HarnessError", "DataError", "EXPORT_FAILED", "PRESETS_FILE", "load_presets"]

PRESETS_FILE = Path(__file__).resolve().parent.parent / "presets.yaml"
HARNESS_KEYS = ("seq_len", "eval_batch_size")     # what every preset must give (they define the metric)
DEFAULT_SEED = 1337


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
        print(step_line(step, loss, self.progress(step), self.budget.remaining(),
                        {k: _fmt(v) for k, v in extra.items()}), flush=True)

    def save_model(self, model: torch.nn.Module) -> Path:
        return save_or_exit(model, batch_size=self.eval_batch_size, seq_len=self.seq_len,
                            vocab_size=self.vocab_size, device=self.device, out_dir=self.out_dir)

    def report(self, **summary) -> None:
        lines = ["---"]
        for key, value in summary.items():
            if SCORE_KEY.search(key):
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
    """Read the environment, seed every RNG, tune the CPU process (trainer.process); return the Run."""
    env = os.environ if env is None else env
    data = env.get(ENV_DATA)
    if not data:
        raise HarnessError("AUTORESEARCH_DATA is not set; run through `python -m trainer.direct` or set it to a "
                           "prepared data directory (with train/ and tokenizer/)")
    out = env.get(ENV_OUT)
    if not out:
        raise HarnessError("AUTORESEARCH_OUT is not set; set it to a writable directory for model.pt2")
    data_dir, out_dir = Path(data), Path(out)
    if not data_dir.is_dir():
        raise HarnessError(f"AUTORESEARCH_DATA={data} is not a directory; run `autoresearch prepare` first")

    device = env.get(ENV_DEVICE) or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise HarnessError(f"AUTORESEARCH_DEVICE={device!r} is not one of cpu, cuda; fix or unset it")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("AUTORESEARCH_DEVICE=cuda but torch sees no CUDA device; unset it to train on the CPU")

    presets = load_presets()
    preset_name = env.get(ENV_PRESET) or ("h100" if device == "cuda" else "cpu")
    if preset_name not in presets:
        raise HarnessError(f"AUTORESEARCH_PRESET={preset_name!r} is not one of {sorted(presets)}; fix or unset it")
    preset = dict(presets[preset_name])

    budget_s = _env_number(env, ENV_BUDGET_S, float, 1e-3)
    if budget_s is None:
        raise HarnessError(f"{ENV_BUDGET_S} is not set; the runner passes the policy's train.budget_seconds: run "
                           "through the runner or `python -m trainer.direct --budget S`, or set it to the seconds "
                           "to train")
    seed = _env_number(env, ENV_SEED, int, 0)
    seed = DEFAULT_SEED if seed is None else seed
    max_steps = _env_number(env, ENV_MAX_STEPS, int, 1)

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
