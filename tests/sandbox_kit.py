"""Helpers for the sandbox, image and trial tests: policies, stand-in candidates, a small prepared data dir.

Stand-in candidates are small train.py files written into tmp dirs: the attacks the sandbox must stop (sleep past
the timeout, allocate, fork, connect, forge a score) and the export paths the classifier must tell apart. Most
import nothing heavy, so a trial of one costs about a second of container start-up.
"""
from __future__ import annotations

import os
import stat
import textwrap
import uuid
from pathlib import Path

from runner.policy import load_policy
from runner.executor import TrialSpec
from runner.sandbox.trial import run_trial

REPO = Path(__file__).resolve().parent.parent
REAL_TRAIN_PY = REPO / "trainer" / "train.py"
TEST_RUN_PREFIX = "pytest-sandbox"


def policy(**sections):
    """The `tiny` policy with overrides per section: policy(train={"allowance_seconds": 5}, limits={"pids": 32})."""
    base = load_policy("tiny")
    update = {}
    for key, value in sections.items():
        if isinstance(value, dict):
            update[key] = getattr(base, key).model_copy(update=value)
        else:
            update[key] = value
    return base.model_validate({**base.model_dump(), **{k: (v.model_dump() if hasattr(v, "model_dump") else v)
                                                        for k, v in update.items()}})


def candidate(root: Path, source: str) -> Path:
    """A candidate dir holding one train.py with the given source (dedented)."""
    d = Path(root) / f"candidate-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    (d / "train.py").write_text(textwrap.dedent(source))
    return d


def real_candidate(root: Path, prefix: str = "", suffix: str = "") -> Path:
    """The real trainer/train.py, optionally with code before and after it."""
    return candidate(root, textwrap.dedent(prefix) + REAL_TRAIN_PY.read_text() + textwrap.dedent(suffix))


def open_up(path: Path) -> Path:
    """Make a test data dir readable by the trials' non-root uid (pytest's tmp dirs are 0700)."""
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IROTH | stat.S_IRGRP | (stat.S_IXOTH | stat.S_IXGRP if p.is_dir() else 0))
    return path


def trial(tmp_path: Path, image: str, cand: Path, data: Path, pol=None, seed: int = 1337, on_line=None,
          keep_model: bool = False, trial_id: str | None = None, on_phase=None, every_batch_below=None):
    """Run one real trial; returns (outcome, spec)."""
    spec = TrialSpec(run_tag=f"{TEST_RUN_PREFIX}-{os.getpid()}", trial_id=trial_id or uuid.uuid4().hex[:8],
                     candidate_dir=cand, data_dir=data, policy=pol or policy(), image=image, seed=seed,
                     work_dir=Path(tmp_path) / f"work-{uuid.uuid4().hex[:6]}", keep_model=keep_model,
                     every_batch_below=every_batch_below)
    return run_trial(spec, on_line=on_line, on_phase=on_phase), spec
