"""trainer/train.py run as the runner runs it: a subprocess with the harness environment, the tiny preset."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness_fixtures import VOCAB, make_data
from trainer import harness

TRAIN_PY = Path(__file__).resolve().parent.parent / "trainer" / "train.py"
SUMMARY_KEYS = ["training_seconds", "num_steps", "num_params_M", "peak_memory_mb", "tokens_per_second",
                "mfu_percent", "depth"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"), n_docs=600, seed=2)


def train(script: Path, data: Path, out: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, AUTORESEARCH_DATA=str(data), AUTORESEARCH_OUT=str(out), AUTORESEARCH_PRESET="tiny")
    full.update({f"AUTORESEARCH_{k.upper()}": str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, str(script)], env=full, capture_output=True, text=True, timeout=timeout)


def summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert "---" in lines, f"no summary block in:\n{stdout[-2000:]}"
    block = lines[len(lines) - lines[::-1].index("---"):]
    return dict(line.split(": ", 1) for line in block)


def logged_losses(stdout: str) -> list[float]:
    return [float(m) for m in re.findall(r"^step=\d+ loss=([\d.]+) ", stdout, re.M)]


def test_train_py_runs_end_to_end_on_the_tiny_preset_and_reports_no_score(data, tmp_path):
    proc = train(TRAIN_PY, data, tmp_path / "out", max_steps=60, budget_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(proc.stdout)
    assert list(s) == SUMMARY_KEYS
    assert not re.search(r"bpb|val_loss|score", proc.stdout, re.I), "train.py must not report the score"
    assert int(s["num_steps"]) == 60 and float(s["tokens_per_second"]) > 0
    assert s["depth"] == str(harness.load_presets()["tiny"]["depth"]) and s["mfu_percent"] == "n/a"
    losses = logged_losses(proc.stdout)
    assert losses[-1] < 0.6 * losses[0], f"training should learn the progressions: {losses}"
    preset = harness.load_presets()["tiny"]
    program = torch.export.load(tmp_path / "out" / "model.pt2")
    idx = torch.randint(0, VOCAB, (preset["eval_batch_size"], preset["seq_len"]))
    logits = program.module()(idx)
    assert logits.shape == (preset["eval_batch_size"], preset["seq_len"], VOCAB) and logits.dtype == torch.float32


def test_the_budget_stops_training(data, tmp_path):
    t0 = time.monotonic()
    proc = train(TRAIN_PY, data, tmp_path / "out", budget_s=1.5)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    seconds = float(summary(proc.stdout)["training_seconds"])
    assert 1.4 <= seconds < 1.5 + 3, "it trains until the budget is spent, then stops (within a step or two)"
    assert wall < 60


def test_max_steps_makes_two_cpu_runs_bit_identical(data, tmp_path):
    runs = [train(TRAIN_PY, data, tmp_path / f"out{i}", max_steps=12, budget_s=300, seed=11) for i in range(2)]
    other = train(TRAIN_PY, data, tmp_path / "out_other_seed", max_steps=12, budget_s=300, seed=12)
    for proc in (*runs, other):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert summary(proc.stdout)["num_steps"] == "12"
    states = [torch.export.load(tmp_path / d / "model.pt2").state_dict
              for d in ("out0", "out1", "out_other_seed")]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "same seed, same steps: same weights"
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0]), "another seed must differ"
    assert logged_losses(runs[0].stdout) == logged_losses(runs[1].stdout)


def test_a_nan_loss_fails_fast_with_a_clear_message(data, tmp_path):
    source = TRAIN_PY.read_text()
    broken, n = re.subn(r"^EMBEDDING_LR = .*$", 'EMBEDDING_LR = float("nan")  # an edit gone wrong', source,
                        flags=re.M)
    assert n == 1
    script = tmp_path / "train.py"
    script.write_text(broken)
    t0 = time.monotonic()
    proc = train(script, data, tmp_path / "out", budget_s=60)
    assert proc.returncode not in (0, 86)
    assert time.monotonic() - t0 < 30, "divergence must stop the run, not wait out the budget"
    assert re.search(r"training diverged at step \d+: loss=nan", proc.stderr), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, "the failure is one line, no traceback"
    assert not (tmp_path / "out" / "model.pt2").exists()


def test_train_py_constants_are_mutable_one_line_literals_with_comments():
    lines = TRAIN_PY.read_text().splitlines()
    assert len(lines) <= 650
    assert '"""' in lines[0] and "ONE FILE THE AGENT EDITS" in lines[0]
    constants = [ln for ln in lines if re.match(r"^[A-Z][A-Z0-9_]* = ", ln)]
    numeric = [ln for ln in constants if re.match(r"^[A-Z][A-Z0-9_]* = -?[\d.]+(e-?\d+)?  # \S", ln)]
    assert len(numeric) >= 20, "the offline mutator perturbs `NAME = <number>  # comment` lines"
    for ln in constants:
        if ln.startswith(("PRESET = ", "POLAR_EXPRESS = ")):
            continue
        assert "  # " in ln, f"every hyperparameter needs an inline comment: {ln}"
